"""How well a representation names the primitives: linear probes from h with a control task, and the
alignment of single code units (sparse-autoencoder latents, or PCA / FastICA components of h as baselines)
with the primitives: matched correlation and the 1-sparse probe F1.

Inputs: activations or codes [n, m] (numpy or torch, any float dtype; float64 inside), ``labels`` [n, P]
multi-hot (0/1) primitive labels, and a train/test split given by the caller as row indices (disjoint). Every
selection (a probe's weights, a unit and its threshold, a PCA or ICA fit) is made on the training rows and
scored on the test rows, except ``matched_correlation``, which scores the rows it is given: pass held-out
rows, and read it against its chance level, about sqrt(2 ln(2m) / n) for m units of pure noise.

>>> rng = np.random.default_rng(0)
>>> labels = (rng.random((400, 3)) < 0.3).astype(float)
>>> z = np.c_[labels[:, [2, 0, 1]] + 0.05 * rng.random((400, 3)), rng.random((400, 5))]
>>> r = code_alignment(z, labels, np.arange(200), np.arange(200, 400))
>>> r.matched.matched_unit.tolist(), round(r.matched.mean_matched, 2), r.sparse_probe.f1.round(2).tolist()
([1, 2, 0], 1.0, [1.0, 1.0, 1.0])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

from lib.geometry.linalg import as_matrix
from lib.geometry.probes import make_probe
from lib.synthetic.analysis import group_codes_of

__all__ = ["BASELINES", "check_split", "control_labels", "PrimitiveProbes", "primitive_probes", "MatchedCorrelation",
           "unit_label_correlation", "matched_correlation", "SparseProbe", "one_sparse_probe_f1", "chance_f1",
           "Alignment", "code_alignment", "baseline_codes"]

BASELINES = ("pca", "ica")


def _labels(labels, n: int) -> np.ndarray:
    """``labels`` as a 0/1 float64 matrix [n, P], or an error naming what was passed."""
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"labels must be multi-hot [n={n}, P]; got shape {y.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0/1 multi-hot; found values {np.unique(y[~np.isin(y, (0.0, 1.0))])[:5]}")
    return y


def _rows(idx, name: str, n: int) -> np.ndarray:
    """``idx`` as a non-empty 1-D integer index array into n rows, or an error naming ``name``."""
    a = np.asarray(idx)
    if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be a non-empty 1-D array of row indices; got {a.dtype} of shape {a.shape}")
    if a.min() < 0 or a.max() >= n:
        raise ValueError(f"{name} holds indices outside 0..{n - 1}: {a.min()}..{a.max()}")
    return a


def check_split(train_idx, test_idx, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The split as two non-empty, disjoint integer index arrays into n rows, or an error saying what is wrong.

    >>> [a.tolist() for a in check_split([0, 1], [2], 3)]
    [[0, 1], [2]]
    """
    tr, te = _rows(train_idx, "train_idx", n), _rows(test_idx, "test_idx", n)
    shared = np.intersect1d(tr, te)
    if shared.size:
        raise ValueError(f"train_idx and test_idx share {shared.size} rows (e.g. {shared[0]}); they must be disjoint")
    return tr, te


