"""Representation analysis of the synthetic-grid models: Grassmann distances between the task groups' PCA
subspaces of the bottleneck h, with their null references; CKA tables between layers or task groups and the
Kornblith layer-matching check across seeds; seed-level intervals and the probability of improvement.

Numpy (or torch) in, numpy or floats out, float64 throughout. ``groups`` is one label per row [n] (any hashable
values) or a multi-hot matrix [n, P] whose distinct rows are the groups (one group per composition).

Grassmann distances (``KINDS``) are functions of the principal angles theta_1..theta_k between two
k-dimensional subspaces (``lib.geometry.subspaces.principal_angles``):

- ``geodesic`` = sqrt(sum_i theta_i^2), the arc length on Gr(k, d); 0 for equal subspaces, sqrt(k) pi / 2 for
  orthogonal ones.
- ``chordal`` = ||U U^T - V V^T||_F / sqrt(2) = sqrt(sum_i sin^2 theta_i) (U, V orthonormal bases); at most sqrt(k).

>>> rng = np.random.default_rng(0)
>>> basis = np.linalg.qr(rng.standard_normal((16, 2)))[0]
>>> h = rng.standard_normal((300, 2)) @ basis.T + 0.01 * rng.standard_normal((300, 16))
>>> round(subspace_sharing(h, np.repeat([0, 1, 2], 100), k=2), 2)  # three groups in one plane: distance ~0
0.01
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lib.geometry.cka import best_match_layers, cka_matrix
from lib.geometry.directions import top_singular
from lib.geometry.linalg import as_layers, as_matrix, centre
from lib.geometry.subspaces import covariance_subspace_angles, principal_angles, random_subspace_angles
from lib.stats.bootstrap import bootstrap, check_boot, finite_1d, mean_ci

__all__ = ["KINDS", "GroupSubspaces", "group_codes_of", "group_subspaces", "grassmann_distance",
           "distance_from_angles", "pairwise_distances", "subspace_sharing", "random_subspace_null",
           "covariance_subspace_null", "label_shuffle_null", "CkaTable", "cka_table", "LayerMatch",
           "layer_matching_check", "probability_of_improvement", "seed_interval"]

KINDS = ("geodesic", "chordal")


# ------------------------------------------------------------------------------------------- subspaces
def group_codes_of(groups, n: int) -> tuple[tuple, np.ndarray]:
    """The group labels (sorted; tuples of ints for multi-hot rows) and each row's group code [n] (0..G-1).

    >>> group_codes_of(np.array([[0, 1], [1, 0], [0, 1]]), 3)
    (((0, 1), (1, 0)), array([0, 1, 0]))
    """
    g = np.asarray(groups)
    if g.ndim not in (1, 2) or g.shape[0] != n:
        raise ValueError(f"groups must be one label per row [{n}] or multi-hot rows [{n}, P]; got shape {g.shape}")
    if g.ndim == 2:
        rows, codes = np.unique(g.astype(np.int64), axis=0, return_inverse=True)
        return tuple(tuple(int(v) for v in r) for r in rows), codes.ravel()
    labels, codes = np.unique(g, return_inverse=True)
    return tuple(labels.tolist()), codes.ravel()


@dataclass(frozen=True, eq=False)
class GroupSubspaces:
    """Each group's top-k PCA subspace: labels [G], bases [G, d, k] (orthonormal columns), kept [G] (share of
    the group's centred variance inside its k axes), sizes [G] (rows per group), k."""

    labels: tuple
    bases: np.ndarray
    kept: np.ndarray
    sizes: np.ndarray
    k: int


