"""Activations: hook names and checks, extraction into zarr stores (planning, capture, float16 codec,
writer, command line), reading stores back, and layer-wise views of them.

Command line: ``python -m lib.activations --model NAME --profile PROFILE --out DIR``.
"""
