"""The reference a fine-tune is compared with: a linear probe on the base model's residual stream.

The features of a row are ``blocks.{layer}.hook_resid_post`` at the prompt's last position (the ":" of
"Emotion:", where the fine-tuned model reads the answer), taken from the Hugging Face blocks' outputs
by forward hooks in one forward per batch. The layer is chosen by grouped, stratified cross-validation
on the train rows only (``lib.stats.splits.grouped_folds``; rows whose texts are near-identical form one
group, ``lib.geometry.folds.text_groups``), the probe (``lib.geometry.probes``: standardise, multinomial
logistic regression) is refitted on all train rows at that layer and scored once on the dev rows. Dev
accuracy per row comes back, so its interval is the same ``mean_ci`` as the fine-tune's.

Cost: one forward (no backward) per ``batch_size`` rows of train and dev; ``len(layers) * n_splits``
cross-validation fits and one refit.

>>> from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
>>> from lib.finetune.objective import encode_examples
>>> tok = build_tiny_tokenizer(); ex = encode_examples(tok, ["Thanks!", "Sorry.", "Why?"], ["gratitude"] * 3)
>>> last_prompt_states(build_tiny_model("tiny-llama"), ex, [0, 1]).shape
(2, 3, 64)
"""
from __future__ import annotations

import numpy as np
import torch

from lib.finetune.objective import Examples, ObjectiveError, logits_at, prompt_tensors
from lib.geometry.folds import text_groups
from lib.geometry.probes import fit_probe, probe_cv
from lib.models.archs import block_output, blocks_of
from lib.stats.bootstrap import mean_ci
from lib.stats.splits import grouped_folds

__all__ = ["last_prompt_states", "probe_reference"]


@torch.no_grad()
def last_prompt_states(hf, examples: Examples, layers, *, batch_size: int = 32, progress=None) -> np.ndarray:
    """Residual stream after each of ``layers`` at every prompt's last position: float32 [layers, n, d_model].

    One forward per batch (prompts only, right-padded; the unembedding runs at one position);
    ``progress(k)`` after each batch of k rows."""
    blocks = blocks_of(hf)
    layers = [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < len(blocks)]
    if bad or not layers:
        raise ObjectiveError(f"layers {bad or layers} out of range for a model with {len(blocks)} layers "
                             f"(0..{len(blocks) - 1})")
    hf.eval()
    n = len(examples)
    d = hf.get_input_embeddings().weight.shape[1]
    out = np.empty((len(layers), n, d), dtype=np.float32)
    order = np.argsort(examples.prompt_lens, kind="stable")
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        ids, mask, last = prompt_tensors(examples, idx, 0)
        got: dict[int, torch.Tensor] = {}

        def hook(_module, _args, output, *, layer):
            h = block_output(output)  # [batch, pos, d_model]
            got[layer] = h[torch.arange(h.shape[0]), last.to(h.device)].float().cpu()

        handles = [blocks[l].register_forward_hook(lambda m, a, o, l=l: hook(m, a, o, layer=l)) for l in layers]
        try:
            logits_at(hf, ids, mask, last[:, None])
        finally:
            for h in handles:
                h.remove()
        for j, l in enumerate(layers):
            out[j, idx] = got[l].numpy()
        if progress is not None:
            progress(len(idx))
    return out


def probe_reference(hf, train_examples: Examples, dev_examples: Examples, *, layers=None, seed: int = 0,
                    batch_size: int = 32, n_splits: int = 5, train_groups=None, dev_groups=None,
                    n_boot: int = 2000, progress=None) -> dict:
    """Probe on the base model: layer chosen by grouped CV on train rows, refitted on train, scored on dev.

    Returns ``layer`` (chosen), ``hook_name``, ``cv_accuracy`` {layer: pooled out-of-fold accuracy},
    ``dev_correct`` [n_dev] bool, ``dev_pred`` [n_dev], ``dev_accuracy`` (``mean_ci``: mean, ci_low,
    ci_high, n, level), ``n_train``, ``n_dev``, ``n_fits``. Ties between layers go to the earlier one.
    ``train_groups`` (default: ``text_groups`` of the train texts) keeps near-duplicates in one fold;
    ``dev_groups`` (default: one per row) are resampled whole by the dev interval's bootstrap.
    """
    n_layers = len(blocks_of(hf))
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    y_train = np.asarray(train_examples.labels)
    y_dev = np.asarray(dev_examples.labels)
    if train_groups is None:
        train_groups = text_groups(train_examples.texts) if train_examples.texts else None
    folds = grouped_folds(y_train, train_groups, n_splits, seed)
    x_train = last_prompt_states(hf, train_examples, layers, batch_size=batch_size, progress=progress)
    x_dev = last_prompt_states(hf, dev_examples, layers, batch_size=batch_size, progress=progress)
    cv = {l: probe_cv(x_train[j], y_train, train_groups, n_splits=n_splits, seed=seed, n_boot=0,
                      folds=folds).accuracy for j, l in enumerate(layers)}
    best = max(layers, key=lambda l: (cv[l], -layers.index(l)))
    probe = fit_probe(x_train[layers.index(best)], y_train, seed=seed)
    pred = probe.predict(x_dev[layers.index(best)])
    correct = pred == y_dev
    return {"layer": best, "hook_name": f"blocks.{best}.hook_resid_post", "cv_accuracy": cv,
            "dev_correct": correct, "dev_pred": pred,
            "dev_accuracy": mean_ci(correct.astype(np.float64), n_boot=n_boot, seed=seed, groups=dev_groups),
            "n_train": len(y_train), "n_dev": len(y_dev), "n_fits": len(layers) * n_splits + 1,
            "n_splits": n_splits, "layers": layers}
