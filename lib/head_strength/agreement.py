"""Do two per-head quantities agree? Spearman's rho over heads with a bootstrap interval over rows and a
permutation p over heads, and the overlap of their top fractions against chance.

The inputs are per-row, per-head values (e.g. a head's activation strength on each sample, its loss increase
on each held-out row); a head's value is its mean over rows. The bootstrap resamples rows (jointly when both
quantities were measured on the same rows), so the interval carries the sampling noise of the rows; the
permutation p asks whether the heads' two mean vectors are associated at all, treating heads as exchangeable
(it ignores row noise and any structure among heads, such as layers).

>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(40, 30)) + np.arange(30)
>>> r = spearman_interval(x, x ** 3, n_boot=200, n_perm=200)
>>> round(r["rho"], 6), r["ci_low"] > 0.99, r["p_perm"] == 1 / 201
(1.0, True, True)
>>> top_overlap(np.arange(10.0), np.arange(10.0), frac=0.2)["overlap"]
2
"""
from __future__ import annotations

import numpy as np
from scipy.stats import hypergeom, rankdata

from lib.errors import UserError
from lib.stats.bootstrap import bootstrap, check_boot, percentile_interval

__all__ = ["AgreementInputError", "spearman", "spearman_rows", "spearman_interval", "top_overlap"]