def group_subspaces(h, groups, k: int) -> GroupSubspaces:
    """Top-``k`` principal axes of each group's rows of ``h`` [n, d], each group centred on its own mean.

    A group needs more than ``k`` rows and ``k`` non-zero singular values (else its k-dim subspace is not
    determined): an error names the group otherwise.

    >>> h = np.r_[np.eye(3)[[0, 0, 1, 1]] * [[2], [-2], [1], [-1]], np.eye(3)[[2, 2]] * [[1], [-1]]]
    >>> s = group_subspaces(h, [0, 0, 0, 0, 1, 1], k=1)  # group 0 spreads 8 along e0 and 2 along e1
    >>> np.abs(s.bases[:, :, 0]).tolist(), s.kept.round(3).tolist()
    ([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [0.8, 1.0])
    """
    x = as_matrix(h, "h")
    labels, codes = group_codes_of(groups, len(x))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= x.shape[1]:
        raise ValueError(f"k={k!r}; valid values are integers 1..{x.shape[1]} (the width of h)")
    bases, kept, sizes = [], [], []
    for g, label in enumerate(labels):
        rows = centre(x[codes == g])
        total = float(np.square(rows).sum())
        s, vt = top_singular(rows, k) if len(rows) > k else (np.zeros(0), None)
        if len(s) < k or total == 0 or s[-1] <= 1e-10 * s[0]:
            raise ValueError(f"group {label!r} has {len(rows)} rows of rank < k={k}: its {k}-dim PCA subspace is "
                             f"not determined; use a smaller k or groups of more than {k} varied rows")
        bases.append(vt.T)
        kept.append(float(np.square(s).sum() / total))
        sizes.append(len(rows))
    return GroupSubspaces(labels, np.stack(bases), np.array(kept), np.array(sizes), int(k))


def distance_from_angles(angles, kind: str = "geodesic"):
    """Grassmann distance of principal angles [..., k] (radians) along the last axis (see the module notes).

    >>> right = np.full(4, np.pi / 2)  # four right angles: sqrt(4) pi / 2 and sqrt(4)
    >>> round(float(distance_from_angles(right)), 6), float(distance_from_angles(right, "chordal"))
    (3.141593, 2.0)
    """
    a = np.asarray(angles, dtype=np.float64)
    if kind == "geodesic":
        return np.sqrt(np.square(a).sum(-1))
    if kind == "chordal":
        return np.sqrt(np.square(np.sin(a)).sum(-1))
    raise ValueError(f"unknown Grassmann distance {kind!r}; valid kinds: {', '.join(KINDS)}")


def grassmann_distance(u, v, kind: str = "geodesic") -> float:
    """Grassmann distance between the column spans of ``u`` [d, k] and ``v`` [d, k] (any bases of equal k).

    >>> e = np.eye(4)
    >>> round(grassmann_distance(e[:, :2], e[:, 2:]), 6), grassmann_distance(e[:, :2], e[:, [1, 0]] * 3)
    (2.221441, 0.0)
    """
    distance_from_angles(np.zeros(1), kind)  # check the kind first
    ku, kv = (np.shape(a)[1] if np.ndim(a) == 2 else 1 for a in (u, v))  # a vector [d] is one column
    if ku != kv:
        raise ValueError(f"u and v span {ku} and {kv} dimensions; a Grassmann distance needs equal k")
    return float(distance_from_angles(principal_angles(u, v), kind))


def pairwise_distances(bases, kind: str = "geodesic") -> np.ndarray:
    """Grassmann distances [G, G] between every pair of bases [G, d, k] (zero diagonal, symmetric).

    >>> pairwise_distances(np.eye(3)[None, :, :1].repeat(2, 0)).tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    """
    b = np.asarray(bases, dtype=np.float64)
    if b.ndim != 3:
        raise ValueError(f"bases must be a stack [G, d, k]; got shape {b.shape}")
    out = np.zeros((len(b), len(b)))
    for i in range(len(b)):
        for j in range(i + 1, len(b)):
            out[i, j] = out[j, i] = grassmann_distance(b[i], b[j], kind)
    return out


def subspace_sharing(h, groups, k: int, kind: str = "geodesic") -> float:
    """Mean Grassmann distance over all pairs of groups' top-k PCA subspaces of ``h`` [n, d]: a distance, so
    lower means more shared (0: every group varies in the same k-dim subspace). Needs at least 2 groups.

    >>> h = np.r_[np.eye(4)[[0, 0, 1, 1]] * [[1], [-1], [1], [-1]], np.eye(4)[[2, 2, 3, 3]] * [[1], [-1], [1], [-1]]]
    >>> round(subspace_sharing(h, [0, 0, 1, 1, 2, 2, 3, 3], k=1), 4)  # four orthogonal axes: pi / 2
    1.5708
    """
    subspaces = group_subspaces(h, groups, k)
    if len(subspaces.labels) < 2:
        raise ValueError(f"subspace sharing needs at least 2 groups; got {len(subspaces.labels)}")
    d = pairwise_distances(subspaces.bases, kind)
    return float(d[np.triu_indices(len(d), 1)].mean())


