"""Emotion-circuits toolkit, laid out as the pipeline (see the README's layout section).

``models`` -> ``text`` -> ``activations`` -> ``geometry`` / ``interventions`` (with ``stats``) ->
``phases`` (one module per notebook) -> ``pipeline`` (``make reproduce``) and ``report``.
Importing ``lib`` changes nothing in the environment; ``lib.settings`` holds the process-wide policy.
"""
