"""Per-head activation strength before and after fine-tuning (phase 06): R_h = E[||y_h||], y_h = z_h W_O^h.

- ``compute``: pure functions (each head's W_O block, y_h, ||y_h|| through the head's Gram matrix);
- ``extractor``: ``ActivationExtractor``, one pre-hook per layer on a Hugging Face model, per-sample arrays;
- ``results``: ``HeadStats``, ``HeadStrengthResults`` and their files (JSON + safetensors), ``load_results``;
- ``comparator``: ``ActivationComparator`` (differences, ratios, log-ratios, ranks; heatmaps; JSON);
- ``heatmaps``: the comparison figures (PNG with matplotlib, self-contained HTML with plotly);
- ``inputs``: texts from a JSON list or JSONL file, seeded subsampling, batches;
- ``cli``: ``python -m lib.head_strength --pre_tuned_model A --fine_tuned_model B --data_path F ...``.
"""
from lib.head_strength.comparator import ActivationComparator
from lib.head_strength.extractor import ActivationExtractor
from lib.head_strength.inputs import TextBatches, load_texts
from lib.head_strength.results import HeadStats, HeadStrengthResults, load_results

__all__ = ["ActivationExtractor", "ActivationComparator", "HeadStats", "HeadStrengthResults", "load_results",
           "load_texts", "TextBatches"]