def random_subspace_null(d: int, k: int, n: int = 200, seed: int = 0, kind: str = "geodesic") -> np.ndarray:
    """Distances [n] between pairs of subspaces drawn uniformly on Gr(k, d) (QR of [d, k] Gaussians,
    ``lib.geometry.subspaces.random_subspace_angles``): the no-sharing reference.

    >>> round(float(random_subspace_null(50, 1, n=2000).mean()), 1)  # E theta for two random lines in R^50
    1.5
    """
    return distance_from_angles(random_subspace_angles(d, k, k, n_samples=n, seed=seed), kind)


def covariance_subspace_null(h, k: int, n: int = 200, seed: int = 0, kind: str = "geodesic") -> np.ndarray:
    """Distances [n] between pairs of random k-dim subspaces drawn from the pooled covariance of ``h`` [n_rows, d]
    (spans of Hc^T G, G Gaussian; ``lib.geometry.subspaces.covariance_subspace_angles``): what groups whose
    subspaces are chance draws shaped by the data's own spectrum would score. Below the uniform null when h is
    anisotropic.

    >>> h = np.random.default_rng(0).standard_normal((100, 10)) * np.r_[10, 10, np.ones(8) * 0.1]
    >>> bool(covariance_subspace_null(h, 2, n=50).mean() < random_subspace_null(10, 2, n=50).mean())
    True
    """
    x = centre(as_matrix(h, "h"))
    return distance_from_angles(covariance_subspace_angles(x, x, k, n_samples=n, seed=seed), kind)


def label_shuffle_null(h, groups, k: int, n: int = 100, seed: int = 0, kind: str = "geodesic") -> np.ndarray:
    """``subspace_sharing`` [n] with the group labels permuted (``np.random.default_rng(seed).permutation`` per
    draw): groups that are random subsets of one cloud, so the floor that finite group sizes leave.

    >>> h = np.random.default_rng(0).standard_normal((200, 5)) * [5, 1, 1, 1, 1]
    >>> bool(label_shuffle_null(h, np.repeat([0, 1], 100), k=1, n=5).max() < 0.5)
    True
    """
    x = as_matrix(h, "h")
    _, codes = group_codes_of(groups, len(x))
    rng = np.random.default_rng(seed)
    return np.array([subspace_sharing(x, codes[rng.permutation(len(x))], k, kind) for _ in range(int(n))])


# ------------------------------------------------------------------------------------------------- CKA
@dataclass(frozen=True, eq=False)
class CkaTable:
    """CKA of every pair: names_a [L1] (rows), names_b [L2] (columns), values [L1, L2], kind."""

    names_a: tuple
    names_b: tuple
    values: np.ndarray
    kind: str


def _names(acts, name: str) -> tuple:
    if not isinstance(acts, Mapping):
        raise ValueError(f"{name} must be a mapping from layer (or group) name to activations [n, d]; got "
                         f"{type(acts).__name__}")
    return tuple(acts)


def cka_table(acts_a, acts_b=None, kind: str = "linear") -> CkaTable:
    """CKA (``lib.geometry.cka.cka_matrix``: linear, debiased or rbf) between every entry of ``acts_a`` and of
    ``acts_b`` (default: ``acts_a`` itself), mappings from a layer name, or a task group, to activations
    [n, d]. Rows must be paired: row i is the same input everywhere (for task groups: the same n inputs under
    each task). Debiased CKA is the one to read for small groups (linear CKA of independent data is not 0).

    >>> x = np.random.default_rng(0).standard_normal((40, 3))
    >>> t = cka_table({"a": x, "b": 2 * x[:, ::-1]}, kind="debiased")  # b: a rescaled permutation of a
    >>> t.names_a, t.values.round(6).tolist()
    (('a', 'b'), [[1.0, 1.0], [1.0, 1.0]])
    """
    acts_b = acts_a if acts_b is None else acts_b
    names_a, names_b = _names(acts_a, "acts_a"), _names(acts_b, "acts_b")
    return CkaTable(names_a, names_b, cka_matrix(acts_a, acts_b, kind), kind)