class AgreementInputError(UserError, ValueError):
    """Per-head quantities that cannot be compared (the message names the input and the valid shapes)."""


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho between matching rows of x [b, N] and y [b, N] (average ranks for ties): [b]; NaN
    where a row is constant."""
    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx -= rx.mean(-1, keepdims=True)
    ry -= ry.mean(-1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def spearman(x, y) -> float:
    """Spearman's rho between two vectors [N] (or arrays of one shape, flattened), as scipy.stats.spearmanr.

    >>> spearman([1, 2, 3, 4], [10, 20, 40, 30])
    0.8
    """
    a, b = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    return float(spearman_rows(a[None], b[None])[0])


def _rows(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:  # [n, L, H] -> [n, L * H]
        a = a.reshape(a.shape[0], -1)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 3:
        raise AgreementInputError(f"{name} has shape {a.shape}; give per-row per-head values [rows, heads] "
                                  f"(or [rows, layers, heads]) with at least 3 heads")
    if not np.isfinite(a).all():
        raise AgreementInputError(f"{name} holds {int((~np.isfinite(a)).sum())} non-finite values; values must be "
                                  f"finite")
    return a


def _boot_means(rows: np.ndarray, n_boot: int, seed) -> np.ndarray:
    """[n_boot, N]: head means over row resamples (``lib.stats.bootstrap``: replicate b draws
    ``rng.integers(0, n, size=n)``), as weighted means with the draw counts."""
    n = rows.shape[0]

    def means(idx):  # [b, n] drawn rows -> [b, N]
        counts = np.zeros((idx.shape[0], n))
        np.add.at(counts, (np.arange(idx.shape[0])[:, None], idx), 1.0)
        return counts @ rows / n
    return bootstrap(means, n, n_boot=n_boot, seed=seed, block=200)


def spearman_interval(x_rows, y_rows, *, n_boot: int = 1000, n_perm: int = 1000, seed: int = 0, paired: bool = True,
                      level: float = 0.95) -> dict:
    """Spearman's rho between the head means of ``x_rows`` [n, N] and ``y_rows`` ([n, N] when ``paired``: the same
    rows; [m, N] otherwise), with a percentile bootstrap interval and a two-sided permutation p.

    Returns {rho, ci_low, ci_high, p_perm, level, n_boot, n_boot_valid, n_perm, n_rows_x, n_rows_y, n_heads,
    paired}. Streams: ``SeedSequence(seed).spawn(3)`` gives the bootstrap of x (and of both rows jointly when
    ``paired``: one row resample per replicate), the bootstrap of y (unpaired: independent resamples) and the
    permutations. Replicates whose means are constant (rho undefined) are dropped (``n_boot_valid``). The
    permutation p is (1 + #{|rho_perm| >= |rho|}) / (1 + n_perm), each rho_perm pairing x's means with a
    uniform permutation of y's over heads; ``n_perm=0`` gives ``p_perm`` None.
    """
    x, y = _rows(x_rows, "x_rows"), _rows(y_rows, "y_rows")
    if x.shape[1] != y.shape[1]:
        raise AgreementInputError(f"x_rows has {x.shape[1]} heads and y_rows {y.shape[1]}; give the same heads in the "
                                  f"same order")
    if paired and x.shape[0] != y.shape[0]:
        raise AgreementInputError(f"paired=True needs the same rows: x_rows has {x.shape[0]}, y_rows {y.shape[0]}; "
                                  f"pass paired=False for quantities measured on different rows")
    check_boot(n_boot, level)
    if isinstance(n_perm, bool) or not isinstance(n_perm, (int, np.integer)) or n_perm < 0:
        raise AgreementInputError(f"n_perm={n_perm!r}; valid values are integers >= 0")
    mx, my = x.mean(0), y.mean(0)
    rho = spearman(mx, my)
    if not np.isfinite(rho):
        raise AgreementInputError("the head means of x_rows or y_rows are all equal; Spearman's rho is undefined")
    s_x, s_y, s_perm = np.random.SeedSequence(seed).spawn(3)
    if paired:
        both = _boot_means(np.concatenate([x, y], 1), int(n_boot), s_x)
        bx, by = both[:, :x.shape[1]], both[:, x.shape[1]:]
    else:
        bx, by = _boot_means(x, int(n_boot), s_x), _boot_means(y, int(n_boot), s_y)
    reps = spearman_rows(bx, by)
    reps = reps[np.isfinite(reps)]
    low, high = percentile_interval(reps, level) if reps.size else (np.nan, np.nan)
    p = None
    if n_perm:
        rng = np.random.default_rng(s_perm)
        perms = np.stack([rng.permutation(mx.size) for _ in range(int(n_perm))])
        null = spearman_rows(np.broadcast_to(mx, perms.shape), my[perms])
        p = float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (1 + int(n_perm)))
    return {"rho": rho, "ci_low": float(low), "ci_high": float(high), "p_perm": p, "level": float(level),
            "n_boot": int(n_boot), "n_boot_valid": int(reps.size), "n_perm": int(n_perm), "n_rows_x": int(x.shape[0]),
            "n_rows_y": int(y.shape[0]), "n_heads": int(x.shape[1]), "paired": bool(paired)}


def top_overlap(x, y, frac: float = 0.10) -> dict:
    """How many of the top ``frac`` heads by ``x`` are also top by ``y`` (values [N] or [L, H], larger = more):
    {k, n, overlap, expected, p}. k = ``frac * N`` rounded half up (at least 1); ties broken by position (the
    first head wins); expected = k * k / N, the mean overlap of two random k-sets; p = P(overlap >= observed)
    for a random k-set, the hypergeometric upper tail.

    >>> r = top_overlap([5, 4, 3, 2, 1, 0, 0, 0, 0, 0], [0, 4, 5, 0, 0, 0, 0, 0, 0, 1], frac=0.3)
    >>> r["k"], r["overlap"], round(r["expected"], 3), round(r["p"], 4)
    (3, 2, 0.9, 0.1833)
    """
    a, b = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise AgreementInputError(f"x has {a.size} heads and y {b.size}; give per-head values of the same heads "
                                  f"(at least 2)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise AgreementInputError("x or y holds non-finite values; per-head values must be finite")
    if not 0 < frac <= 1:
        raise AgreementInputError(f"frac={frac!r}; valid fractions lie in (0, 1]")
    n = a.size
    k = max(1, int(np.floor(frac * n + 0.5)))
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    overlap = len(top_a & top_b)
    return {"k": k, "n": n, "overlap": overlap, "expected": k * k / n, "p": float(hypergeom.sf(overlap - 1, n, k, k))}
