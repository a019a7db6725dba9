"""Primitives of the synthetic grid tasks: pure, batched maps of integer colour grids ``[..., H, H]``.

A grid holds colour ids ``0..n_colours-1``, colour 0 being the background. Each primitive is a frozen
dataclass of its parameters whose call maps a grid (any leading batch dimensions) to a grid of the same
shape; ``PRIMITIVES`` names the default instance of each, in the fixed order of the multi-hot labels:

==============  ==========================================================================  ===========
name            what it does (default parameters)                                           inverse
==============  ==========================================================================  ===========
colour_shift    foreground colour ``c -> 1 + (c - 1 + k) mod (n_colours - 1)``, k = 1;       k -> -k
                the background stays 0
rotate          rotation by 90 degrees counter-clockwise (``torch.rot90`` on the last two   k -> 4 - k
                dims, rows towards columns)
flip_h          horizontal flip: mirror left-right (reverses the columns, dim -1)           itself
flip_v          vertical flip: mirror top-bottom (reverses the rows, dim -2)                itself
shift           cyclic roll by (dy, dx) = (1, 2) cells (down, right)                        (-dy, -dx)
gravity         every foreground cell falls to the bottom of its column, keeping the        none
                column's top-to-bottom order of foreground colours
==============  ==========================================================================  ===========

The geometric maps make a dihedral group, so a few compositions coincide (rotate then flip_h equals
flip_v then rotate), and colour_shift commutes with every other primitive (it is a map of colours
only); gravity commutes with flip_h and with horizontal rolls but not with rotate, flip_v or vertical
rolls, and ``shift``'s dx = 2 makes it anti-commute with flip_h (flip_h then shift differs from shift
then flip_h). ``lib.synthetic.tasks`` finds the coinciding compositions on probe grids and keeps them
apart from the test split.

The op instances do not check their input (they are the fast path); ``apply`` and ``compose`` do.

>>> g = torch.tensor([[1, 2], [0, 3]])
>>> apply("rotate", g).tolist(), apply("colour_shift", g).tolist()
([[2, 3], [1, 0]], [[2, 3], [0, 4]])
>>> compose(["flip_h", "gravity"], g).tolist()
[[2, 0], [3, 1]]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

import torch

__all__ = ["N_COLOURS", "BACKGROUND", "PRIMITIVES", "ColourShift", "Rotate", "Flip", "Shift", "Gravity",
           "Primitive", "primitive", "inverse", "check_grid", "apply", "compose"]

N_COLOURS = 6  # colour ids 0..5, 0 the background
BACKGROUND = 0
PRIMITIVES = ("colour_shift", "rotate", "flip_h", "flip_v", "shift", "gravity")


def _int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class ColourShift:
    """Cyclic shift of the foreground colour ids by ``k`` over ``1..n_colours-1``; the background stays.

    >>> ColourShift(k=2, n_colours=4)(torch.tensor([0, 1, 2, 3])).tolist()
    [0, 3, 1, 2]
    """
    k: int = 1
    n_colours: int = N_COLOURS

    def __post_init__(self):
        _int("ColourShift.k", self.k)
        if _int("ColourShift.n_colours", self.n_colours) < 2:
            raise ValueError(f"ColourShift.n_colours must be >= 2 (background and a colour), got {self.n_colours}")

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        shifted = torch.remainder(grid - 1 + self.k, self.n_colours - 1) + 1
        return torch.where(grid == BACKGROUND, grid, shifted)

    def inverse(self) -> "ColourShift":
        return ColourShift(k=-self.k, n_colours=self.n_colours)


@dataclass(frozen=True)
class Rotate:
    """Rotation by ``k`` quarter turns counter-clockwise (rows towards columns, as ``torch.rot90``).

    >>> Rotate(k=1)(torch.tensor([[1, 2], [3, 4]])).tolist()
    [[2, 4], [1, 3]]
    """
    k: int = 1

    def __post_init__(self):
        _int("Rotate.k", self.k)

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        return torch.rot90(grid, self.k % 4, dims=(-2, -1))

    def inverse(self) -> "Rotate":
        return Rotate(k=(-self.k) % 4)


@dataclass(frozen=True)
class Flip:
    """Mirror image: ``axis="h"`` reverses the columns (left-right), ``axis="v"`` the rows (top-bottom).

    >>> Flip("h")(torch.tensor([[1, 2], [3, 4]])).tolist(), Flip("v")(torch.tensor([[1, 2], [3, 4]])).tolist()
    ([[2, 1], [4, 3]], [[3, 4], [1, 2]])
    """
    axis: str = "h"

    def __post_init__(self):
        if self.axis not in ("h", "v"):
            raise ValueError(f"Flip.axis must be 'h' (left-right) or 'v' (top-bottom), got {self.axis!r}")

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        return torch.flip(grid, dims=(-1,) if self.axis == "h" else (-2,))

    def inverse(self) -> "Flip":
        return self


@dataclass(frozen=True)
class Shift:
    """Cyclic roll by ``dy`` rows down and ``dx`` columns right (cells leaving one edge enter the other).

    >>> Shift(dy=0, dx=1)(torch.tensor([[1, 2, 3]])).tolist()
    [[3, 1, 2]]
    """
    dy: int = 1
    dx: int = 2

    def __post_init__(self):
        _int("Shift.dy", self.dy)
        _int("Shift.dx", self.dx)

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        return torch.roll(grid, shifts=(self.dy, self.dx), dims=(-2, -1))

    def inverse(self) -> "Shift":
        return Shift(dy=-self.dy, dx=-self.dx)


@dataclass(frozen=True)
class Gravity:
    """Every non-background cell falls to the bottom of its column; their top-to-bottom order is kept.

    Not invertible: it forgets where the cells were.

    >>> Gravity()(torch.tensor([[1, 0], [0, 2], [3, 0]])).tolist()
    [[0, 0], [1, 0], [3, 2]]
    """
    background: int = BACKGROUND

    def __post_init__(self):
        _int("Gravity.background", self.background)

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        key = (grid != self.background).to(torch.int8)  # background first (0), then the cells in their order
        order = torch.sort(key, dim=-2, stable=True).indices
        return torch.gather(grid, -2, order)

    def inverse(self):
        raise ValueError("gravity has no inverse: it merges grids that differ only in where the cells were; "
                         "invertible primitives are colour_shift, rotate, flip_h, flip_v, shift")


Primitive = Union[ColourShift, Rotate, Flip, Shift, Gravity]


def primitive(name: str, *, n_colours: int = N_COLOURS) -> Primitive:
    """The default instance of the primitive ``name`` (one of ``PRIMITIVES``) for ``n_colours`` colours.

    >>> primitive("shift")
    Shift(dy=1, dx=2)
    """
    if name == "colour_shift":
        return ColourShift(k=1, n_colours=n_colours)
    table = {"rotate": Rotate(1), "flip_h": Flip("h"), "flip_v": Flip("v"), "shift": Shift(1, 2), "gravity": Gravity()}
    if name not in table:
        raise ValueError(f"unknown primitive {name!r}; known: {', '.join(PRIMITIVES)}")
    return table[name]


def inverse(name: str | Primitive, *, n_colours: int = N_COLOURS) -> Primitive:
    """The primitive undoing ``name`` (a name of ``PRIMITIVES`` or an instance); ValueError for gravity.

    >>> inverse("rotate"), inverse("colour_shift", n_colours=4)
    (Rotate(k=3), ColourShift(k=-1, n_colours=4))
    """
    op = primitive(name, n_colours=n_colours) if isinstance(name, str) else name
    return op.inverse()


def check_grid(grid, *, n_colours: int = N_COLOURS) -> torch.Tensor:
    """``grid`` itself if it is an integer tensor ``[..., H, H]`` of colour ids in ``0..n_colours-1``.

    >>> check_grid(torch.zeros(2, 8, 8, dtype=torch.long)).shape
    torch.Size([2, 8, 8])
    """
    if not isinstance(grid, torch.Tensor):
        raise ValueError(f"a grid must be a torch tensor of colour ids, got {type(grid).__name__}")
    if grid.dtype.is_floating_point or grid.dtype.is_complex or grid.dtype == torch.bool:
        raise ValueError(f"a grid must hold integer colour ids (torch.long), got dtype {grid.dtype}")
    if grid.ndim < 2 or grid.shape[-1] != grid.shape[-2]:
        raise ValueError(f"a grid must have shape [..., H, H] (square, e.g. [8, 8] or [B, 8, 8]), "
                         f"got {tuple(grid.shape)}")
    if grid.numel() and (int(grid.min()) < 0 or int(grid.max()) >= n_colours):
        raise ValueError(f"grid colour ids must be in 0..{n_colours - 1} (n_colours={n_colours}), "
                         f"got values in {int(grid.min())}..{int(grid.max())}")
    return grid


def _op(name: str | Primitive, n_colours: int) -> Primitive:
    if isinstance(name, str):
        return primitive(name, n_colours=n_colours)
    if not isinstance(name, (ColourShift, Rotate, Flip, Shift, Gravity)):
        raise ValueError(f"expected a primitive name ({', '.join(PRIMITIVES)}) or instance, got {name!r}")
    return name


def apply(name: str | Primitive, grid: torch.Tensor, *, n_colours: int = N_COLOURS) -> torch.Tensor:
    """One primitive (a name of ``PRIMITIVES`` or an instance) applied to a grid ``[..., H, H]``.

    >>> apply("flip_v", torch.tensor([[1], [2]]).expand(2, 2)).tolist()
    [[2, 2], [1, 1]]
    """
    op = _op(name, n_colours)
    return op(check_grid(grid, n_colours=n_colours))


def compose(names: Iterable[str | Primitive], grid: torch.Tensor, *, n_colours: int = N_COLOURS) -> torch.Tensor:
    """The primitives applied left to right: ``compose([a, b], g) == apply(b, apply(a, g))``.

    >>> g = torch.tensor([[1, 2], [3, 4]])
    >>> compose(["rotate", "flip_h"], g, n_colours=5).tolist(), compose(["flip_h", "rotate"], g, n_colours=5).tolist()
    ([[4, 2], [3, 1]], [[1, 3], [2, 4]])
    """
    ops = [_op(n, n_colours) for n in names]
    out = check_grid(grid, n_colours=n_colours)
    for op in ops:
        out = op(out)
    return out