@dataclass(frozen=True, eq=False)
class LayerMatch:
    """The layer-matching check: accuracy (fraction of layers matched to themselves), picks [L] (index of each
    seed-a layer's best match among seed-b layers), names [L], and the CKA table behind it."""

    accuracy: float
    picks: np.ndarray
    names: tuple
    table: CkaTable


def layer_matching_check(acts_seed_a, acts_seed_b, kind: str = "linear") -> LayerMatch:
    """Kornblith et al. 2019's sanity check: for each layer of the seed-a model, the seed-b layer of highest CKA
    (first on ties); accuracy = fraction of layers whose best match is the same layer. Both mappings name the
    same layers (layer name -> activations [n, d] on the same n inputs); seed b is read in seed a's order.

    >>> rng = np.random.default_rng(0); z = rng.standard_normal((100, 6))
    >>> a = {f"l{i}": np.c_[z[:, :2], z[:, 2 + i:3 + i]] for i in range(3)}
    >>> layer_matching_check(a, {n: x @ np.linalg.qr(rng.standard_normal((3, 3)))[0] for n, x in a.items()}).accuracy
    1.0
    """
    names = _names(acts_seed_a, "acts_seed_a")
    if set(_names(acts_seed_b, "acts_seed_b")) != set(names):
        raise ValueError(f"both seeds must name the same layers; seed a: {list(names)}, seed b: {list(acts_seed_b)}")
    if len(names) < 2:
        raise ValueError(f"layer matching needs at least 2 layers, got {len(names)}")
    b = {name: acts_seed_b[name] for name in names}
    table = CkaTable(names, names, cka_matrix(as_layers(acts_seed_a, "acts_seed_a"), as_layers(b, "acts_seed_b"),
                                              kind), kind)
    picks = best_match_layers(table.values)
    return LayerMatch(float(np.mean(picks == np.arange(len(names)))), picks, names, table)


# ------------------------------------------------------------------------------------------ seed statistics
def probability_of_improvement(a, b, *, n_boot: int = 2000, seed: int = 0, paired: bool = False) -> float:
    """P(mean_b > mean_a) over a percentile bootstrap of seeds (ties count one half): ``a`` [n_a] and ``b`` [n_b]
    are one value per seed of two conditions.

    Unpaired: the seeds of ``a`` and of ``b`` are resampled independently (``lib.stats.bootstrap.bootstrap``
    with ``seed`` for a, ``seed + 1`` for b). ``paired=True`` (the same seeds in both, in the same order):
    seeds are resampled jointly and the replicate compares the means of the same draw.

    >>> probability_of_improvement([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    1.0
    """
    xa, xb = finite_1d(a, "a"), finite_1d(b, "b")
    check_boot(n_boot, 0.5)  # checks n_boot (no interval here, so any valid level)
    if paired:
        if xa.shape != xb.shape:
            raise ValueError(f"paired seeds need equal counts; a has {xa.size}, b has {xb.size}")
        diff = bootstrap(lambda idx: (xb[idx] - xa[idx]).mean(1), xa.size, n_boot=int(n_boot), seed=seed)
    else:
        diff = (bootstrap(lambda idx: xb[idx].mean(1), xb.size, n_boot=int(n_boot), seed=seed + 1)
                - bootstrap(lambda idx: xa[idx].mean(1), xa.size, n_boot=int(n_boot), seed=seed))
    scale = max(np.abs(xa).max(), np.abs(xb).max(), 1e-300)
    tie = np.abs(diff) <= 1e-12 * scale  # means equal up to rounding
    return float(np.mean(np.where(tie, 0.5, diff > 0)))


def seed_interval(values, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean over seeds with a percentile bootstrap interval (``lib.stats.bootstrap.mean_ci``): {mean, ci_low,
    ci_high, n, level}. Needs at least 2 seeds.

    >>> r = seed_interval([0.8, 0.9, 1.0])
    >>> round(r["mean"], 6), r["n"], bool(r["ci_low"] <= 0.9 <= r["ci_high"])
    (0.9, 3, True)
    """
    x = finite_1d(values, "values")
    if x.size < 2:
        raise ValueError(f"an interval over seeds needs at least 2 seeds; got {x.size}")
    return mean_ci(x, n_boot=n_boot, seed=seed, level=level)
