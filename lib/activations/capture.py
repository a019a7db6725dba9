"""Capture during the forward pass: hooks that reduce (and encode) each activation where it is computed,
and a hook that stops the forward after the last block asked for.

>>> import torch
>>> from lib.activations.plan import ExtractConfig
>>> cap = Capture({"hook_resid_post": [0]}, ExtractConfig(dtype="float32"))
>>> mask = torch.tensor([[True, True, False]])  # [b, pos]: one row, two real tokens
>>> cap.begin(mask, last=torch.tensor([1]), span=torch.tensor([[False, True, False]]), measure=False)
>>> cap.hook(torch.tensor([[[1.0], [3.0], [9.0]]]), None, site="hook_resid_post", li=0)  # [b, pos, d]
>>> got = cap.finish()["hook_resid_post"]
>>> {k: v.ravel().tolist() for k, v in got["reductions"].items()}, got["tokens"].ravel().tolist()
({'sentence_end': [3.0], 'mean': [2.0], 'span': [3.0]}, [1.0, 3.0, 0.0])
"""
from __future__ import annotations

import torch

from lib.activations.codec import encode_f16, fits_f16, relative_error, to_store
from lib.activations.plan import ExtractConfig, keeps_tokens
from lib.activations.store import REDUCTIONS

__all__ = ["Capture", "StopForward", "stop_forward_hook"]


class StopForward(Exception):
    """Raised by ``stop_forward_hook`` to end a forward pass early; the caller catches it."""


def stop_forward_hook(act, hook):
    """Stop the forward here (registered last at the last block asked for: no later block, no unembedding)."""
    raise StopForward


class Capture:
    """Hook state for one batch: each hook reduces its layer (and encodes its tokens) on the
    forward's device as the forward runs, so only what is stored is kept and moved off the device.

    Per site: ``red`` float32 [layers, b, 3, D] (sentence-end, mean, span; D = flattened shape),
    filled by one batched matmul per hook with weights [b, 3, pos] (a one-hot row at the last real
    token, the mean over real tokens, the mean over span tokens); for token sites ``tok``
    [b, layers, pos, *shape] in the stored dtype with padding zeroed, and for float16 ``exp`` int8
    [b, layers] (see ``encode_f16``). Each hook costs a few passes over its activation: the
    matmul, the cast, and for float16 one min/max that sends the rare rows beyond float16's range
    (or non-finite values) down the careful path.
    """

    def __init__(self, sites: dict[str, list[int]], config: ExtractConfig):
        self.n_layers = {site: len(layers) for site, layers in sites.items()}
        self.keep = {site: keeps_tokens(site, config) for site in sites}
        self.f16 = config.dtype == "float16"
        self.store_dtype = torch.float16 if self.f16 else torch.float32
        self.shapes: dict[str, tuple[int, ...]] = {}

    def begin(self, mask: torch.Tensor, last: torch.Tensor, span: torch.Tensor, measure: bool) -> None:
        """mask, span bool [b, pos]; last long [b]; all on the forward's device."""
        m, sp = mask.float(), span.float()
        self.pad = ~mask[:, :, None]
        self.span_n = sp.sum(1)
        onehot = torch.zeros_like(m)
        onehot[torch.arange(len(last), device=last.device), last] = 1.0
        self.weights = torch.stack([onehot, m / m.sum(1, keepdim=True), sp / self.span_n.clamp(min=1)[:, None]], 1)
        # padding zeroed by an AND on the stored bits (exact, and +0 even where the value is negative)
        self.padded = not bool(mask.all())
        bits = torch.int16 if self.f16 else torch.int32
        self.keep_bits = torch.where(mask, -1, 0).to(bits)[:, :, None]
        self.measure, self.worst = measure, []
        self.red, self.tok, self.exp = {}, {}, {}

    def hook(self, act, hook, *, site: str, li: int):
        """Forward hook of ``site`` at its ``li``-th stored layer: act [b, pos, *shape]; returns None."""
        b, p = act.shape[:2]
        self.shapes.setdefault(site, tuple(act.shape[2:]))
        flat = act.reshape(b, p, -1)
        flat = flat if flat.dtype == torch.float32 else flat.float()
        red = self.red.get(site)
        if red is None:
            red = self.red[site] = torch.empty((self.n_layers[site], b, 3, flat.shape[-1]), device=act.device)
        # padding rows get weight 0; they are finite (right padding: padding positions attend to real tokens)
        torch.bmm(self.weights, flat, out=red[li])
        if self.keep[site]:
            self._keep_tokens(act, flat, site, li)

    def _keep_tokens(self, act, flat, site: str, li: int) -> None:
        """Every token of ``flat`` [b, pos, D] into ``tok``, in the stored dtype, padding zeroed."""
        b, p = flat.shape[:2]
        dst = self.tok.get(site)
        if dst is None:
            dst = self.tok[site] = torch.empty((b, self.n_layers[site], p, *act.shape[2:]), device=act.device,
                                               dtype=self.store_dtype)
            if self.f16:
                self.exp[site] = torch.zeros((b, self.n_layers[site]), dtype=torch.int8, device=act.device)
        out = dst[:, li].view(b, p, -1)
        careful = self.f16 and not fits_f16(flat)  # rare: beyond float16's range (or not finite)
        measure = self.measure and self.f16
        exact = torch.where(self.pad, 0.0, flat)[:, None] if careful or measure else None
        if careful:
            x16, exp = encode_f16(exact)
            out.copy_(x16[:, 0])
            self.exp[site][:, li] = exp[:, 0]
        else:
            out.copy_(flat)  # one pass: cast to the stored dtype
            if self.padded:
                bits = out.view(self.keep_bits.dtype)
                torch.bitwise_and(bits, self.keep_bits, out=bits)
        if measure:
            self.worst.append(relative_error(out[:, None], self.exp[site][:, li:li + 1], exact))

    def finish(self) -> dict[str, dict]:
        """Per site, on the CPU: the stored reductions (and tokens, exponents) of this batch."""
        out = {}
        for site, red in self.red.items():
            red = red.permute(1, 0, 2, 3)  # [b, layers, 3, D]
            exp = self.exp.get(site)
            if self.f16 and exp is None:  # reductions only: exponents from the reductions themselves
                exp = torch.zeros(red.shape[:2], dtype=torch.int8, device=red.device)
                if not fits_f16(red):
                    _, exp = encode_f16(red.nan_to_num(0.0))
            red[:, :, 2][self.span_n == 0] = torch.nan  # no span tokens in that row
            red = red.reshape(*red.shape[:3], *self.shapes[site])
            reds = {k: to_store(red[:, :, i], exp) for i, k in enumerate(REDUCTIONS)}
            out[site] = {"reductions": reds, "exp": None if exp is None else exp.cpu().numpy(),
                         "tokens": self.tok[site].cpu().numpy() if site in self.tok else None}
        return out

    def worst_relative_error(self) -> float:
        """The largest float16 relative error measured in this batch (0.0 if none was measured)."""
        return max((float(w) for w in self.worst), default=0.0)