# -------------------------------------------------------------------------------- probes with a control task
def control_labels(labels, types=None, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang's control task [n, P]: each input type is given the label of another type, and each row
    takes its type's control label. ``types`` [n] (default: the distinct label rows, i.e. the composition) says
    which rows share an input type; a type's own label for a primitive is the majority label of its rows (ties:
    1). For each primitive the types' labels are shuffled by its own ``rng.permutation`` (``rng =
    np.random.default_rng(seed)``, primitives in order), so the control is a function of the type with exactly
    as many positive types as the real task (a permutation, not H&L's fresh draws, whose base rate would wander
    with few types), unrelated to the primitive itself.

    >>> c = control_labels(np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1]]), seed=3)
    >>> c.shape, bool((c[0] == c[1]).all() and (c[2] == c[3]).all())  # rows of one composition agree
    ((5, 2), True)
    """
    y = _labels(labels, len(labels))
    _, codes = group_codes_of(y if types is None else types, len(y))
    counts = np.bincount(codes)
    own = (np.stack([np.bincount(codes, weights=col, minlength=len(counts)) for col in y.T], 1)
           >= counts[:, None] / 2).astype(np.float64)  # [types, P]
    rng = np.random.default_rng(seed)
    shuffled = np.stack([own[rng.permutation(len(own)), p] for p in range(y.shape[1])], 1)
    return shuffled[codes]


@dataclass(frozen=True, eq=False)
class PrimitiveProbes:
    """Per primitive [P], on the test rows: accuracy of the probe, control_accuracy of the same probe trained on
    the control task, selectivity = accuracy - control_accuracy, majority = accuracy of predicting the training
    majority class."""

    accuracy: np.ndarray
    control_accuracy: np.ndarray
    selectivity: np.ndarray
    majority: np.ndarray


def _probe_accuracy(x_tr, y_tr, x_te, y_te, C: float, seed: int) -> float:
    if np.unique(y_tr).size < 2:  # one class in training: the probe can only predict it
        return float(np.mean(y_te == y_tr[0]))
    with threadpool_limits(1):
        return float(make_probe(C=C, seed=seed).fit(x_tr, y_tr).score(x_te, y_te))


def primitive_probes(h, labels, train_idx, test_idx, *, types=None, seed: int = 0, C: float = 1.0
                     ) -> PrimitiveProbes:
    """One linear probe per primitive from ``h`` [n, d] (``lib.geometry.probes.make_probe``: standardised
    features, logistic regression at ``C``), fitted on ``train_idx`` and scored on ``test_idx``, beside the
    same probe on ``control_labels(labels, types, seed)``. The control is learnable only through the input
    types seen in training, so give types that occur on both sides of the split.

    >>> rng = np.random.default_rng(0); y = (rng.random((200, 2)) < 0.5).astype(float)
    >>> r = primitive_probes(np.c_[y, rng.standard_normal((200, 3))], y, np.arange(100), np.arange(100, 200))
    >>> r.accuracy.tolist()
    [1.0, 1.0]
    """
    x = as_matrix(h, "h")
    y = _labels(labels, len(x))
    tr, te = check_split(train_idx, test_idx, len(x))
    ctrl = control_labels(y, types, seed)
    acc, ctl, maj = [], [], []
    for p in range(y.shape[1]):
        acc.append(_probe_accuracy(x[tr], y[tr, p], x[te], y[te, p], C, seed))
        ctl.append(_probe_accuracy(x[tr], ctrl[tr, p], x[te], ctrl[te, p], C, seed))
        maj.append(float(np.mean(y[te, p] == float(y[tr, p].mean() >= 0.5))))
    acc, ctl = np.array(acc), np.array(ctl)
    return PrimitiveProbes(acc, ctl, acc - ctl, np.array(maj))


# ------------------------------------------------------------------------------------- unit-primitive alignment
@dataclass(frozen=True, eq=False)
class MatchedCorrelation:
    """corr [m, P] Pearson correlation of each unit with each primitive; best [P] the largest |corr| of each
    primitive over units, best_unit [P]; matched [P] the |corr| of a one-to-one (Hungarian) matching of
    primitives to units that maximises the total |corr|, matched_unit [P] (-1 and 0 when units run out)."""

    corr: np.ndarray
    best: np.ndarray
    best_unit: np.ndarray
    matched: np.ndarray
    matched_unit: np.ndarray

    @property
    def mean_best(self) -> float:
        return float(self.best.mean())

    @property
    def mean_matched(self) -> float:
        return float(self.matched.mean())


def unit_label_correlation(z, labels) -> np.ndarray:
    """Pearson correlation [m, P] of each unit of ``z`` [n, m] with each label column [n, P]; 0 where a unit
    (a dead latent) or a label is constant.

    >>> unit_label_correlation(np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]), np.array([[0], [0], [1]])).round(3)
    array([[0.866],
           [0.   ]])
    """
    x = as_matrix(z, "z")
    y = _labels(labels, len(x))
    xc, yc = x - x.mean(0), y - y.mean(0)
    norms = np.outer(np.linalg.norm(xc, axis=0), np.linalg.norm(yc, axis=0))
    return np.divide(xc.T @ yc, norms, out=np.zeros(norms.shape), where=norms > 0)


def matched_correlation(z, labels) -> MatchedCorrelation:
    """Unit-primitive matched correlation of codes ``z`` [n, m] and multi-hot ``labels`` [n, P]: for each
    primitive its best |corr| unit, and a one-to-one matching (``scipy.optimize.linear_sum_assignment``).

    >>> y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    >>> r = matched_correlation(np.c_[y[:, 1], y[:, 0], [0.3, 0.1, 0.2, 0.0]], y)
    >>> r.best_unit.tolist(), r.matched_unit.tolist(), r.mean_matched
    ([1, 0], [1, 0], 1.0)
    """
    corr = unit_label_correlation(z, labels)
    strength = np.abs(corr)  # [m, P]
    rows, cols = linear_sum_assignment(strength.T, maximize=True)  # primitives -> units
    matched, unit = np.zeros(corr.shape[1]), np.full(corr.shape[1], -1)
    matched[rows], unit[rows] = strength[cols, rows], cols
    return MatchedCorrelation(corr, strength.max(0), strength.argmax(0), matched, unit)


@dataclass(frozen=True, eq=False)
class SparseProbe:
    """The 1-sparse probe of each primitive [P]: unit, sign (+1 or -1) and threshold of the rule "positive iff
    sign * z[:, unit] > threshold" chosen on the training rows, its train_f1 there and f1 on the test rows."""

    unit: np.ndarray
    sign: np.ndarray
    threshold: np.ndarray
    train_f1: np.ndarray
    f1: np.ndarray

    @property
    def mean_f1(self) -> float:
        return float(self.f1.mean())


