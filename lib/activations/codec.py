"""The float16 codec of activation stores: each row of each hook and layer is stored as ``x * 2**-k``.

``k >= 0`` is a power-of-two exponent per (row, layer) that keeps the row inside float16's range
(Gemma 3's residual stream reaches 1e5, beyond float16's 65504), so values keep float16's relative
precision; scaling by a power of two is exact. Decoding returns float32.

>>> x = torch.tensor([[[1.5, -2.0]], [[98304.0, 3.0]]])  # [rows, layers, d]; 98304 > 65504
>>> exp = row_exponents(x)
>>> exp.tolist()
[[0], [3]]
>>> decode_f16(to_store(x, exp), exp).tolist()
[[[1.5, -2.0]], [[98304.0, 3.0]]]
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["fits_f16", "row_exponents", "to_store", "encode_f16", "decode_f16", "relative_error"]

_F16_MAX_EXP = 15  # scale rows so that max |x| < 2**15 = 32768 < 65504
_F16_INF = 65520.0  # float32 values at or beyond this magnitude round to inf in float16


def fits_f16(x: torch.Tensor) -> bool:
    """Whether every value of ``x`` is finite and casts to a finite float16 (one pass).

    >>> fits_f16(torch.tensor([65504.0])), fits_f16(torch.tensor([1e5]))
    (True, False)
    """
    lo, hi = torch.aminmax(x)
    return bool((lo > -_F16_INF) & (hi < _F16_INF))  # False for NaN too


def row_exponents(act: torch.Tensor) -> torch.Tensor:
    """int8 [b, layers]: k >= 0 with max |x| * 2**-k < 2**15 per row and layer (padding is zero)."""
    lo, hi = torch.aminmax(act.flatten(2), dim=2)
    peak = torch.maximum(hi, -lo)
    exp = torch.ceil(torch.log2(peak.clamp(min=1.0))) - _F16_MAX_EXP + 1
    return exp.clamp(min=0).to(torch.int8)


def _scale_view(exp: torch.Tensor, ndim: int) -> torch.Tensor:
    """``exp`` as float32, with trailing axes of size 1 so it broadcasts against an ``ndim``-d array."""
    return exp.float().view(*exp.shape, *(1,) * (ndim - exp.ndim))


def to_store(x: torch.Tensor, exp: torch.Tensor | None) -> np.ndarray:
    """x [b, layers, ...] -> stored dtype on the CPU; float16 rows divided by 2**exp first (exact).

    ``exp`` None means a float32 store: ``x`` is returned as it is, as numpy.
    """
    if exp is None:
        return x.cpu().numpy()
    if exp.any():
        x = x * torch.exp2(-_scale_view(exp, x.ndim))
    return x.to(torch.float16).cpu().numpy()


def encode_f16(act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 of ``act`` [b, layers, ...] (padding zero) and the int8 exponents [b, layers], on its device.

    One cast in the common case; only (row, layer) pairs that overflow float16 get k > 0, so a
    row's stored bytes never depend on the other rows of its batch.
    """
    x16 = act.to(torch.float16)
    over = torch.isinf(x16).flatten(2).any(2)
    exp = torch.zeros(over.shape, dtype=torch.int8, device=act.device)
    if over.any():
        exp = torch.where(over, row_exponents(act), exp)
        x16 = (act * torch.exp2(-_scale_view(exp, act.ndim))).to(torch.float16)
    return x16, exp


def decode_f16(stored: np.ndarray | torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
    """float32 ``stored * 2**exp``: the values a float16 store holds, with ``exp`` one per leading index.

    ``stored`` [b, ...] or [b, layers, ...] (numpy or torch; never modified), ``exp`` int [b] or
    [b, layers]; the result is on ``stored``'s device. The one decoder: extraction measures its
    error with it and ``ActivationStore`` reads with it.
    """
    x = torch.from_numpy(stored) if isinstance(stored, np.ndarray) else stored
    x = x.to(torch.float32, copy=True)  # one float32 array: the scaling below is in place
    return x.mul_(torch.exp2(_scale_view(exp.to(x.device), x.ndim)))


def relative_error(stored, exp: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Largest ||stored - exact|| / ||exact|| over the real token vectors (a 0-d tensor, no sync)."""
    back = decode_f16(stored, exp)
    num = (back - act).flatten(3).norm(dim=-1)
    den = act.flatten(3).norm(dim=-1)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), 0.0).max()
