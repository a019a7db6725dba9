"""Permutation p-values from a null distribution drawn elsewhere (label shuffles, random head sets).

>>> permutation_p(2.0, [0.0, 1.0, 2.0, 3.0])
0.6
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lib.stats.bootstrap import finite_1d

__all__ = ["ALTERNATIVES", "permutation_p", "exact_two_sample_p", "sign_flip_p", "group_permutation", "group_permuter", "group_majority"]

ALTERNATIVES = ("greater", "less", "two-sided")


def permutation_p(observed: float, null, *, alternative: str = "greater") -> float:
    """Permutation p-value with the +1 correction: (1 + #{null as extreme as observed}) / (1 + len(null)).

    ``greater``: null >= observed; ``less``: null <= observed; ``two-sided``: |null| >= |observed|.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}; valid alternatives: {list(ALTERNATIVES)}")
    z = finite_1d(null, "null")
    if not np.isfinite(observed):
        raise ValueError(f"observed={observed!r}; it must be a finite number")
    if alternative == "greater":
        hits = np.sum(z >= observed)
    elif alternative == "less":
        hits = np.sum(z <= observed)
    else:
        hits = np.sum(np.abs(z) >= abs(observed))
    return float((1 + hits) / (1 + z.size))


def exact_two_sample_p(a, b, *, alternative: str = "greater", max_splits: int = 200_000) -> float:
    """Exact permutation p of ``mean(b) - mean(a)`` over every way of splitting the pooled values into groups of
    the two sizes (the observed split included): ``greater`` counts splits with a difference >= the observed,
    ``less`` <=, ``two-sided`` |.| >=. For a few seeds per condition (5 + 5: 252 splits, smallest one-sided p
    1/252).

    >>> exact_two_sample_p([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])  # the observed split is the most extreme of 20
    0.05
    """
    from itertools import combinations
    from math import comb

    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}; valid alternatives: {list(ALTERNATIVES)}")
    xa, xb = finite_1d(a, "a"), finite_1d(b, "b")
    if xa.size < 1 or xb.size < 1:
        raise ValueError("both groups need at least one value")
    n = xa.size + xb.size
    if comb(n, xb.size) > max_splits:
        raise ValueError(f"{comb(n, xb.size)} splits of {xa.size} + {xb.size} values exceed max_splits={max_splits}; "
                         f"use a sampled permutation test (permutation_p)")
    pooled, total = np.concatenate([xa, xb]), float(np.concatenate([xa, xb]).sum())
    diffs = []
    for idx in combinations(range(n), xb.size):
        sb = float(pooled[list(idx)].sum())
        diffs.append(sb / xb.size - (total - sb) / xa.size)
    return _exact_p(np.asarray(diffs), float(xb.mean() - xa.mean()), alternative)


def _exact_p(null: np.ndarray, observed: float, alternative: str) -> float:
    """The share of an enumerated null (the observed arrangement among it) as extreme as ``observed``, with a
    relative tolerance of 1e-12 so that arrangements equal to it up to rounding count."""
    tol = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        hits = np.sum(null >= observed - tol)
    elif alternative == "less":
        hits = np.sum(null <= observed + tol)
    else:
        hits = np.sum(np.abs(null) >= abs(observed) - tol)
    return float(hits / null.size)


def group_majority(labels, groups) -> tuple[np.ndarray, np.ndarray]:
    """(majority label per group [g], in the order of the sorted group ids; each row's group code [n]). Ties
    go to the label whose first row comes first in the group.

    >>> group_majority(["b", "a", "a", "b", "c"], [7, 7, 7, 3, 3])
    (array(['b', 'a'], dtype='<U1'), array([1, 1, 1, 0, 0]))
    """
    y = np.asarray(labels)
    g = np.asarray(groups)
    if g.shape != y.shape or y.ndim != 1:
        raise ValueError(f"labels and groups must be 1-D of equal length; got shapes {y.shape} and {g.shape}")
    codes = np.unique(g, return_inverse=True)[1].ravel()
    values, cls = np.unique(y, return_inverse=True)
    n_g, n_c = int(codes.max()) + 1 if len(codes) else 0, len(values)
    counts = np.zeros((n_g, n_c), dtype=np.int64)
    np.add.at(counts, (codes, cls), 1)
    first = np.full((n_g, n_c), len(y), dtype=np.int64)
    np.minimum.at(first, (codes, cls), np.arange(len(y)))
    first = np.where(counts == counts.max(axis=1, keepdims=True), first, len(y) + 1)
    return values[first.argmin(axis=1)], codes


def group_permuter(labels, groups) -> Callable[[np.random.Generator], np.ndarray]:
    """A function ``rng -> labels [n]`` shuffled between whole groups (``group_permutation``), with the groups'
    majority labels found once, for repeated permutations; ``groups=None`` permutes rows.

    >>> perm = group_permuter(["a", "b", "b", "a"], None); sorted(perm(np.random.default_rng(0)).tolist())
    ['a', 'a', 'b', 'b']
    """
    if groups is None:
        y = np.asarray(labels)
        return lambda rng: rng.permutation(y)
    majority, codes = group_majority(labels, groups)
    return lambda rng: rng.permutation(majority)[codes]


def group_permutation(labels, groups, rng: np.random.Generator) -> np.ndarray:
    """Labels [n] shuffled between whole groups: each group takes the label of another group (its majority
    label, ties to the first seen), so rows of one group still share a label as near-duplicates do in real
    data. Class counts move by the size differences of the swapped groups. ``groups=None``: row by row.

    >>> y = np.array(["a", "a", "b", "b", "c", "c"]); p = group_permutation(y, [0, 0, 1, 1, 2, 2], np.random.default_rng(0))
    >>> bool((p[0::2] == p[1::2]).all()), sorted(set(p.tolist()))
    (True, ['a', 'b', 'c'])
    """
    return group_permuter(labels, groups)(rng)


def sign_flip_p(differences, *, n_perm: int = 10_000, seed: int = 0, alternative: str = "greater") -> float:
    """Paired sign-flip permutation p of mean(``differences``) [n]: under H0 each d_i is as likely -d_i. Exact
    (all 2^n sign patterns, the observed one included) for n <= 16, else ``n_perm`` seeded random patterns with
    ``permutation_p``'s +1 correction.

    >>> sign_flip_p([1.0, 2.0, 3.0])  # of 8 patterns only the observed one reaches its mean
    0.125
    """
    d = finite_1d(differences, "differences")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}; valid alternatives: {list(ALTERNATIVES)}")
    if d.size == 0:
        raise ValueError("differences is empty; a sign-flip test needs at least one pair")
    observed = float(d.mean())
    if d.size <= 16:
        signs = 1.0 - 2.0 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
        return _exact_p(signs @ d / d.size, observed, alternative)
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(int(n_perm), d.size))
    return permutation_p(observed, signs @ d / d.size, alternative=alternative)
