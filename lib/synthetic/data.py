"""Samples of the synthetic grid tasks: an on-the-fly ``Dataset``, fixed evaluation sets and a batch sampler
that keeps samples of one multi-hot label together.

A sample is ``{"input": long [H, H], "target": long [H, H], "primitives": float [P], "program": long
[MAX_LENGTH], "task": long []}`` (``task`` indexes the dataset's task list; ``program`` tells a model which
composition to apply, see ``lib.synthetic.tasks.program``).

``GridTaskDataset`` makes sample ``i`` from ``(seed, i)`` alone: index ``i`` belongs to block
``i // buffer_size``; a block's task assignment is ``(global index mod n_tasks)`` permuted within the
block (so every task gets ``length / n_tasks`` samples, to within one) and its grids are generated
together, task by task, from a generator of ``(seed, block)``. Blocks are generated on first use and
kept (the newest ``max_buffers``); an evicted block is regenerated identically. For fresh samples in
every epoch, give each epoch its own seed or make ``length`` cover all the steps.

``GroupedBatchSampler`` is for the sharing regulariser, which needs every label group of a batch to
hold at least 2 samples: each batch is one group, or ``groups_per_batch`` groups of about
``batch_size // groups_per_batch`` samples each (>= 2 unless a label has a single sample in the whole
dataset).

>>> from lib.synthetic.tasks import make_splits
>>> ds = GridTaskDataset(make_splits(0, n_test=1, n_fewshot=0).train, seed=0, length=64, buffer_size=32)
>>> s = ds[5]
>>> tuple(s["input"].shape), tuple(s["primitives"].shape), bool((s["target"] == ds[5]["target"]).all())
((8, 8), (6,), True)
>>> batches = list(GroupedBatchSampler(ds.labels, batch_size=4, seed=0))
>>> sorted(i for b in batches for i in b) == list(range(64))
True
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lib.synthetic.primitives import compose
from lib.synthetic.tasks import GridSpec, check_task, generator_for, multi_hot, program, random_grids, rng_for

__all__ = ["GridTaskDataset", "fixed_set", "GroupedBatchSampler"]


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _tasks(tasks) -> tuple:
    tasks = tuple(check_task(t) for t in tasks)
    if not tasks:
        raise ValueError("tasks is empty; pass at least one task, e.g. [('rotate',)]")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks are repeated: {sorted({t for t in tasks if tasks.count(t) > 1})}")
    return tasks


class GridTaskDataset(Dataset):
    """``length`` samples of ``tasks`` generated on the fly in blocks of ``buffer_size``; item ``i`` depends
    only on ``(tasks, seed, length, buffer_size, spec, i)``, not on ``max_buffers`` or the order of access.

    >>> ds = GridTaskDataset([("rotate",), ("shift", "gravity")], seed=1, length=10, buffer_size=4)
    >>> ds.task_ids.bincount().tolist(), bool((ds[3]["input"] == ds[3]["input"]).all())
    ([5, 5], True)
    """

    def __init__(self, tasks, *, seed: int, length: int, buffer_size: int = 1024, max_buffers: int = 64,
                 spec: GridSpec = GridSpec()):
        self.tasks = _tasks(tasks)
        self.seed, self.spec = seed, spec
        self.length = _positive("length", length)
        self.buffer_size = _positive("buffer_size", buffer_size)
        self.max_buffers = _positive("max_buffers", max_buffers)
        generator_for(seed, "dataset")  # checks the seed now, not at the first item
        self._labels = torch.stack([multi_hot(t) for t in self.tasks])
        self._programs = torch.stack([program(t) for t in self.tasks])
        self._task_ids = None
        self._buffers: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._dtype = torch.uint8 if spec.n_colours <= 256 else torch.long

    def __len__(self) -> int:
        return self.length

    @property
    def task_ids(self) -> torch.Tensor:
        """The task index of every item, long ``[length]`` (cheap: no grid is generated)."""
        if self._task_ids is None:
            n_tasks, parts = len(self.tasks), []
            for start in range(0, self.length, self.buffer_size):
                m = min(self.buffer_size, self.length - start)
                perm = torch.randperm(m, generator=generator_for(self.seed, "dataset", start // self.buffer_size, 0))
                parts.append(((start + torch.arange(m)) % n_tasks)[perm])
            self._task_ids = torch.cat(parts)
        return self._task_ids

    @property
    def labels(self) -> torch.Tensor:
        """The multi-hot label of every item, float ``[length, P]`` (for ``GroupedBatchSampler``)."""
        return self._labels[self.task_ids]

    def _block(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        if block in self._buffers:
            self._buffers.move_to_end(block)
            return self._buffers[block]
        start = block * self.buffer_size
        ids = self.task_ids[start:start + self.buffer_size]
        size, gen = self.spec.size, generator_for(self.seed, "dataset", block, 1)
        inputs = torch.empty(len(ids), size, size, dtype=self._dtype)
        targets = torch.empty_like(inputs)
        for t, task in enumerate(self.tasks):
            where = (ids == t).nonzero().flatten()
            if len(where):
                grids = random_grids(len(where), generator=gen, spec=self.spec)
                inputs[where] = grids.to(self._dtype)
                targets[where] = compose(task, grids, n_colours=self.spec.n_colours).to(self._dtype)
        self._buffers[block] = (inputs, targets)
        while len(self._buffers) > self.max_buffers:
            self._buffers.popitem(last=False)
        return inputs, targets

    def __getitem__(self, i) -> dict:
        if isinstance(i, torch.Tensor) and i.numel() == 1:
            i = int(i)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.length:
            raise IndexError(f"index must be an int in 0..{self.length - 1}, got {i!r}")
        block, j = divmod(int(i), self.buffer_size)
        inputs, targets = self._block(block)
        t = self.task_ids[int(i)]
        return {"input": inputs[j].long(), "target": targets[j].long(), "primitives": self._labels[t].clone(),
                "program": self._programs[t].clone(), "task": t.clone()}


def fixed_set(tasks, n_per_task: int, seed: int, *, spec: GridSpec = GridSpec()) -> dict:
    """A fixed evaluation set: ``n_per_task`` samples of each task, task after task, as batched tensors
    (the keys of a sample, with a leading dimension ``len(tasks) * n_per_task``). A task's samples depend
    only on ``(seed, task)``, not on the other tasks or their order.

    >>> fs = fixed_set([("rotate",), ("flip_h", "shift")], 3, seed=0)
    >>> tuple(fs["input"].shape), fs["task"].tolist()
    ((6, 8, 8), [0, 0, 0, 1, 1, 1])
    """
    tasks, n = _tasks(tasks), _positive("n_per_task", n_per_task)
    parts = {"input": [], "target": [], "primitives": [], "program": []}
    for task in tasks:
        gen = generator_for(seed, "fixed", *program(task).tolist())
        grids = random_grids(n, generator=gen, spec=spec)
        parts["input"].append(grids)
        parts["target"].append(compose(task, grids, n_colours=spec.n_colours))
        parts["primitives"].append(multi_hot(task).expand(n, -1))
        parts["program"].append(program(task).expand(n, -1))
    out = {k: torch.cat(v) for k, v in parts.items()}
    out["task"] = torch.arange(len(tasks)).repeat_interleave(n)
    return out


def _group_ids(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray) and labels.ndim in (1, 2):
        if labels.ndim == 2:
            return np.unique(labels, axis=0, return_inverse=True)[1].reshape(-1)
        return np.unique(labels, return_inverse=True)[1].reshape(-1)
    if isinstance(labels, np.ndarray):
        raise ValueError(f"labels must be [N] group ids or [N, P] multi-hot rows, got shape {labels.shape}")
    keys: dict = {}
    return np.array([keys.setdefault(tuple(lab) if isinstance(lab, list) else lab, len(keys)) for lab in labels],
                    dtype=np.int64)


def _piece_sizes(n: int, size: int) -> list[int]:
    """Split ``n`` into pieces of at most ``size`` (at most ``size + 1`` when ``size == 2`` and ``n`` is odd),
    each >= 2 unless ``n == 1``, as equal as possible."""
    k = -(-n // size)
    if k > 1 and n // k < 2:
        k -= 1
    return [n // k + (i < n % k) for i in range(k)]


class GroupedBatchSampler(Sampler):
    """Index batches whose samples share a label (a multi-hot row of ``labels`` ``[N, P]``, a group id of
    ``[N]``, or any hashable per sample); every index once per epoch, in an order fixed by ``(seed, epoch)``.

    Each label's indices are shuffled and cut into pieces of ``batch_size // groups_per_batch`` (cut as
    evenly as possible, so that none has fewer than 2 samples); with ``groups_per_batch = 1`` a piece is a
    batch, otherwise pieces of different labels are packed ``groups_per_batch`` to a batch (the last
    batches may hold fewer groups). A label with a single sample makes a batch of one; when
    ``batch_size // groups_per_batch == 2`` a label with an odd count has one piece of 3. Call
    ``set_epoch(e)`` before each epoch (as with ``DistributedSampler``) for a new order.

    >>> s = GroupedBatchSampler([0, 1, 0, 1, 0, 1], batch_size=3, seed=0)
    >>> sorted(sorted(b) for b in s)
    [[0, 2, 4], [1, 3, 5]]
    """

    def __init__(self, labels, batch_size: int, seed: int, *, groups_per_batch: int = 1):
        self.group_of = _group_ids(labels)
        self.batch_size = _positive("batch_size", batch_size)
        self.groups_per_batch = _positive("groups_per_batch", groups_per_batch)
        self.piece = self.batch_size // self.groups_per_batch
        if self.piece < 2:
            raise ValueError(f"batch_size // groups_per_batch must be >= 2 (the sharing regulariser needs 2 samples "
                             f"of a group in a batch), got {batch_size} // {groups_per_batch}")
        rng_for(seed, "sampler")  # checks the seed now
        self.seed, self.epoch = seed, 0
        n_groups = int(self.group_of.max()) + 1 if len(self.group_of) else 0
        self._members = [np.flatnonzero(self.group_of == g) for g in range(n_groups)]
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def _batches(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = rng_for(self.seed, "sampler", self.epoch)
        pieces = []
        for g, members in enumerate(self._members):
            members = rng.permutation(members)
            bounds = np.cumsum([0] + _piece_sizes(len(members), self.piece))
            pieces += [(g, members[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]
        pieces = [pieces[i] for i in rng.permutation(len(pieces))]
        if self.groups_per_batch == 1:
            batches = [p for _, p in pieces]
        else:
            batches, open_ = [], []  # open_: [groups, indices] of batches that can take another group
            for g, p in pieces:
                slot = next((b for b in open_ if g not in b[0]), None)
                if slot is None:
                    slot = [set(), []]
                    open_.append(slot)
                    batches.append(slot[1])
                slot[0].add(g)
                slot[1].extend(p)
                if len(slot[0]) == self.groups_per_batch:
                    open_.remove(slot)
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self):
        return iter([list(b) for b in self._batches()])

    def __len__(self) -> int:
        return len(self._batches())
