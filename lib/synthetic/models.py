"""Grid models for the synthetic tasks: a Conv2d patch embedding of the one-hot grid, an encoder behind one
interface (a small pre-norm Transformer with hand-written attention, or a GRU), a mean-pooled bottleneck ``h``,
a decoder back to per-cell colour logits and an auxiliary multi-label primitive head; LoRA through peft.

The model is told which composition to apply by its ``program`` (``lib.synthetic.tasks.program``: the primitive
ids in order, padded with ``PAD = n_primitives``): ``ProgramEmbedding`` turns it into ``program_length`` tokens
(an id embedding whose PAD row is zero, plus a position embedding of its own) that the Transformer reads after
the grid tokens and the GRU before them (so the grid is read knowing the program). ``program=None``: grid
tokens only. The bottleneck reads the encoder's grid tokens (which have attended to, or followed, the program):
flattened (``pool='flatten'``, the default, which keeps where things are) or averaged (``pool='mean'``).

Shapes: grids ``[B, 8, 8]`` long colour indices in ``0..C-1``; programs ``[B, program_length]`` long ids in
``0..n_primitives``; tokens ``[B, T, d_model]`` with ``T = (8 / patch) ** 2`` (+ ``program_length`` with a
program); ``h`` ``[B, d_bottleneck]``; logits ``[B, C, 8, 8]``; primitive logits ``[B, P]``.

>>> model = GridModel(ModelConfig(n_primitives=5, d_model=16, n_layers=1, n_heads=2, d_bottleneck=8))
>>> out = model(torch.zeros(3, 8, 8, dtype=torch.long), torch.tensor([[0, 4, 5]] * 3))
>>> tuple(out.logits.shape), tuple(out.h.shape), tuple(out["primitive_logits"].shape)
((3, 6, 8, 8), (3, 8), (3, 5))
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GRID", "ENCODERS", "DECODERS", "DEFAULT_LORA_TARGETS", "ModelConfig", "GridOutput", "PatchEmbedding",
           "ProgramEmbedding", "Attention", "Encoder", "TransformerEncoder", "GRUEncoder", "GridModel",
           "one_hot_grids", "check_grids", "check_programs", "add_lora"]

GRID = 8  # grid side: every grid is GRID x GRID cells
ENCODERS = ("transformer", "gru")
POOLS = ("flatten", "mean")  # how the encoder's grid tokens become h's input
DECODERS = ("deconv", "mlp")
DEFAULT_LORA_TARGETS = ("bottleneck", "decoder.expand")  # the nn.Linear layers on either side of h


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """One grid model. ``bottleneck_rank``: None, or r (1 <= r < d_bottleneck) to limit h to a fixed random
    r-dimensional subspace (the matched effective-rank control); ``seed`` draws that subspace;
    ``program_length``: the tokens of a program (``lib.synthetic.tasks.MAX_LENGTH``).

    >>> ModelConfig(n_primitives=4).tokens
    16
    """

    n_primitives: int
    encoder: str = "transformer"
    n_colours: int = 6
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    patch: int = 2
    d_bottleneck: int = 128
    decoder: str = "deconv"
    bottleneck_rank: int | None = None
    seed: int = 0
    program_length: int = 3
    pool: str = "flatten"

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}; got {self.encoder!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}; got {self.pool!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}; got {self.decoder!r}")
        for name in ("n_primitives", "d_model", "n_layers", "n_heads", "d_bottleneck", "program_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if not isinstance(self.n_colours, int) or self.n_colours < 2:
            raise ValueError(f"n_colours must be an integer >= 2; got {self.n_colours!r}")
        if self.patch not in [p for p in range(1, GRID + 1) if GRID % p == 0]:
            raise ValueError(f"patch must divide the grid side {GRID} (1, 2, 4 or 8); got {self.patch!r}")
        if self.encoder == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        r = self.bottleneck_rank
        if r is not None and (not isinstance(r, int) or not 1 <= r < self.d_bottleneck):
            raise ValueError(f"bottleneck_rank must be None or an integer in [1, {self.d_bottleneck - 1}]; got {r!r}")

    @property
    def side(self) -> int:
        """Tokens per grid side (``8 / patch``)."""
        return GRID // self.patch

    @property
    def tokens(self) -> int:
        """Tokens per grid, ``(8 / patch) ** 2``."""
        return self.side ** 2


@dataclass
class GridOutput:
    """What a grid model returns; also readable as a mapping (``out["h"]``)."""

    logits: torch.Tensor  # [B, C, 8, 8] per-cell colour logits of the output grid
    h: torch.Tensor  # [B, d_bottleneck] the bottleneck
    primitive_logits: torch.Tensor  # [B, P] the auxiliary multi-label head

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in ("logits", "h", "primitive_logits"):
            raise KeyError(f"GridOutput has logits, h and primitive_logits; got {key!r}")
        return getattr(self, key)


def check_grids(grids: torch.Tensor, n_colours: int, name: str = "grids") -> None:
    """Raise ValueError unless ``grids`` is a long tensor [B, 8, 8] of colours in ``0..n_colours-1``.

    >>> check_grids(torch.zeros(2, 8, 8, dtype=torch.long), 6)
    """
    if not isinstance(grids, torch.Tensor) or grids.dtype != torch.long:
        raise ValueError(f"{name} must be a torch.long tensor; got {getattr(grids, 'dtype', type(grids))}")
    if grids.ndim != 3 or tuple(grids.shape[1:]) != (GRID, GRID):
        raise ValueError(f"{name} must have shape [B, {GRID}, {GRID}]; input shape: {tuple(grids.shape)}")
    if grids.numel() and (grids.min() < 0 or grids.max() >= n_colours):
        raise ValueError(f"{name} colours must lie in 0..{n_colours - 1}; "
                         f"got values in {int(grids.min())}..{int(grids.max())}")


def check_programs(program: torch.Tensor, n: int, config: ModelConfig) -> None:
    """Raise ValueError unless ``program`` is a long tensor [n, program_length] of ids in ``0..n_primitives``
    (``n_primitives`` is the padding id).

    >>> check_programs(torch.tensor([[0, 1, 2]]), 1, ModelConfig(n_primitives=2))
    """
    if not isinstance(program, torch.Tensor) or program.dtype != torch.long:
        raise ValueError(f"program must be a torch.long tensor; got {getattr(program, 'dtype', type(program))}")
    if program.ndim != 2 or tuple(program.shape) != (n, config.program_length):
        raise ValueError(f"program must have shape [B, program_length] = [{n}, {config.program_length}] for "
                         f"{n} grids; input shape: {tuple(program.shape)}")
    if program.numel() and (program.min() < 0 or program.max() > config.n_primitives):
        raise ValueError(f"program ids must lie in 0..{config.n_primitives} ({config.n_primitives} pads); got "
                         f"values in {int(program.min())}..{int(program.max())}")


def one_hot_grids(grids: torch.Tensor, n_colours: int) -> torch.Tensor:
    """Long grids [B, 8, 8] -> float one-hot [B, C, 8, 8].

    >>> one_hot_grids(torch.tensor([[[1] * 8] * 8]), 3)[0, :, 0, 0].tolist()
    [0.0, 1.0, 0.0]
    """
    return F.one_hot(grids, n_colours).permute(0, 3, 1, 2).float()


class PatchEmbedding(nn.Module):
    """One-hot grid [B, C, 8, 8] -> tokens [B, (8/patch)^2, d_model]: a Conv2d with stride = kernel = patch,
    raster order, plus learned positions."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.conv = nn.Conv2d(config.n_colours, config.d_model, kernel_size=config.patch, stride=config.patch)
        self.positions = nn.Parameter(0.02 * torch.randn(config.tokens, config.d_model))

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        return self.conv(one_hot).flatten(2).transpose(1, 2) + self.positions  # [B, T, d_model]