def _f1(pred: np.ndarray, y: np.ndarray) -> float:
    """F1 of boolean predictions against 0/1 labels; 0 when there is nothing to find and nothing predicted."""
    tp = float(np.sum(pred & (y > 0)))
    denom = float(pred.sum() + (y > 0).sum())
    return 2 * tp / denom if denom else 0.0


def _best_rule(x: np.ndarray, y: np.ndarray) -> tuple[int, int, float, float]:
    """(unit, sign, threshold, train F1) of the best rule for one label y [n] over units of x [n, m]. Cutting the
    values sorted in descending order after r rows predicts those r positive; only cuts between distinct
    values are rules. Ties go to sign +1, then the lowest unit, then the highest threshold."""
    n, npos = len(x), float(y.sum())
    scores, thresholds = [], []
    for sign in (1, -1):
        v = sign * x
        order = np.argsort(-v, axis=0, kind="stable")
        vs = np.take_along_axis(v, order, 0)  # [n, m] descending per unit
        tp = np.cumsum(y[order], axis=0)
        f1 = 2 * tp / (np.arange(1, n + 1)[:, None] + npos)
        cut = np.r_[(vs[:-1] + vs[1:]) / 2, np.full((1, x.shape[1]), -np.inf)]
        f1[:-1][vs[:-1] <= vs[1:]] = -1.0  # no rule separates equal values
        scores.append(f1.T)
        thresholds.append(cut.T)
    scores, thresholds = np.stack(scores), np.stack(thresholds)  # [2 signs, m, n]
    s, unit, r = np.unravel_index(np.argmax(scores), scores.shape)
    return int(unit), (1, -1)[s], float(thresholds[s, unit, r]), float(scores[s, unit, r])


