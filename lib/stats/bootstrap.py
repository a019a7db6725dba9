"""Percentile bootstrap: one resampling engine, and the intervals built on it.

Every bootstrap in the project resamples items with ``numpy.random.default_rng(seed).integers(0, n,
size=(b, n))`` in blocks of ``b`` replicates and takes numpy's linear quantiles of the replicates.

>>> r = mean_ci([1.0, 2.0, 3.0, 4.0])
>>> r["mean"], r["n"], bool(r["ci_low"] <= 2.5 <= r["ci_high"])
(2.5, 4, True)
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["bootstrap", "group_bootstrap", "group_codes", "percentile_interval", "mean_ci", "paired_difference",
           "finite_1d", "check_boot"]


def finite_1d(x, name: str) -> np.ndarray:
    """``x`` as a non-empty finite float64 vector [n], or a ValueError naming ``name``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of numbers, got shape {a.shape}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {a[bad[0]]}; values must be finite ({bad.size} non-finite)")
    return a


def check_boot(n_boot: int, level: float) -> None:
    """Raise a ValueError unless ``n_boot`` is a positive int and ``level`` lies in (0, 1)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r}; valid values are integers >= 1")
    if not 0 < level < 1:
        raise ValueError(f"level={level!r}; valid values lie strictly between 0 and 1 (e.g. 0.95)")


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, *, n_boot: int, seed: int = 0,
              block: int | None = None) -> np.ndarray:
    """Replicates of ``statistic`` over item resamples: ``statistic(idx)`` maps indices [b, n] to [b] or [b, m].

    Blocks of ``block`` replicates (default: all at once) keep the index array small; the random stream is
    one generator seeded with ``seed``, drawn block after block. Returns [n_boot] or [n_boot, m].

    >>> bootstrap(lambda idx: idx.min(axis=1), 3, n_boot=4).shape
    (4,)
    """
    rng = np.random.default_rng(seed)
    block = int(n_boot) if block is None else int(block)
    reps = [np.asarray(statistic(rng.integers(0, n, size=(min(block, n_boot - start), n))))
            for start in range(0, int(n_boot), block)]
    return np.concatenate(reps)


def group_codes(groups, n: int) -> np.ndarray:
    """Group codes [n] (0..g-1) of ``groups`` (any hashable labels), or one group per item when None."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must give one group per item: {n} items, groups of shape {g.shape}")
    return np.unique(g, return_inverse=True)[1].ravel()


def group_bootstrap(statistic: Callable[[np.ndarray], np.ndarray], groups, *, n_boot: int, seed: int = 0,
                    block: int | None = None) -> np.ndarray:
    """Replicates of ``statistic`` over resamples of whole groups (a cluster bootstrap).

    Each replicate draws as many groups as there are, with replacement; an item's weight is the number of
    times its group was drawn. ``statistic(weights)`` maps weights [b, n_items] to [b] or [b, m] (a
    weighted mean is ``(w * x).sum(1) / w.sum(1)``). With one item per group this draws the same item
    counts as ``bootstrap``. Returns [n_boot] or [n_boot, m].

    >>> x = np.array([1.0, 1.0, 5.0]); reps = group_bootstrap(lambda w: (w * x).sum(1) / w.sum(1), [0, 0, 1], n_boot=50)
    >>> sorted(set(np.round(reps, 3).tolist()))  # both groups once: 7/3; group 0 twice: 1; group 1 twice: 5
    [1.0, 2.333, 5.0]
    """
    codes = np.asarray(groups, dtype=np.int64) if groups is not None else None
    if codes is None or codes.ndim != 1:
        raise ValueError("groups must be 1-D group codes (see group_codes)")
    n_groups = int(codes.max()) + 1 if codes.size else 0
    if n_groups == 0:
        raise ValueError("group_bootstrap needs at least one item")

    def weights(idx):  # [b, g] drawn group indices -> [b, n] item weights
        counts = np.zeros((idx.shape[0], n_groups), dtype=np.float64)
        np.add.at(counts, (np.arange(idx.shape[0])[:, None], idx), 1.0)
        return counts[:, codes]

    return bootstrap(lambda idx: statistic(weights(idx)), n_groups, n_boot=n_boot, seed=seed, block=block)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> np.ndarray:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (numpy's linear method) of ``replicates``
    along axis 0: [2] or [2, m].

    >>> percentile_interval(np.arange(101.0), 0.9).round(6).tolist()
    [5.0, 95.0]
    """
    return np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2], axis=0)


def mean_ci(x, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95, groups=None) -> dict:
    """Mean of ``x`` [n] with a percentile bootstrap CI over items: {mean, ci_low, ci_high, n, level}.

    Replicate b averages ``x[rng.integers(0, n, size=n)]`` with ``rng = numpy.random.default_rng(seed)``
    (one block of all replicates); the CI is ``percentile_interval`` of the replicates. With ``groups`` [n]
    whole groups are resampled instead (``group_bootstrap``), for items that are not independent.
    """
    a = finite_1d(x, "x")
    check_boot(n_boot, level)
    if groups is not None:
        boot = group_bootstrap(lambda w: (w * a).sum(1) / w.sum(1), group_codes(groups, a.size), n_boot=int(n_boot),
                               seed=seed, block=200)
    else:
        boot = bootstrap(lambda idx: a[idx].mean(axis=1), a.size, n_boot=int(n_boot), seed=seed)
    low, high = percentile_interval(boot, level)
    return {"mean": float(a.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(a.size),
            "level": float(level)}


def paired_difference(base, other, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95, groups=None) -> dict:
    """Mean per-item difference ``other - base`` [n] with ``mean_ci``'s bootstrap CI: {mean, ci_low, ci_high, n, level}.

    >>> r = paired_difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.5])
    >>> round(r["mean"], 6), r["n"]
    (1.166667, 3)
    """
    b, o = finite_1d(base, "base"), finite_1d(other, "other")
    if b.shape != o.shape:
        raise ValueError(f"base has {b.size} items and other has {o.size}; paired differences need equal lengths")
    return mean_ci(o - b, n_boot=n_boot, seed=seed, level=level, groups=groups)
