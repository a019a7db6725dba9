"""Interventions on attention heads, by topic:

- ``heads``: head sets (``"L:H,L:H"``) and TransformerLens hooks on ``attn.hook_z``;
- ``head_outputs``: the one pre-hook that reads or edits z on a Hugging Face model;
- ``prompts``: paired prompts of one token length, split into selection and evaluation halves;
- ``readout``: what is measured (probe log-odds and probability, continuation log-probability);
- ``sweep``: exact single-head sweeps and head sets, fast and naive; position-matched reference means;
- ``scores``: screening scores (through Gemma 3's post-attention norm) and attribution patching;
- ``effects``: head-set metrics (naive reference), random control sets, ranking, a chosen set vs random sets;
- ``generation``: seeded generation with head sets intervened on.
"""
