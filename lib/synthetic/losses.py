"""Losses and metrics of the grid tasks: the task loss (cross-entropy, or soft 1 - IoU over non-background
cells), exact-grid accuracy and hard IoU, the sharing regulariser (per-group top-k PCA projections of h and their
mean pairwise distance) with its EMA of projections, and the weight schedules.

IoU over non-background colours (``background`` = colour 0 by default), per grid: with p_c the predicted
probability (soft) or indicator (hard) of colour c at a cell and t_c the target's indicator,
``I = sum_{c != bg, cells} p_c t_c`` and ``U = sum_{c != bg, cells} (p_c + t_c - p_c t_c)``; IoU = I / U, and 1
when both grids are all background (U = 0).

>>> target = torch.tensor([[[0, 1] * 4] * 8])
>>> logits = 10.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
>>> grid_accuracy(logits, target), grid_iou(logits, target), float(task_loss(logits, target)) < 1e-3
(1.0, 1.0, True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["TASK_LOSSES", "SCHEDULES", "task_loss", "grid_accuracy", "grid_iou", "top_k_projection",
           "projection_distance", "ProjectionEMA", "SharingLoss", "sharing_loss", "schedule"]

TASK_LOSSES = ("ce", "iou")
SCHEDULES = ("constant", "step", "linear", "cosine")


def _check_target(target: torch.Tensor, n_colours: int | None = None) -> None:
    if not isinstance(target, torch.Tensor) or target.dtype != torch.long or target.ndim != 3:
        raise ValueError(f"target must be a torch.long tensor [B, H, W]; got {getattr(target, 'dtype', type(target))} "
                         f"of shape {tuple(getattr(target, 'shape', ()))}")
    if n_colours is not None and target.numel() and (target.min() < 0 or target.max() >= n_colours):
        raise ValueError(f"target colours must lie in 0..{n_colours - 1}; got {int(target.min())}..{int(target.max())}")


def _check_logits(logits: torch.Tensor, target: torch.Tensor) -> None:
    _check_target(target)
    if logits.ndim != 4 or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits must be [B, C, H, W] matching target [B, H, W]; got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    _check_target(target, logits.shape[1])


def task_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce", *, background: int = 0,
              eps: float = 1e-6) -> torch.Tensor:
    """The task loss of logits [B, C, H, W] against target [B, H, W]: ``"ce"``, cross-entropy averaged over
    every cell; ``"iou"``, the mean over grids of 1 - soft IoU (module docstring; softmax probabilities,
    ``(I + eps) / (U + eps)``).

    >>> logits = torch.zeros(1, 2, 8, 8)
    >>> round(float(task_loss(logits, torch.zeros(1, 8, 8, dtype=torch.long))), 4) == round(math.log(2), 4)
    True
    """
    _check_logits(logits, target)
    if kind == "ce":
        return F.cross_entropy(logits, target)
    if kind != "iou":
        raise ValueError(f"kind must be one of {TASK_LOSSES}; got {kind!r}")
    if not 0 <= background < logits.shape[1]:
        raise ValueError(f"background must be a colour in 0..{logits.shape[1] - 1}; got {background}")
    keep = [c for c in range(logits.shape[1]) if c != background]
    p = torch.softmax(logits, dim=1)[:, keep]
    t = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)[:, keep]
    inter = (p * t).sum(dim=(1, 2, 3))
    union = (p + t - p * t).sum(dim=(1, 2, 3))
    return (1 - (inter + eps) / (union + eps)).mean()


def _predicted(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _check_target(target)
    if pred.ndim == 4:
        _check_logits(pred, target)
        pred = pred.argmax(dim=1)
    if pred.shape != target.shape:
        raise ValueError(f"pred must be logits [B, C, H, W] or grids [B, H, W] matching target; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    return pred


def grid_accuracy(pred: torch.Tensor, target: torch.Tensor, *, per_grid: bool = False):
    """Fraction of grids predicted exactly (every cell right); ``pred`` is logits [B, C, H, W] (argmax taken) or
    grids [B, H, W]. ``per_grid=True``: a bool tensor [B] instead.

    >>> grid_accuracy(torch.tensor([[[1, 2]], [[1, 1]]]), torch.tensor([[[1, 2]], [[1, 2]]]))
    0.5
    """
    exact = (_predicted(pred, target) == target).flatten(1).all(dim=1)
    return exact if per_grid else float(exact.double().mean())


def grid_iou(pred: torch.Tensor, target: torch.Tensor, *, background: int = 0, per_grid: bool = False):
    """Hard IoU over non-background cells (module docstring), averaged over grids; ``pred`` as in
    :func:`grid_accuracy`. ``per_grid=True``: a float64 tensor [B] instead.

    >>> grid_iou(torch.tensor([[[1, 2, 0, 0]]]), torch.tensor([[[1, 0, 3, 0]]]))  # I = 1, U = 2 + 2 - 1
    0.3333333333333333
    """
    pred = _predicted(pred, target)
    fg_p, fg_t = pred != background, target != background
    inter = ((pred == target) & fg_t).flatten(1).sum(dim=1).double()
    union = fg_p.flatten(1).sum(dim=1) + fg_t.flatten(1).sum(dim=1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    return iou if per_grid else float(iou.mean())


class _TopProjection(torch.autograd.Function):
    """P = V_k^T V_k [G, d, d] from centred x [G, n, d] and its reduced SVD (u, s, vh), with the first-order
    gradient that involves only the gaps between the top k and the other eigenvalues of x^T x (lambda = s^2):
    dL/dC = sym(sum_{i<=k<j} v_j v_i^T (v_i^T (gP + gP^T) v_j) / (lambda_i - lambda_j)), C = x^T x, the j running
    over the other singular vectors and the null space (lambda = 0); then dL/dx = 2 x dL/dC. Finite for a
    positive gap at k, unlike torch's SVD backward, which divides by every gap (NaN for repeated zeros)."""

    @staticmethod
    def forward(ctx, x, k, u, s, vh):
        ctx.k = k
        ctx.save_for_backward(x, u, s, vh)
        top = vh[:, :k]
        return top.transpose(1, 2) @ top

    @staticmethod
    def backward(ctx, gp):
        x, u, s, vh = ctx.saved_tensors
        k, lam = ctx.k, s ** 2
        top, rest = vh[:, :k], vh[:, k:]
        a = top @ (gp + gp.transpose(1, 2))  # [G, k, d]: rows v_i^T (gP + gP^T)
        f = (a @ rest.transpose(1, 2)) / (lam[:, :k, None] - lam[:, None, k:])  # [G, k, m - k]
        outside = a - (a @ vh.transpose(1, 2)) @ vh  # the part in the null space of x
        r = f @ rest + outside / lam[:, :k, None]  # [G, k, d]: rows sum_j c_ij v_j
        gx = (x @ r.transpose(1, 2)) @ top + (u[:, :, :k] * s[:, None, :k]) @ r
        return gx, None, None, None, None


