"""Tasks of the synthetic grid experiment: ordered compositions of primitives, their inputs and their splits.

A task is a tuple of distinct primitive names applied left to right, ``("rotate", "gravity")``;
training tasks have length 1 or 2, test tasks length 3. Its multi-hot label says which primitives it
uses (so ``("rotate", "gravity")`` and ``("gravity", "rotate")`` share a label); its program is the
ordered primitive ids padded with ``PAD`` to ``MAX_LENGTH``, for a model told which task to do.

Inputs are sparse random objects (small boxes partly filled with one colour) on background 0, so that
every primitive changes almost every input (``tests/synthetic/test_tasks.py`` bounds the fraction of
samples whose target equals the input). Two compositions can be the same map (the geometric primitives
make a dihedral group; colour_shift commutes with everything): ``functional_classes`` finds them by
their outputs on fixed probe grids, and ``make_splits`` keeps every test or few-shot composition
functionally new.

>>> multi_hot(("rotate", "gravity")).tolist(), program(("rotate", "gravity")).tolist()
([0.0, 1.0, 0.0, 0.0, 0.0, 1.0], [1, 5, 6])
>>> split = make_splits(0, n_test=5, n_fewshot=3)
>>> len(split.train), len(split.test), len(split.fewshot), split.pair_coverage()["fraction"]
(36, 5, 3, 1.0)
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np
import torch

from lib.synthetic.primitives import N_COLOURS, PRIMITIVES, compose

__all__ = ["Task", "MAX_LENGTH", "PAD", "check_task", "compositions", "multi_hot", "program", "generator_for",
           "rng_for", "GridSpec", "random_grids", "task_examples", "functional_classes", "pair_coverage",
           "TaskSplit", "make_splits"]

Task = tuple[str, ...]
MAX_LENGTH = 3
PAD = len(PRIMITIVES)  # the program id of an empty step (an embedding table of P + 1 rows)
_STREAMS = {"probe": 0, "split": 1, "dataset": 2, "fixed": 3, "sampler": 4, "shared-inputs": 5}
_PROBE_SEED, _N_PROBE = 0, 64


def check_task(task) -> Task:
    """``task`` as a tuple if it is 1..MAX_LENGTH distinct names of ``PRIMITIVES``.

    >>> check_task(["shift", "rotate"])
    ('shift', 'rotate')
    """
    if isinstance(task, str) or not hasattr(task, "__iter__"):
        raise ValueError(f"a task is a sequence of primitive names, e.g. ('rotate', 'shift'), got {task!r}")
    task = tuple(task)
    unknown = [p for p in task if p not in PRIMITIVES]
    if unknown:
        raise ValueError(f"task {task} has unknown primitives {unknown}; known: {', '.join(PRIMITIVES)}")
    if not 1 <= len(task) <= MAX_LENGTH or len(set(task)) != len(task):
        raise ValueError(f"a task is 1..{MAX_LENGTH} distinct primitives, got {task}")
    return task


def _order(task: Task) -> tuple:
    return len(task), tuple(PRIMITIVES.index(p) for p in task)


def compositions(length: int) -> list[Task]:
    """Every ordered composition of ``length`` distinct primitives, in the order of ``PRIMITIVES``.

    >>> len(compositions(2)), compositions(2)[0]
    (30, ('colour_shift', 'rotate'))
    """
    if not 1 <= length <= MAX_LENGTH:
        raise ValueError(f"length must be in 1..{MAX_LENGTH}, got {length}")
    return list(permutations(PRIMITIVES, length))


def multi_hot(task) -> torch.Tensor:
    """The label of a task: float ``[P]``, 1 where the task uses the primitive (order of ``PRIMITIVES``).

    >>> multi_hot(("shift",)).tolist()
    [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    """
    task = check_task(task)
    return torch.tensor([float(p in task) for p in PRIMITIVES])


def program(task, max_length: int = MAX_LENGTH) -> torch.Tensor:
    """The ordered primitive ids of a task, long ``[max_length]``, padded with ``PAD``.

    >>> program(("flip_v",)).tolist()
    [3, 6, 6]
    """
    task = check_task(task)
    if len(task) > max_length:
        raise ValueError(f"task {task} is longer than max_length={max_length}")
    return torch.tensor([PRIMITIVES.index(p) for p in task] + [PAD] * (max_length - len(task)))


def _seed_sequence(seed, stream: str, key) -> np.random.SeedSequence:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if stream not in _STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; known: {', '.join(_STREAMS)}")
    return np.random.SeedSequence([int(seed), _STREAMS[stream], *(int(k) for k in key)])


def generator_for(seed: int, stream: str, *key: int) -> torch.Generator:
    """A torch generator that depends only on ``(seed, stream, *key)``; streams keep uses apart.

    >>> a = torch.rand(2, generator=generator_for(0, "dataset", 3))
    >>> bool((a == torch.rand(2, generator=generator_for(0, "dataset", 3))).all())
    True
    """
    state = _seed_sequence(seed, stream, key).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def rng_for(seed: int, stream: str, *key: int) -> np.random.Generator:
    """A numpy generator that depends only on ``(seed, stream, *key)``.

    >>> int(rng_for(1, "split").integers(100)) == int(rng_for(1, "split").integers(100))
    True
    """
    return np.random.default_rng(_seed_sequence(seed, stream, key))


@dataclass(frozen=True)
class GridSpec:
    """How input grids are drawn: ``min_objects..max_objects`` objects, each a box of 1..``max_object_size``
    cells a side whose cells are filled with probability ``density`` (its top-left cell always), in one
    random colour of ``1..n_colours-1``, at a random place; later objects paint over earlier ones.

    >>> GridSpec().size, GridSpec().n_colours
    (8, 6)
    """
    size: int = 8
    n_colours: int = N_COLOURS
    min_objects: int = 2
    max_objects: int = 4
    max_object_size: int = 3
    density: float = 0.6

    def __post_init__(self):
        if self.size < 2 or self.n_colours < 3:
            raise ValueError(f"GridSpec needs size >= 2 and n_colours >= 3 (a background and two colours, so "
                             f"that colour_shift changes a grid), got size={self.size}, n_colours={self.n_colours}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"GridSpec needs 1 <= min_objects <= max_objects, got {self.min_objects}, "
                             f"{self.max_objects}")
        if not 1 <= self.max_object_size <= self.size or not 0.0 < self.density <= 1.0:
            raise ValueError(f"GridSpec needs 1 <= max_object_size <= size and 0 < density <= 1, got "
                             f"max_object_size={self.max_object_size}, density={self.density}")


def random_grids(n: int, *, generator: torch.Generator, spec: GridSpec = GridSpec()) -> torch.Tensor:
    """``n`` random input grids, long ``[n, size, size]``, from ``generator`` (see ``GridSpec``).

    >>> g = random_grids(3, generator=torch.Generator().manual_seed(0))
    >>> tuple(g.shape), g.dtype, bool((g == 0).float().mean() > 0.5)
    ((3, 8, 8), torch.int64, True)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    size, box = spec.size, spec.max_object_size
    grid = torch.zeros(n, size * size, dtype=torch.long)
    count = torch.randint(spec.min_objects, spec.max_objects + 1, (n,), generator=generator)
    ii, jj = torch.arange(box).view(1, box, 1), torch.arange(box).view(1, 1, box)
    rows = torch.arange(n).view(n, 1, 1).expand(n, box, box)
    for slot in range(spec.max_objects):
        h = torch.randint(1, box + 1, (n, 1, 1), generator=generator)
        w = torch.randint(1, box + 1, (n, 1, 1), generator=generator)
        top = (torch.rand(n, 1, 1, generator=generator) * (size - h + 1)).long()
        left = (torch.rand(n, 1, 1, generator=generator) * (size - w + 1)).long()
        colour = torch.randint(1, spec.n_colours, (n, 1, 1), generator=generator)
        filled = torch.rand(n, box, box, generator=generator) < spec.density
        filled[:, 0, 0] = True
        inside = filled & (ii < h) & (jj < w) & (slot < count).view(n, 1, 1)
        cell = (top + ii) * size + (left + jj)
        grid[rows[inside], cell[inside]] = colour.expand(n, box, box)[inside]
    return grid.view(n, size, size)


def task_examples(task, n: int, *, generator: torch.Generator, spec: GridSpec = GridSpec()) -> dict:
    """``n`` samples of one task as batched tensors: ``input``, ``target`` (long ``[n, size, size]``),
    ``primitives`` (float ``[n, P]``), ``program`` (long ``[n, MAX_LENGTH]``).

    >>> ex = task_examples(("flip_h",), 2, generator=torch.Generator().manual_seed(0))
    >>> bool((ex["target"] == ex["input"].flip(-1)).all()), tuple(ex["primitives"].shape)
    (True, (2, 6))
    """
    task = check_task(task)
    inputs = random_grids(n, generator=generator, spec=spec)
    return {"input": inputs, "target": compose(task, inputs, n_colours=spec.n_colours),
            "primitives": multi_hot(task).expand(n, -1).clone(), "program": program(task).expand(n, -1).clone()}


def functional_classes(tasks, *, spec: GridSpec = GridSpec()) -> list[tuple[Task, ...]]:
    """The tasks grouped by the map they compute (equal outputs on 64 fixed probe grids), in first-seen order.

    >>> [c for c in functional_classes([("rotate", "flip_h"), ("flip_h", "rotate"), ("flip_v", "rotate")])]
    [(('rotate', 'flip_h'), ('flip_v', 'rotate')), (('flip_h', 'rotate'),)]
    """
    probe = random_grids(_N_PROBE, generator=generator_for(_PROBE_SEED, "probe"), spec=spec)
    classes: dict[bytes, list[Task]] = {}
    for task in map(check_task, tasks):
        key = compose(task, probe, n_colours=spec.n_colours).numpy().tobytes()
        classes.setdefault(key, []).append(task)
    return [tuple(c) for c in classes.values()]


def pair_coverage(tasks, train) -> dict:
    """Which consecutive ordered pairs of ``tasks`` are length-2 tasks of ``train``: ``fraction`` of the
    distinct pairs covered, ``covered`` and ``missing`` (sorted lists of pairs) and ``tasks_covered``, the
    fraction of tasks all of whose pairs are covered.

    >>> c = pair_coverage([("rotate", "shift", "gravity")], [("rotate",), ("rotate", "shift")])
    >>> c["fraction"], c["missing"]
    (0.5, [('shift', 'gravity')])
    """
    tasks = [check_task(t) for t in tasks]
    trained = {check_task(t) for t in train if len(t) == 2}
    per_task = [{t[i:i + 2] for i in range(len(t) - 1)} for t in tasks]
    pairs = set().union(*per_task) if per_task else set()
    covered = sorted((p for p in pairs if p in trained), key=_order)
    missing = sorted((p for p in pairs if p not in trained), key=_order)
    return {"fraction": len(covered) / len(pairs) if pairs else float("nan"), "covered": covered,
            "missing": missing,
            "tasks_covered": float(np.mean([ps <= trained for ps in per_task])) if per_task else float("nan")}


@dataclass(frozen=True)
class TaskSplit:
    """Training tasks (every primitive alone and the ordered pairs not held out), the zero-shot ``test``
    compositions and the few-shot ``fewshot`` ones (length 3, disjoint, none computing the same map as
    a training task or as each other), the ``heldout_pairs`` and ``collisions`` (training tasks that
    compute the same map, with different labels when they use different primitives).
    """
    seed: int
    train: tuple[Task, ...]
    test: tuple[Task, ...]
    fewshot: tuple[Task, ...]
    heldout_pairs: tuple[Task, ...]
    collisions: tuple[tuple[Task, ...], ...]

    def pair_coverage(self, which: str = "test") -> dict:
        """``pair_coverage`` of the ``test`` (or ``fewshot``) compositions by the training pairs."""
        if which not in ("test", "fewshot"):
            raise ValueError(f"which must be 'test' or 'fewshot', got {which!r}")
        return pair_coverage(getattr(self, which), self.train)


def make_splits(seed: int, *, n_test: int = 20, n_fewshot: int = 10, n_heldout_pairs: int = 0,
                spec: GridSpec = GridSpec()) -> TaskSplit:
    """Draw the task split for ``seed``: every primitive alone and every ordered pair but ``n_heldout_pairs``
    random ones (drawn so that each primitive keeps a training pair) for training; ``n_test`` zero-shot and
    ``n_fewshot`` few-shot length-3 compositions, one per functional class (compositions computing the same
    map count once), from the classes that no training task computes.

    >>> s = make_splits(1, n_test=4, n_fewshot=2, n_heldout_pairs=3)
    >>> len(s.train), len(s.heldout_pairs), set(s.test) & set(s.train), set(s.test) & set(s.fewshot)
    (33, 3, set(), set())
    """
    singles, pairs = compositions(1), compositions(2)
    for name, value in (("n_test", n_test), ("n_fewshot", n_fewshot), ("n_heldout_pairs", n_heldout_pairs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if n_heldout_pairs > len(pairs) - len(PRIMITIVES):
        raise ValueError(f"n_heldout_pairs must be <= {len(pairs) - len(PRIMITIVES)} so that every primitive "
                         f"keeps a training pair, got {n_heldout_pairs}")
    rng = rng_for(seed, "split")
    for _ in range(1000):
        held = {pairs[i] for i in rng.choice(len(pairs), size=n_heldout_pairs, replace=False)}
        kept = [p for p in pairs if p not in held]
        if {q for p in kept for q in p} == set(PRIMITIVES):
            break
    else:
        raise ValueError(f"no draw of {n_heldout_pairs} held-out pairs left every primitive a training pair; "
                         f"hold out fewer")
    train = tuple(singles + kept)
    classes = functional_classes(list(train) + compositions(3), spec=spec)
    trained = set(train)
    same_map = [tuple(t for t in c if t in trained) for c in classes]
    new = [c for c in classes if not trained & set(c)]
    if n_test + n_fewshot > len(new):
        raise ValueError(f"n_test + n_fewshot must be <= {len(new)} (the length-3 maps no training task "
                         f"computes), got {n_test} + {n_fewshot}")
    chosen = [new[i] for i in rng.permutation(len(new))[:n_test + n_fewshot]]
    picks = [c[int(rng.integers(len(c)))] for c in chosen]
    return TaskSplit(seed=int(seed), train=train, test=tuple(sorted(picks[:n_test], key=_order)),
                     fewshot=tuple(sorted(picks[n_test:], key=_order)),
                     heldout_pairs=tuple(sorted(held, key=_order)),
                     collisions=tuple(c for c in same_map if len(c) > 1))
