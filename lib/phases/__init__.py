"""The glue each phase notebook calls, one module per notebook, named by its stem
(``notebooks/03_emotion_vectors.py`` -> ``lib.phases.emotion_vectors``).
"""
