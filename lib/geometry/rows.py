"""Labelled activation rows: the finite rows of ``x`` with their emotions, and one class's rows.

Inputs are activations ``x`` [n_rows, d] (any real array; read as float64) and ``labels``: a DataFrame
with an ``emotion`` column, or a sequence of emotion names [n_rows]. Rows holding any NaN (the span
reduction of a row without a span) are dropped; ``Rows.dropped`` counts them per class, and an error for
a class with too few rows says how many were dropped.

>>> r = drop_missing(np.array([[1., 2.], [np.nan, 0.]]), ["anger", "neutral"])
>>> r.x.shape, r.index.tolist(), r.dropped
((1, 2), [0], {'neutral': 1})
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

__all__ = ["Rows", "drop_missing", "class_counts", "class_rows"]


class Rows(NamedTuple):
    """Finite rows of ``x`` with their labels: x [m, d], emotion [m], index [m] into the input, dropped {class: n}."""
    x: np.ndarray
    emotion: np.ndarray
    index: np.ndarray
    dropped: dict


def drop_missing(x, labels) -> Rows:
    """Rows of ``x`` [n, d] with no NaN, their emotion labels and indices, and the count dropped per class.

    >>> drop_missing(np.zeros((2, 3)), ["anger", "neutral"]).emotion.tolist()
    ['anger', 'neutral']
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"x must be 2-D [n_rows, d]; got shape {a.shape}")
    if isinstance(labels, pd.DataFrame):
        if "emotion" not in labels.columns:
            raise ValueError(f"labels DataFrame has no 'emotion' column; columns: {list(labels.columns)}")
        labels = labels["emotion"]
    em = np.asarray(labels).astype(str)
    if em.ndim != 1 or len(em) != len(a):
        raise ValueError(f"labels give {em.shape} emotions but x has {len(a)} rows (shape {a.shape})")
    ok = np.isfinite(a).all(axis=1)
    return Rows(a[ok], em[ok], np.flatnonzero(ok), class_counts(em[~ok]))


def class_counts(em: np.ndarray) -> dict:
    """{class: number of entries} of an array of labels, classes sorted.

    >>> class_counts(np.array(["b", "a", "b"]))
    {'a': 1, 'b': 2}
    """
    return {str(c): int(n) for c, n in zip(*np.unique(em, return_counts=True))}


def class_rows(rows: Rows, cls: str, context: str, min_rows: int = 2) -> np.ndarray:
    """The rows [m, d] of class ``cls``; an error starting with ``context`` if there are fewer than ``min_rows``.

    >>> class_rows(drop_missing(np.eye(3), ["anger", "anger", "neutral"]), "anger", "demo").shape
    (2, 3)
    """
    xs = rows.x[rows.emotion == cls]
    if len(xs) < min_rows:
        raise ValueError(f"{context}: emotion {cls!r} has {len(xs)} rows with finite activations "
                         f"({rows.dropped.get(cls, 0)} dropped as NaN); need at least {min_rows}. "
                         f"Finite rows per emotion: {class_counts(rows.emotion)}")
    return xs