def one_sparse_probe_f1(z, labels, train_idx, test_idx) -> SparseProbe:
    """For each primitive, the single unit of ``z`` [n, m], direction and threshold that maximise F1 on the
    training rows, and that rule's F1 on the test rows. An uninformative unit scores about ``chance_f1``.

    >>> z = np.array([[0.0], [2.0], [0.1], [3.0], [0.2], [1.5]]); y = np.array([[0], [1], [0], [1], [0], [1]])
    >>> r = one_sparse_probe_f1(z, y, [0, 1, 2, 3], [4, 5])
    >>> r.unit.tolist(), r.sign.tolist(), r.threshold.tolist(), r.f1.tolist()
    ([0], [1], [1.05], [1.0])
    """
    x = as_matrix(z, "z")
    y = _labels(labels, len(x))
    tr, te = check_split(train_idx, test_idx, len(x))
    rules = []
    for p in range(y.shape[1]):
        if not y[tr, p].any():
            raise ValueError(f"primitive {p} has no positive training rows; a 1-sparse probe needs some")
        unit, sign, thr, train_f1 = _best_rule(x[tr], y[tr, p])
        rules.append((unit, sign, thr, train_f1, _f1(sign * x[te, unit] > thr, y[te, p])))
    unit, sign, thr, train_f1, f1 = (np.array(c) for c in zip(*rules))
    return SparseProbe(unit, sign, thr, train_f1, f1)


def chance_f1(labels) -> np.ndarray:
    """F1 [P] of calling every row positive, 2 p / (1 + p) at prevalence p: the most a rule independent of the
    label reaches in expectation (its F1 is 2 p q / (p + q) at positive rate q, largest at q = 1).

    >>> chance_f1(np.array([[1, 0], [0, 0], [1, 1], [0, 0]])).round(4).tolist()
    [0.6667, 0.4]
    """
    p = _labels(labels, len(labels)).mean(0)
    return 2 * p / (1 + p)


@dataclass(frozen=True, eq=False)
class Alignment:
    """matched: ``matched_correlation`` on the test rows; sparse_probe: ``one_sparse_probe_f1``; chance_f1 [P] of
    the test rows."""

    matched: MatchedCorrelation
    sparse_probe: SparseProbe
    chance_f1: np.ndarray


def code_alignment(z, labels, train_idx, test_idx) -> Alignment:
    """Both unit-primitive alignment metrics of codes ``z`` [n, m] (SAE latents, or ``baseline_codes``).

    >>> y = np.tile(np.eye(3), (4, 1))  # unit j carries primitive [1, 2, 0][j]
    >>> code_alignment(y[:, [1, 2, 0]] * 2.0, y, np.arange(6), np.arange(6, 12)).matched.matched_unit.tolist()
    [2, 0, 1]
    """
    x = as_matrix(z, "z")
    y = _labels(labels, len(x))
    tr, te = check_split(train_idx, test_idx, len(x))
    return Alignment(matched_correlation(x[te], y[te]), one_sparse_probe_f1(x, y, tr, te), chance_f1(y[te]))


def baseline_codes(h, k: int, train_idx, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Codes [n, k] of ``h`` [n, d] from a baseline fitted on the training rows: ``pca`` (sklearn PCA, the top-k
    components) or ``ica`` (sklearn FastICA, k unit-variance components, ``random_state=seed``). FastICA's
    logcosh contrast unmixes sparse 0/1 sources (prevalence ~0.1) reliably; near prevalence 0.2 their excess
    kurtosis is close to 0 and it can leave two mixed: read its alignment beside the sources' prevalence.

    >>> h = np.random.default_rng(0).standard_normal((50, 4)) * [3, 2, 1, 0.5]
    >>> baseline_codes(h, 2, np.arange(40)).shape
    (50, 2)
    """
    from sklearn.decomposition import PCA, FastICA

    x = as_matrix(h, "h")
    tr = _rows(train_idx, "train_idx", len(x))
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; valid baselines: {', '.join(BASELINES)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= min(x.shape[1], tr.size):
        raise ValueError(f"k={k!r}; valid values are integers 1..{min(x.shape[1], tr.size)} (the smaller of h's "
                         f"width and the training rows)")
    model = (PCA(n_components=k, random_state=seed) if method == "pca"
             else FastICA(n_components=k, whiten="unit-variance", max_iter=1000, random_state=seed))
    with threadpool_limits(1):
        return model.fit(x[tr]).transform(x)
