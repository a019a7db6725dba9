"""Interventions on attention heads, by topic:

- ``heads``: head sets (``"L:H,L:H"``) and TransformerLens hooks on ``attn.hook_z``;
- ``head_outputs``: the one pre-hook that reads or edits z on a Hugging Face model;
- ``readout``: what is measured (probe probability, continuation log-probability);
- ``sweep``: exact single-head sweeps, fast and naive;
- ``scores``: screening scores and attribution patching;
- ``effects``: head-set metrics, random control sets, ranking;
- ``generation``: seeded generation with head sets intervened on.
"""
