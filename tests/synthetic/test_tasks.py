"""Tasks, inputs and splits against hand-written labels, brute-force loops and planted coincidences."""
from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
import torch

from lib.synthetic.primitives import PRIMITIVES, apply, compose
from lib.synthetic.tasks import (
    MAX_LENGTH, PAD, GridSpec, check_task, compositions, functional_classes, generator_for, make_splits, multi_hot,
    pair_coverage, program, random_grids, rng_for, task_examples,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_multi_hot_labels_and_programs_of_known_compositions():
    # PRIMITIVES = colour_shift, rotate, flip_h, flip_v, shift, gravity
    assert PRIMITIVES == ("colour_shift", "rotate", "flip_h", "flip_v", "shift", "gravity")
    assert multi_hot(("gravity",)).tolist() == [0, 0, 0, 0, 0, 1]
    assert multi_hot(("shift", "colour_shift")).tolist() == [1, 0, 0, 0, 1, 0]
    assert multi_hot(("flip_v", "rotate", "flip_h")).tolist() == [0, 1, 1, 1, 0, 0]
    assert torch.equal(multi_hot(("rotate", "shift")), multi_hot(("shift", "rotate")))  # a label ignores order
    assert multi_hot(("rotate",)).dtype == torch.float32
    assert PAD == 6 and MAX_LENGTH == 3
    assert program(("shift", "colour_shift")).tolist() == [4, 0, 6]
    assert program(("flip_v", "rotate", "flip_h")).tolist() == [3, 1, 2]
    assert program(("gravity",), max_length=5).tolist() == [5, 6, 6, 6, 6]


def test_bad_tasks_are_refused_with_what_would_be_valid():
    assert check_task(["rotate"]) == ("rotate",)
    for bad, match in [("rotate", "sequence of primitive names"), (("spin",), "unknown primitives"),
                       ((), "1..3 distinct"), (("rotate", "rotate"), "1..3 distinct"),
                       (tuple(PRIMITIVES[:4]), "1..3 distinct")]:
        with pytest.raises(ValueError, match=match):
            check_task(bad)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        generator_for(-1, "dataset")
    with pytest.raises(ValueError, match="unknown random stream"):
        rng_for(0, "nope")


def test_compositions_are_all_ordered_tuples_of_distinct_primitives():
    for length, count in ((1, 6), (2, 30), (3, 120)):
        got = compositions(length)
        assert len(got) == len(set(got)) == count
        assert set(got) == {t for t in permutations(PRIMITIVES, length)}


def test_random_grids_are_sparse_objects_in_range_and_seeded():
    spec = GridSpec()
    g = random_grids(500, generator=_gen(1), spec=spec)
    assert g.shape == (500, 8, 8) and g.dtype == torch.long
    assert int(g.min()) == 0 and int(g.max()) == spec.n_colours - 1
    foreground = (g != 0).float().mean(dim=(1, 2))
    assert bool((foreground > 0).all()) and 0.08 < float(foreground.mean()) < 0.35
    colours_used = torch.stack([torch.bincount(x.flatten(), minlength=6)[1:] > 0 for x in g]).sum(1)
    assert float((colours_used >= 2).float().mean()) > 0.6  # several objects of different colours
    assert torch.equal(g, random_grids(500, generator=_gen(1), spec=spec))
    assert not torch.equal(g, random_grids(500, generator=_gen(2), spec=spec))
    assert random_grids(3, generator=_gen(), spec=GridSpec(size=5, n_colours=3)).shape == (3, 5, 5)
    with pytest.raises(ValueError, match="n_colours >= 3"):
        GridSpec(n_colours=2)


def _identity_fraction(task, gen) -> float:
    ex = task_examples(task, 200, generator=gen)
    return float((ex["target"] == ex["input"]).flatten(1).all(1).float().mean())


@pytest.mark.parametrize("length", [1, 2, 3])
def test_targets_rarely_equal_inputs_for_every_task(length):
    gen = _gen(3)
    fractions = {t: _identity_fraction(t, gen) for t in compositions(length)}
    worst = max(fractions, key=fractions.get)
    assert fractions[worst] < 0.03, f"{worst} leaves {fractions[worst]:.1%} of its inputs unchanged"


def test_task_examples_match_a_per_sample_loop():
    ex = task_examples(("rotate", "shift", "gravity"), 5, generator=_gen(4))
    for x, y in zip(ex["input"], ex["target"]):
        assert torch.equal(y, apply("gravity", apply("shift", apply("rotate", x))))
    assert torch.equal(ex["primitives"], multi_hot(("rotate", "shift", "gravity")).expand(5, -1))
    assert ex["program"].tolist() == [[1, 4, 5]] * 5


def test_functional_classes_find_the_planted_coincidences_and_nothing_else():
    tasks = compositions(1) + compositions(2)
    classes = functional_classes(tasks)
    assert sorted(t for c in classes for t in c) == sorted(tasks)
    same = {frozenset(c) for c in classes if len(c) > 1}
    expected = {frozenset({("rotate", "flip_h"), ("flip_v", "rotate")}),  # H R = R V in the dihedral group
                frozenset({("rotate", "flip_v"), ("flip_h", "rotate")}),
                frozenset({("flip_h", "flip_v"), ("flip_v", "flip_h")}),  # both are the half turn
                frozenset({("flip_h", "gravity"), ("gravity", "flip_h")}),  # gravity acts within columns
                *(frozenset({("colour_shift", p), (p, "colour_shift")}) for p in PRIMITIVES[1:])}
    assert same == expected
    # the same classes from an independent check: outputs on fresh grids of another generator
    fresh = random_grids(64, generator=_gen(99))
    by_output = {}
    for t in tasks:
        by_output.setdefault(compose(t, fresh).numpy().tobytes(), set()).add(t)
    assert {frozenset(c) for c in by_output.values()} == {frozenset(c) for c in classes}


def test_pair_coverage_against_a_hand_count():
    train = [("rotate",), ("rotate", "shift"), ("gravity", "flip_h"), ("shift", "rotate")]
    tests = [("rotate", "shift", "gravity"), ("gravity", "flip_h", "rotate"), ("shift", "rotate", "flip_v")]
    c = pair_coverage(tests, train)
    # pairs: (rotate, shift) yes, (shift, gravity) no, (gravity, flip_h) yes, (flip_h, rotate) no,
    # (shift, rotate) yes, (rotate, flip_v) no; sorted by the primitives' order
    assert c["covered"] == [("rotate", "shift"), ("shift", "rotate"), ("gravity", "flip_h")]
    assert c["missing"] == [("rotate", "flip_v"), ("flip_h", "rotate"), ("shift", "gravity")]
    assert c["fraction"] == 0.5 and c["tasks_covered"] == 0.0
    assert pair_coverage(tests[:1], train + [("shift", "gravity")])["tasks_covered"] == 1.0


@pytest.fixture(scope="module")
def split():
    return make_splits(3, n_test=20, n_fewshot=10, n_heldout_pairs=6)


def test_split_is_disjoint_covers_every_primitive_and_has_the_asked_sizes(split):
    train, test, few = set(split.train), set(split.test), set(split.fewshot)
    assert not train & test and not train & few and not test & few
    assert len(test) == 20 and len(few) == 10 and len(split.heldout_pairs) == 6
    assert {len(t) for t in test | few} == {3} and {len(t) for t in train} == {1, 2}
    assert train == set(compositions(1)) | (set(compositions(2)) - set(split.heldout_pairs))
    assert {p for t in train if len(t) == 2 for p in t} == set(PRIMITIVES)


def test_no_test_or_fewshot_composition_computes_a_training_map_or_each_others(split):
    grids = random_grids(64, generator=_gen(123))
    seen = {compose(t, grids).numpy().tobytes() for t in split.train}
    held_out = [compose(t, grids).numpy().tobytes() for t in split.test + split.fewshot]
    assert not seen & set(held_out) and len(set(held_out)) == len(held_out)
    # every training coincidence is reported, and only those
    outputs = {}
    for t in split.train:
        outputs.setdefault(compose(t, grids).numpy().tobytes(), []).append(t)
    assert {frozenset(c) for c in outputs.values() if len(c) > 1} == {frozenset(c) for c in split.collisions}


def test_split_pair_coverage_against_a_brute_force_loop(split):
    trained_pairs = {t for t in split.train if len(t) == 2}
    pairs = {t[i:i + 2] for t in split.test for i in range(2)}
    covered = {p for p in pairs if p in trained_pairs}
    c = split.pair_coverage()
    assert set(c["covered"]) == covered and set(c["missing"]) == pairs - covered
    assert c["fraction"] == pytest.approx(len(covered) / len(pairs))
    assert c["tasks_covered"] == pytest.approx(np.mean([{t[:2], t[1:]} <= trained_pairs for t in split.test]))
    assert set(c["missing"]) <= set(split.heldout_pairs)
    assert make_splits(3, n_test=20, n_fewshot=10).pair_coverage("fewshot")["fraction"] == 1.0


def test_splits_are_fixed_by_the_seed(split):
    assert make_splits(3, n_test=20, n_fewshot=10, n_heldout_pairs=6) == split
    other = make_splits(4, n_test=20, n_fewshot=10, n_heldout_pairs=6)
    assert other.test != split.test and other.heldout_pairs != split.heldout_pairs


def test_impossible_splits_are_refused():
    with pytest.raises(ValueError, match="n_test \\+ n_fewshot must be <="):
        make_splits(0, n_test=200, n_fewshot=0)
    with pytest.raises(ValueError, match="n_heldout_pairs must be <= 24"):
        make_splits(0, n_heldout_pairs=25)
    with pytest.raises(ValueError, match="which must be"):
        make_splits(0, n_test=1, n_fewshot=0).pair_coverage("train")
