"""Text: the authored and GoEmotions datasets, near-duplicate leakage checks, descriptive text statistics,
and metrics of generated text (sentiment, emotion keywords).
"""
