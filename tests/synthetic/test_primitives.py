"""The grid primitives against numpy's own array operations and plain Python loops, and their identities."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lib.synthetic.primitives import (
    N_COLOURS, PRIMITIVES, ColourShift, Flip, Gravity, Rotate, Shift, apply, check_grid, compose, inverse, primitive,
)

INVERTIBLE = [p for p in PRIMITIVES if p != "gravity"]


@pytest.fixture(scope="module")
def grids():
    """Random dense grids (independent of lib.synthetic.tasks' input generator)."""
    return torch.randint(0, N_COLOURS, (32, 8, 8), generator=torch.Generator().manual_seed(7))


def _gravity_loop(grid: np.ndarray) -> np.ndarray:
    out = np.zeros_like(grid)
    for col in range(grid.shape[1]):
        cells = [c for c in grid[:, col] if c != 0]
        out[grid.shape[0] - len(cells):, col] = cells
    return out


def test_each_primitive_matches_an_independent_implementation(grids):
    x = grids.numpy()
    colour = {0: 0, **{c: c % (N_COLOURS - 1) + 1 for c in range(1, N_COLOURS)}}  # 1->2, ..., 5->1
    expected = {
        "colour_shift": np.vectorize(colour.get)(x),
        "rotate": np.stack([np.rot90(g) for g in x]),
        "flip_h": np.stack([np.fliplr(g) for g in x]),
        "flip_v": np.stack([np.flipud(g) for g in x]),
        "shift": np.stack([np.roll(np.roll(g, 1, axis=0), 2, axis=1) for g in x]),
        "gravity": np.stack([_gravity_loop(g) for g in x]),
    }
    assert set(expected) == set(PRIMITIVES)
    for name, want in expected.items():
        np.testing.assert_array_equal(apply(name, grids).numpy(), want, err_msg=name)


def test_shift_moves_a_single_cell_down_one_and_right_two():
    g = torch.zeros(8, 8, dtype=torch.long)
    g[7, 7] = 3
    out = apply("shift", g)
    assert out[0, 1] == 3 and int((out != 0).sum()) == 1  # wrapped around both edges


def test_rotation_four_times_and_flips_twice_are_the_identity(grids):
    assert torch.equal(compose(["rotate"] * 4, grids), grids)
    assert not torch.equal(compose(["rotate"] * 2, grids), grids)
    for flip in ("flip_h", "flip_v"):
        assert torch.equal(compose([flip, flip], grids), grids)
    assert torch.equal(compose(["flip_h", "flip_v"], grids), Rotate(2)(grids))  # the dihedral relation


def test_colour_map_is_a_permutation_fixing_the_background_and_its_inverse_undoes_it(grids):
    out = apply("colour_shift", grids)
    assert torch.equal((out == 0), (grids == 0))
    assert torch.equal(apply(inverse("colour_shift"), out), grids)
    assert torch.equal(compose(["colour_shift"] * (N_COLOURS - 1), grids), grids)  # a cycle of length C - 1
    for k in (2, -3, 7):
        op = ColourShift(k=k, n_colours=N_COLOURS)
        assert torch.equal(op.inverse()(op(grids)), grids)
        assert sorted(op(torch.arange(N_COLOURS)).tolist()) == list(range(N_COLOURS))


def test_shift_round_trips(grids):
    assert torch.equal(apply(inverse("shift"), apply("shift", grids)), grids)
    assert torch.equal(compose([Shift(1, 0)] * 8, grids), grids)
    assert torch.equal(Shift(-3, 5)(Shift(3, -5)(grids)), grids)
    assert not torch.equal(apply("shift", grids), grids)


def test_every_invertible_primitive_is_undone_by_its_inverse_and_gravity_has_none(grids):
    for name in INVERTIBLE:
        assert torch.equal(apply(inverse(name), apply(name, grids)), grids), name
        assert not torch.equal(apply(name, grids), grids), name
    assert torch.equal(Rotate(3).inverse()(Rotate(3)(grids)), grids)
    with pytest.raises(ValueError, match="gravity has no inverse"):
        inverse("gravity")


def test_gravity_is_idempotent_and_keeps_each_columns_colours(grids):
    once = apply("gravity", grids)
    assert torch.equal(apply("gravity", once), once)
    assert torch.equal(torch.sort(once, dim=-2).values, torch.sort(grids, dim=-2).values)


def test_composition_order_matters_where_it_should(grids):
    rot_then_flip = compose(["rotate", "flip_h"], grids)
    assert not torch.equal(rot_then_flip, compose(["flip_h", "rotate"], grids))
    assert torch.equal(rot_then_flip, compose(["flip_v", "rotate"], grids))  # a known coincidence of D4
    assert not torch.equal(compose(["shift", "flip_h"], grids), compose(["flip_h", "shift"], grids))
    assert not torch.equal(compose(["gravity", "rotate"], grids), compose(["rotate", "gravity"], grids))
    assert torch.equal(compose(["colour_shift", "gravity"], grids), compose(["gravity", "colour_shift"], grids))
    assert torch.equal(compose(["rotate", "shift", "gravity"], grids),
                       apply("gravity", apply("shift", apply("rotate", grids))))


def test_batched_equals_per_sample(grids):
    batch = grids.view(4, 8, 8, 8)  # two leading dimensions
    for name in PRIMITIVES:
        whole = apply(name, batch)
        assert whole.shape == batch.shape and whole.dtype == torch.long
        singles = torch.stack([apply(name, g) for g in grids]).view(4, 8, 8, 8)
        assert torch.equal(whole, singles), name


def test_primitive_parameters_and_defaults():
    assert [type(primitive(p)).__name__ for p in PRIMITIVES] == ["ColourShift", "Rotate", "Flip", "Flip", "Shift",
                                                                 "Gravity"]
    assert primitive("colour_shift", n_colours=4) == ColourShift(1, 4)
    with pytest.raises(ValueError, match="Flip.axis"):
        Flip("diagonal")
    with pytest.raises(ValueError, match="Rotate.k must be an int"):
        Rotate(1.5)
    with pytest.raises(ValueError, match="n_colours must be >= 2"):
        ColourShift(1, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Gravity().background = 1


def test_bad_grids_and_names_are_refused_with_what_would_be_valid():
    with pytest.raises(ValueError, match="unknown primitive 'spin'; known: colour_shift"):
        apply("spin", torch.zeros(8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="integer colour ids"):
        apply("rotate", torch.zeros(8, 8))
    with pytest.raises(ValueError, match=r"shape \[\.\.\., H, H\].*\(8, 7\)"):
        apply("rotate", torch.zeros(8, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="must be in 0..5"):
        compose(["rotate"], torch.full((8, 8), 6))
    with pytest.raises(ValueError, match="primitive name"):
        compose([lambda g: g], torch.zeros(8, 8, dtype=torch.long))
    assert check_grid(torch.zeros(0, 8, 8, dtype=torch.long)).shape == (0, 8, 8)
