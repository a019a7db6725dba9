"""The reproduce pipeline: params, the phase runner, provenance, result folders, optional tracking.

Command line: ``python -m lib.pipeline --run default``.
"""