class ProgramEmbedding(nn.Module):
    """Program ids [B, L] -> tokens [B, L, d_model]: ``nn.Embedding(n_primitives + 1, d_model,
    padding_idx=n_primitives)`` (the PAD row stays zero) plus learned program positions."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ids = nn.Embedding(config.n_primitives + 1, config.d_model, padding_idx=config.n_primitives)
        self.positions = nn.Parameter(0.02 * torch.randn(config.program_length, config.d_model))

    def forward(self, program: torch.Tensor) -> torch.Tensor:
        return self.ids(program) + self.positions  # [B, L, d_model]


class Attention(nn.Module):
    """Multi-head self-attention written by hand (no causal mask) with nn.Linear ``q_proj``, ``k_proj``,
    ``v_proj``, ``o_proj`` so that peft LoRA can target them."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.o_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of ``x`` [B, T, d_model], each [B, n_heads, T, d_head]."""
        split = lambda t: t.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)  # noqa: E731
        return split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)
        pattern = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_head), dim=-1)  # [B, H, T, T]
        z = pattern @ v  # [B, H, T, d_head]
        return self.o_proj(z.transpose(1, 2).flatten(2))


class Encoder(nn.Module):
    """The one encoder interface: ``forward(tokens [B, T, d]) -> [B, T, d]``; ``layers(tokens)`` gives every
    layer's output (the last equals ``forward``), for layer-wise analysis."""

    def layers(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens)[-1]