def _svd(x: torch.Tensor):
    with torch.no_grad():
        return torch.linalg.svd(x.detach(), full_matrices=False)


def top_k_projection(x: torch.Tensor, k: int) -> torch.Tensor:
    """The projection U U^T [d, d] onto the top-k principal axes of the rows of x [n, d] (centred here), or
    [G, d, d] for a batch [G, n, d] taken as already centred (rows of zeros are padding: they change nothing).
    Differentiable; the gradient needs a gap between the k-th and (k+1)-th singular values.

    >>> p = top_k_projection(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.1], [0.0, -0.1]]), 1)
    >>> p.round(decimals=4).abs().tolist()
    [[1.0, 0.0], [0.0, 0.0]]
    """
    single = x.ndim == 2
    if single:
        x = (x - x.mean(dim=0))[None]
    if x.ndim != 3 or not 1 <= k < x.shape[-1]:
        raise ValueError(f"x must be [n, d] or [G, n, d] and k in 1..d-1; got shape {tuple(x.shape)}, k = {k}")
    u, s, vh = _svd(x)
    p = _TopProjection.apply(x, k, u, s, vh)
    return p[0] if single else p


def projection_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """||P - Q||_F^2 over the last two dimensions (2k - 2 ||U^T V||_F^2 for rank-k projections).

    >>> float(projection_distance(torch.diag(torch.tensor([1.0, 0.0])), torch.diag(torch.tensor([0.0, 1.0]))))
    2.0
    """
    return ((p - q) ** 2).sum(dim=(-2, -1))


