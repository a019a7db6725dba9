"""The split discipline of every phase: choose on one part of the rows, estimate on another.

Rows come with labels (stratification) and groups (near-identical texts, ``lib.geometry.folds.text_groups``);
a group never spans two parts. Three shapes cover the phases:

- ``grouped_folds``: k stratified folds (cross-validation, cross-fitting);
- ``nested_folds``: for each outer test fold, an inner validation fold and the training rest, so a setting
  (a layer, a reading) is chosen on train + validation and the chosen one scored on the untouched test fold;
- ``group_halves``: a selection half and an estimation half (phase 04's maps and layer choice, phase 05's heads).

``split_record`` describes a split for a manifest: sizes and a digest of each part's indices, so two runs
can tell whether they held out the same rows.

>>> y, g = np.repeat(["a", "b"], 8), np.arange(16) // 2
>>> sel, est = group_halves(y, g, seed=0)
>>> len(sel), len(est), set(g[sel]) & set(g[est])
(8, 8, set())
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["grouped_folds", "NestedFold", "nested_folds", "group_halves", "split_record"]


def grouped_folds(labels, groups, n_splits: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds (shuffled, seeded ``StratifiedGroupKFold``) that keep each group inside one fold:
    [(train indices, test indices)] per fold. ``groups=None`` makes every row its own group.

    >>> folds = grouped_folds(np.repeat(["a", "b"], 10), np.arange(20) // 2, n_splits=2)
    >>> [len(test) for _, test in folds]
    [10, 10]
    """
    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError(f"labels and groups must be 1-D of equal length; got shapes {labels.shape} and {groups.shape}")
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits={n_splits!r}; valid values are integers >= 2")
    counts = pd.DataFrame({"y": labels, "g": groups}).groupby("y")["g"].nunique()
    low = counts[counts < n_splits]
    if len(low):
        raise ValueError(f"class {low.index[0]!r} has {int(low.iloc[0])} distinct text groups, fewer than "
                         f"n_splits={n_splits}; groups per class: {counts.to_dict()}")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(labels)), labels, groups))


class NestedFold(NamedTuple):
    """Indices of one outer fold: ``train`` and ``val`` choose (fit on train, score on val), ``test`` estimates."""
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def nested_folds(labels, groups, n_splits: int = 5, seed: int = 0) -> list[NestedFold]:
    """Outer fold i tests on fold i, validates on fold (i + 1) mod k and trains on the other k - 2 folds.

    Every row is a test row exactly once and a validation row exactly once, so the pooled validation
    predictions give a full by-setting curve (what a setting scores on rows it was not fitted on) and the
    pooled test predictions give the estimate of the setting chosen on that curve's own fold pairs.

    >>> nf = nested_folds(np.repeat(["a", "b"], 12), np.arange(24), n_splits=3)
    >>> [(len(f.train), len(f.val), len(f.test)) for f in nf]
    [(8, 8, 8), (8, 8, 8), (8, 8, 8)]
    """
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 3:
        raise ValueError(f"n_splits={n_splits!r}; nested folds need integers >= 3 (train, validation, test)")
    tests = [test for _, test in grouped_folds(labels, groups, n_splits, seed)]
    out = []
    for i, test in enumerate(tests):
        val = tests[(i + 1) % n_splits]
        train = np.sort(np.concatenate([t for j, t in enumerate(tests) if j not in (i, (i + 1) % n_splits)]))
        out.append(NestedFold(train, val, test))
    return out


def group_halves(labels, groups, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(selection indices, estimation indices): two stratified halves with every group inside one half.

    >>> sel, est = group_halves(np.repeat(["a", "b"], 4), None, seed=1)
    >>> sorted(np.r_[sel, est].tolist()) == list(range(8))
    True
    """
    (sel, est), _ = grouped_folds(labels, groups, 2, seed)
    return np.sort(sel), np.sort(est)


def _digest(idx) -> str:
    a = np.sort(np.asarray(idx, dtype=np.int64))
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


def split_record(name: str, rule: str, seed: int, **parts) -> dict:
    """A manifest entry for a split: its name, the rule in words, the seed, and per part the row count and
    a digest of the sorted indices (``parts``: name -> indices, or a list of index arrays for folds).

    >>> r = split_record("prompts", "halves by text group", 0, select=[0, 2], estimate=[1, 3])
    >>> r["sizes"], len(r["sha256"]["select"])
    ({'select': 2, 'estimate': 2}, 16)
    """
    sizes, digests = {}, {}
    for part, idx in parts.items():
        if isinstance(idx, (list, tuple)) and idx and np.ndim(idx[0]) == 1:
            sizes[part] = [int(len(i)) for i in idx]
            digests[part] = [_digest(i) for i in idx]
        else:
            sizes[part] = int(len(idx))
            digests[part] = _digest(idx)
    return {"name": name, "rule": rule, "seed": int(seed), "sizes": sizes, "sha256": digests}