class _Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln_attn, self.attn = nn.LayerNorm(d_model), Attention(d_model, n_heads)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class TransformerEncoder(Encoder):
    """``n_layers`` pre-norm blocks; a final LayerNorm on the last layer's output."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(config.d_model, config.n_heads) for _ in range(config.n_layers))
        self.ln_final = nn.LayerNorm(config.d_model)

    def layers(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], tokens
        for block in self.blocks:
            x = block(x)
            out.append(x)
        out[-1] = self.ln_final(out[-1])
        return out


class GRUEncoder(Encoder):
    """``n_layers`` stacked single-layer GRUs over the tokens in raster order (kept apart to expose each layer)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.grus = nn.ModuleList(nn.GRU(config.d_model, config.d_model, batch_first=True)
                                  for _ in range(config.n_layers))

    def layers(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        out, x = [], tokens
        for gru in self.grus:
            x = gru(x)[0]
            out.append(x)
        return out


class _DeconvDecoder(nn.Module):
    """h -> Linear ``expand`` to [d_model, 8/patch, 8/patch] -> ConvTranspose2d (stride = patch) -> 1x1 conv."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.side, self.d = config.side, config.d_model
        self.expand = nn.Linear(config.d_bottleneck, config.d_model * config.tokens)
        self.up = nn.ConvTranspose2d(config.d_model, config.d_model, kernel_size=config.patch, stride=config.patch)
        self.out = nn.Conv2d(config.d_model, config.n_colours, kernel_size=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.expand(h)).unflatten(1, (self.d, self.side, self.side))
        return self.out(F.gelu(self.up(x)))


class _MLPDecoder(nn.Module):
    """h -> Linear ``expand`` -> GELU -> Linear ``out`` to C * 8 * 8 logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c = config.n_colours
        self.expand = nn.Linear(config.d_bottleneck, 4 * config.d_model)
        self.out = nn.Linear(4 * config.d_model, config.n_colours * GRID * GRID)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.expand(h))).unflatten(1, (self.c, GRID, GRID))


