"""A sparse autoencoder on the bottleneck h: ReLU codes, unit-norm decoder directions, loss MSE + l1 * |z|_1,
an L1 weight scheduler towards a target activity, health metrics (variance explained, dead units, mean L0) and
the recovery of known directions (for planted data).

Definitions: ``z = ReLU(W_enc (x - b_dec) + b_enc)`` [n, k]; ``recon = z D + b_dec`` where the rows of D [k, d_in]
are unit vectors (the decoder weight's rows, or with ``tied=True`` the encoder weight's rows, divided by their
norms, so the L1 term cannot be dodged by shrinking z and growing D); MSE is the mean over all n * d_in entries;
the L1 term is the mean over samples of ``sum_j |z_j|``; L0 is the mean over samples of the count of ``z_j > 0``.

>>> sae = SparseAutoencoder(d_in=4, k=6, seed=0)
>>> recon, z = sae(torch.randn(5, 4))
>>> tuple(recon.shape), tuple(z.shape), bool((z >= 0).all())
((5, 4), (5, 6), True)
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SparseAutoencoder", "SAELoss", "sae_loss", "L1Scheduler", "variance_explained", "dead_units", "mean_l0",
           "SAEHealth", "sae_health", "train_sae", "direction_recovery"]


class SparseAutoencoder(nn.Module):
    """x [n, d_in] -> (recon [n, d_in], z [n, k]); parameters drawn from a torch.Generator seeded with ``seed``.

    >>> SparseAutoencoder(d_in=3, k=2, tied=True).directions().norm(dim=1).round(decimals=6).tolist()
    [1.0, 1.0]
    """

    def __init__(self, d_in: int = 128, k: int = 512, tied: bool = False, *, seed: int = 0):
        super().__init__()
        for name, v in (("d_in", d_in), ("k", k)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        self.d_in, self.k, self.tied = d_in, k, tied
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(k, d_in, generator=g) / math.sqrt(d_in)
        self.w_enc = nn.Parameter(w)  # [k, d_in]
        self.b_enc = nn.Parameter(torch.zeros(k))
        self.w_dec = None if tied else nn.Parameter(w.clone())  # [k, d_in], rows normalised in use
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def directions(self) -> torch.Tensor:
        """The unit decoder directions D [k, d_in] (one row per unit)."""
        w = self.w_enc if self.tied else self.w_dec
        return F.normalize(w, dim=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The codes z [n, k] of x [n, d_in]."""
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x must have shape [n, {self.d_in}]; input shape: {tuple(x.shape)}")
        return F.relu((x - self.b_dec) @ self.w_enc.T + self.b_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The reconstruction [n, d_in] of codes z [n, k]."""
        return z @ self.directions() + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z


@dataclass
class SAELoss:
    """``total = mse + l1_weight * l1`` (tensors, for backward) and the activity of the codes."""

    total: torch.Tensor
    mse: torch.Tensor
    l1: torch.Tensor  # mean over samples of sum_j |z_j|
    l0: float  # mean over samples of the count of active units


def sae_loss(x: torch.Tensor, recon: torch.Tensor, z: torch.Tensor, l1_weight: float) -> SAELoss:
    """MSE (mean over entries) + ``l1_weight`` * (mean over samples of |z|_1).

    >>> out = sae_loss(torch.ones(2, 2), torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [3.0, 2.0]]), 0.1)
    >>> round(float(out.total), 6), float(out.mse), float(out.l1), out.l0
    (1.3, 1.0, 3.0, 1.5)
    """
    if l1_weight < 0:
        raise ValueError(f"l1_weight must be >= 0; got {l1_weight}")
    if x.shape != recon.shape:
        raise ValueError(f"x and recon must have the same shape; got {tuple(x.shape)} and {tuple(recon.shape)}")
    mse = ((x - recon) ** 2).mean()
    l1 = z.abs().sum(dim=1).mean()
    return SAELoss(total=mse + l1_weight * l1, mse=mse, l1=l1, l0=mean_l0(z))


class L1Scheduler:
    """Moves the L1 weight towards a target activity: after each batch of codes, ``weight *= exp(rate * (a -
    target) / target)`` clipped to [min_weight, max_weight], where ``a`` is the fraction of active units
    (``measure="fraction"``) or the mean L0 (``measure="l0"``). Too active -> a larger weight; too sparse -> smaller.

    >>> s = L1Scheduler(target=0.1, weight=1.0, rate=0.5)
    >>> s.step(torch.tensor([[1.0, 0.0, 0.0, 0.0]])) > 1.0  # 25% active: above the target, the weight grows
    True
    """

    MEASURES = ("fraction", "l0")

    def __init__(self, target: float, *, weight: float = 1e-3, rate: float = 0.05, min_weight: float = 1e-8,
                 max_weight: float = 1e3, measure: str = "fraction"):
        if measure not in self.MEASURES:
            raise ValueError(f"measure must be one of {self.MEASURES}; got {measure!r}")
        if not target > 0 or (measure == "fraction" and target > 1):
            raise ValueError(f"target must be in (0, 1] for a fraction, > 0 for an L0; got {target}")
        if not 0 < min_weight <= weight <= max_weight:
            raise ValueError(f"need 0 < min_weight <= weight <= max_weight; got {min_weight}, {weight}, {max_weight}")
        if not rate > 0:
            raise ValueError(f"rate must be > 0; got {rate}")
        self.target, self.weight, self.rate, self.measure = float(target), float(weight), float(rate), measure
        self.min_weight, self.max_weight = float(min_weight), float(max_weight)

    def activity(self, z: torch.Tensor) -> float:
        """The measured activity of codes z [n, k]."""
        l0 = mean_l0(z)
        return l0 / z.shape[1] if self.measure == "fraction" else l0

    def step(self, z: torch.Tensor) -> float:
        """Update the weight from codes z [n, k]; return the new weight."""
        a = self.activity(z)
        self.weight = min(self.max_weight, max(self.min_weight,
                                               self.weight * math.exp(self.rate * (a - self.target) / self.target)))
        return self.weight

    def state_dict(self) -> dict:
        """Plain numbers to save and resume from."""
        return {"weight": self.weight, "target": self.target, "rate": self.rate, "measure": self.measure}

    def load_state_dict(self, state: dict) -> None:
        self.weight = float(state["weight"])


def variance_explained(x: torch.Tensor, recon: torch.Tensor) -> float:
    """1 - SSE / SST with SSE = sum (x - recon)^2 and SST = sum (x - column mean of x)^2, over all entries.

    >>> variance_explained(torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [1.0]]))
    0.5
    """
    if x.shape != recon.shape or x.ndim != 2:
        raise ValueError(f"x and recon must be [n, d] of one shape; got {tuple(x.shape)} and {tuple(recon.shape)}")
    x, recon = x.detach().double(), recon.detach().double()
    sst = ((x - x.mean(dim=0)) ** 2).sum()
    if sst == 0:
        raise ValueError("x has no variance (every row equal); variance explained is undefined")
    return float(1 - ((x - recon) ** 2).sum() / sst)


def dead_units(codes: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """Bool [k]: units never active (z > 0) in codes [n, k] or in any of an iterable of such batches.

    >>> dead_units([torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, 2.0]])]).tolist()
    [True, False, False]
    """
    batches = [codes] if isinstance(codes, torch.Tensor) else list(codes)
    if not batches:
        raise ValueError("dead_units needs at least one batch of codes [n, k]")
    active = torch.zeros(batches[0].shape[-1], dtype=torch.bool)
    for z in batches:
        active |= (z.detach() > 0).any(dim=0).cpu()
    return ~active


def mean_l0(z: torch.Tensor) -> float:
    """Mean over samples of the number of active units (z > 0) in codes z [n, k].

    >>> mean_l0(torch.tensor([[1.0, 0.0], [2.0, 3.0]]))
    1.5
    """
    return float((z.detach() > 0).sum(dim=1).double().mean())


@dataclass(frozen=True)
class SAEHealth:
    variance_explained: float
    n_dead: int
    dead_fraction: float
    mean_l0: float


@torch.no_grad()
def sae_health(sae: SparseAutoencoder, x: torch.Tensor, *, batch_size: int = 1024) -> SAEHealth:
    """Variance explained, dead units and mean L0 of ``sae`` on x [n, d_in] (read in batches).

    >>> x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    >>> sae_health(SparseAutoencoder(d_in=2, k=3), x).n_dead <= 3
    True
    """
    recon, codes = zip(*(sae(x[i:i + batch_size]) for i in range(0, len(x), batch_size)))
    dead = dead_units(codes)
    return SAEHealth(variance_explained=variance_explained(x, torch.cat(recon)), n_dead=int(dead.sum()),
                     dead_fraction=float(dead.double().mean()), mean_l0=mean_l0(torch.cat(codes)))


def train_sae(sae: SparseAutoencoder, x: torch.Tensor, *, steps: int, batch_size: int = 256, lr: float = 1e-3,
              l1_weight: float = 1e-3, scheduler: L1Scheduler | None = None, seed: int = 0) -> list[dict]:
    """Train ``sae`` on rows of x [n, d_in] with Adam for ``steps`` batches drawn by a torch.Generator seeded with
    ``seed``; the L1 weight is ``l1_weight``, or the scheduler's (updated after each step). Returns one dict per
    step: mse, l1 (the term), l1_weight, l0.

    >>> x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    >>> hist = train_sae(SparseAutoencoder(d_in=2, k=2), x, steps=2, batch_size=4)
    >>> sorted(hist[0])
    ['l0', 'l1', 'l1_weight', 'mse']
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1; got {steps}, {batch_size}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        batch = x[torch.randint(len(x), (min(batch_size, len(x)),), generator=g)]
        weight = scheduler.weight if scheduler is not None else l1_weight
        recon, z = sae(batch)
        loss = sae_loss(batch, recon, z, weight)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step(z)
        history.append({"mse": loss.mse.item(), "l1": loss.l1.item(), "l1_weight": weight, "l0": loss.l0})
    return history


def direction_recovery(directions: torch.Tensor, planted: torch.Tensor) -> torch.Tensor:
    """For each planted direction (rows of planted [m, d]), the largest signed cosine with any row of
    directions [k, d] (e.g. ``sae.directions()``): [m] in [-1, 1].

    >>> direction_recovery(torch.eye(3), torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])).tolist()
    [1.0, 0.7071067690849304]
    """
    if directions.ndim != 2 or planted.ndim != 2 or directions.shape[1] != planted.shape[1]:
        raise ValueError(f"directions [k, d] and planted [m, d] must share d; got {tuple(directions.shape)} "
                         f"and {tuple(planted.shape)}")
    return (F.normalize(planted.detach(), dim=1) @ F.normalize(directions.detach(), dim=1).T).max(dim=1).values