def _pairwise_distances(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[G, M] of ||p_a - q_b||_F^2 for p [G, d, d] and q [M, d, d], as |p_a|^2 + |q_b|^2 - 2 <p_a, q_b> (one
    matmul, instead of G * M difference matrices)."""
    pf, qf = p.flatten(1), q.flatten(1)
    return (pf * pf).sum(dim=1)[:, None] + (qf * qf).sum(dim=1)[None, :] - 2 * pf @ qf.T


class ProjectionEMA:
    """An exponential moving average of each group's projection, keyed by the group's label (a string):
    ``E <- momentum * E + (1 - momentum) * P``, the first P taken as is. ``state_dict()`` is a dict of tensors.

    >>> ema = ProjectionEMA(momentum=0.5)
    >>> ema.update("01", torch.ones(2, 2)); ema.update("01", torch.zeros(2, 2)); ema["01"].tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """

    def __init__(self, momentum: float = 0.9):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        self.momentum = float(momentum)
        self.projections: dict[str, torch.Tensor] = {}

    def update(self, key: str, p: torch.Tensor) -> None:
        p = p.detach()
        old = self.projections.get(key)
        self.projections[key] = p.clone() if old is None else self.momentum * old + (1 - self.momentum) * p

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.projections[key]

    def __len__(self) -> int:
        return len(self.projections)

    def keys(self) -> list[str]:
        return list(self.projections)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.projections)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.projections = {k: v.detach().clone() for k, v in state.items()}


@dataclass
class SharingLoss:
    """The regulariser's value (a 0-dim tensor) and what went into it."""

    loss: torch.Tensor
    n_groups: int  # groups whose projection entered the loss
    n_small: int  # groups skipped for having fewer than min_group samples
    n_unstable: int  # groups skipped for a near-zero gap at k (or no variance)
    n_pairs: int  # distances averaged
    keys: list[str]  # labels of the groups used, in order


def _group_ids(groups, n: int) -> tuple[torch.Tensor, list[str]]:
    """Group index per row [n] and each group's key: an integer id, or the bits of a multi-hot row."""
    g = torch.as_tensor(groups)
    if g.shape[0] != n or g.ndim not in (1, 2):
        raise ValueError(f"groups must be ids [B] or multi-hot labels [B, P] with B = {n}; got {tuple(g.shape)}")
    if g.ndim == 2:
        if not ((g == 0) | (g == 1)).all():
            raise ValueError("multi-hot groups must hold only 0 and 1")
        uniq, ids = torch.unique(g.long(), dim=0, return_inverse=True)
        return ids, ["".join(str(int(v)) for v in row) for row in uniq]
    if g.dtype.is_floating_point or g.dtype == torch.bool:
        raise ValueError(f"group ids must be integers; got {g.dtype}")
    uniq, ids = torch.unique(g, return_inverse=True)
    return ids, [str(int(v)) for v in uniq]


def sharing_loss(h: torch.Tensor, groups, k: int, *, detach: bool = False, ema: ProjectionEMA | None = None,
                 min_group: int = 2, eps: float = 1e-3) -> SharingLoss:
    """Mean pairwise ||P_a - P_b||_F^2 between the groups' top-k PCA projections of h [B, d].

    Groups: rows with the same id (``groups`` [B] ints) or the same multi-hot label ([B, P]). A group with fewer
    than ``min_group`` rows is skipped (``n_small``); so is one whose PCA is unstable, a relative eigen-gap
    ``(s_k^2 - s_{k+1}^2) / s_1^2 < eps`` (``n_unstable``; a group of n rows has n - 1 axes, so n <= k is
    unstable). One batched SVD of the centred groups [G, n_max, d], zero-padded. Distances: without ``ema``,
    over unordered pairs of this batch's groups, gradients through both; with ``detach``, over ordered pairs
    with the second side detached (same value, each group pulled towards the others as they stand: half the
    gradient). With ``ema``, from each group to the EMA projection of every other label seen so far (a
    constant), and the EMA is then updated with this batch's projections. Fewer than one pair: loss 0 (still
    connected to h).

    >>> h = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    >>> out = sharing_loss(h, torch.tensor([0, 0, 0, 0, 1, 1, 1, 7]), k=1)
    >>> out.n_groups, out.n_small, out.n_pairs, out.keys
    (2, 1, 1, ['0', '1'])
    """
    if not isinstance(h, torch.Tensor) or h.ndim != 2 or not h.dtype.is_floating_point:
        raise ValueError(f"h must be a float tensor [B, d]; got shape {tuple(getattr(h, 'shape', ()))}")
    if not isinstance(k, int) or not 1 <= k < h.shape[1]:
        raise ValueError(f"k must be an integer in 1..{h.shape[1] - 1} (d = {h.shape[1]}); got {k!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (the smallest relative eigen-gap at k); got {eps}")
    if min_group < 2:
        raise ValueError(f"min_group must be >= 2 (a group's PCA needs two rows); got {min_group}")
    ids, keys = _group_ids(groups, h.shape[0])
    counts = torch.bincount(ids, minlength=len(keys))
    big = [g for g in range(len(keys)) if counts[g] >= min_group]
    n_small = len(keys) - len(big)
    used, p = [], h.new_zeros(0, h.shape[1], h.shape[1])
    n_unstable = 0
    if big:
        n_max = int(counts[big].max())
        x = torch.stack([F.pad(rows - rows.mean(dim=0), (0, 0, 0, n_max - len(rows)))
                         for rows in (h[ids == g] for g in big)])  # [G, n_max, d]
        u, s, vh = _svd(x)
        lam = torch.cat([s ** 2, s.new_zeros(len(big), k + 1)], dim=1)  # zeros beyond the rank
        stable = (lam[:, 0] > 0) & ((lam[:, k - 1] - lam[:, k]) >= eps * lam[:, 0])
        n_unstable = int((~stable).sum())
        used = [keys[big[i]] for i in range(len(big)) if stable[i]]
        if used:
            p = _TopProjection.apply(x[stable], k, u[stable], s[stable], vh[stable])
    zero = h.sum() * 0.0
    if ema is not None:
        others = ema.keys()
        pairs = [(a, b) for a in range(len(used)) for b in range(len(others)) if used[a] != others[b]]
        loss = zero
        if pairs:
            targets = torch.stack([ema[key].to(p) for key in others])
            dist = _pairwise_distances(p, targets)  # [G, M]
            a, b = zip(*pairs)
            loss = dist[list(a), list(b)].mean()
        for key, proj in zip(used, p):
            ema.update(key, proj)
        return SharingLoss(loss, len(used), n_small, n_unstable, len(pairs), used)
    g = len(used)
    if g < 2:
        return SharingLoss(zero, g, n_small, n_unstable, 0, used)
    if detach:
        off = ~torch.eye(g, dtype=torch.bool)
        return SharingLoss(_pairwise_distances(p, p.detach())[off].mean(), g, n_small, n_unstable, g * (g - 1), used)
    a, b = torch.triu_indices(g, g, offset=1)
    return SharingLoss(_pairwise_distances(p, p)[a, b].mean(), g, n_small, n_unstable, len(a), used)


def schedule(step: int, start: int, end: int, kind: str = "linear") -> float:
    """A weight factor in [0, 1] at ``step``: ``"constant"`` 1; ``"step"`` 0 before ``start``, then 1;
    ``"linear"`` / ``"cosine"`` 0 up to ``start``, rising (linearly / as a half cosine) to 1 at ``end``, then 1.
    Multiply alpha, beta or gamma by it.

    >>> [schedule(s, 10, 20) for s in (0, 10, 15, 20, 30)]
    [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    if kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {SCHEDULES}; got {kind!r}")
    if not 0 <= start <= end:
        raise ValueError(f"need 0 <= start <= end; got start = {start}, end = {end}")
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    if kind == "constant":
        return 1.0
    if kind == "step" or end == start:
        return float(step >= start)
    t = min(1.0, max(0.0, (step - start) / (end - start)))
    return t if kind == "linear" else 0.5 * (1 - math.cos(math.pi * t))