class GridModel(nn.Module):
    """Patch (and program) embedding -> encoder -> grid tokens flattened (or averaged) -> Linear ``bottleneck`` (h)
    -> decoder and primitive head.

    Parameters are drawn from ``torch.manual_seed(seed)`` inside a forked RNG (the global RNG is left as it was);
    the matched-rank subspace, a fixed buffer ``rank_basis`` [d_bottleneck, r], comes from ``config.seed``.

    >>> a = GridModel(ModelConfig(n_primitives=2, d_model=8, n_layers=1, n_heads=2), seed=3)
    >>> b = GridModel(ModelConfig(n_primitives=2, d_model=8, n_layers=1, n_heads=2), seed=3)
    >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    True
    """

    def __init__(self, config: ModelConfig, *, seed: int = 0):
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = PatchEmbedding(config)
            self.encoder = TransformerEncoder(config) if config.encoder == "transformer" else GRUEncoder(config)
            pooled = config.d_model * (config.tokens if config.pool == "flatten" else 1)
            self.bottleneck = nn.Linear(pooled, config.d_bottleneck)
            self.decoder = _DeconvDecoder(config) if config.decoder == "deconv" else _MLPDecoder(config)
            self.primitive_head = nn.Linear(config.d_bottleneck, config.n_primitives)
            self.program_embed = ProgramEmbedding(config)  # drawn last: the other weights are as without it
        if config.bottleneck_rank is not None:
            g = torch.Generator().manual_seed(config.seed)
            basis = torch.linalg.qr(torch.randn(config.d_bottleneck, config.bottleneck_rank, generator=g))[0]
            self.register_buffer("rank_basis", basis)
        else:
            self.rank_basis = None

    def tokens(self, grids: torch.Tensor, program: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's input sequence [B, T (+ program_length), d_model]: the grid's patch tokens, with the
        program's tokens after them (Transformer) or before them (GRU) when ``program`` is given."""
        check_grids(grids, self.config.n_colours)
        x = self.embed(one_hot_grids(grids, self.config.n_colours))
        if program is None:
            return x
        check_programs(program, grids.shape[0], self.config)
        p = self.program_embed(program)
        return torch.cat([p, x] if self.config.encoder == "gru" else [x, p], dim=1)

    def encode_layers(self, grids: torch.Tensor, program: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each encoder layer's output, mean-pooled over the sequence: a list of [B, d_model]."""
        return [x.mean(dim=1) for x in self.encoder.layers(self.tokens(grids, program))]

    def encode_with_layers(self, grids: torch.Tensor, program: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``encode`` and ``encode_layers`` from one pass through the encoder."""
        layers = self.encoder.layers(self.tokens(grids, program))
        return self._bottleneck(layers[-1], program), [x.mean(dim=1) for x in layers]

    def encode(self, grids: torch.Tensor, program: torch.Tensor | None = None) -> torch.Tensor:
        """The bottleneck h [B, d_bottleneck] of input grids [B, 8, 8] (and their programs [B, L])."""
        return self._bottleneck(self.encoder(self.tokens(grids, program)), program)

    def _bottleneck(self, x: torch.Tensor, program: torch.Tensor | None) -> torch.Tensor:
        """h from the encoder's output sequence x [B, T (+ L), d_model]."""
        if program is not None:  # keep the grid tokens (they have read the program)
            x = x[:, :self.config.tokens] if self.config.encoder == "transformer" else x[:, -self.config.tokens:]
        h = self.bottleneck(x.flatten(1) if self.config.pool == "flatten" else x.mean(dim=1))
        if self.rank_basis is not None:
            h = (h @ self.rank_basis) @ self.rank_basis.T  # h limited to the fixed r-dim subspace
        return h

    def forward(self, grids: torch.Tensor, program: torch.Tensor | None = None) -> GridOutput:
        h = self.encode(grids, program)
        return GridOutput(logits=self.decoder(h), h=h, primitive_logits=self.primitive_head(h))


def add_lora(model: nn.Module, rank: int, targets=DEFAULT_LORA_TARGETS, *, alpha: float | None = None,
             dropout: float = 0.0, seed: int = 0):
    """``model`` wrapped by peft with LoRA adapters (rank ``rank``, scale ``alpha / rank``, alpha defaults to
    rank) on the named nn.Linear modules ``targets`` (full module names, e.g. ``"bottleneck"``,
    ``"decoder.expand"``, ``"encoder.blocks.0.attn.q_proj"``); only the adapters train. A is drawn from
    ``torch.manual_seed(seed)`` inside a forked RNG and B is zero, so at init the output equals the base model's.
    peft injects into ``model`` itself: pass a copy to keep the original.

    >>> m = add_lora(GridModel(ModelConfig(n_primitives=2, d_model=8, n_layers=1, n_heads=2)), rank=2)
    >>> sorted({n.split(".")[-3] for n, p in m.named_parameters() if p.requires_grad})  # name.lora_A.default.weight
    ['lora_A', 'lora_B']
    """
    from peft import LoraConfig, get_peft_model

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer; got {rank!r}")
    targets = [targets] if isinstance(targets, str) else list(targets)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    bad = [t for t in targets if t not in linear]
    if bad or not targets:
        raise ValueError(f"LoRA targets must be nn.Linear module names of the model; got {bad or targets}, "
                         f"valid: {linear}")
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout, bias="none",
                        # a string is matched whole against each full module name (re.fullmatch)
                        target_modules="|".join(re.escape(t) for t in targets))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # peft notes that a custom model has no config
        torch.manual_seed(seed)
        return get_peft_model(model, config)
