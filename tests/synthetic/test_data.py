"""The on-the-fly dataset, the fixed sets and the grouped batch sampler, against direct recomputation and counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch.utils.data import DataLoader

from lib.synthetic.data import GridTaskDataset, GroupedBatchSampler, fixed_set
from lib.synthetic.primitives import compose
from lib.synthetic.tasks import compositions, make_splits, multi_hot, program

TASKS = make_splits(0, n_test=2, n_fewshot=0).train  # 36 tasks, 21 labels


@pytest.fixture(scope="module")
def dataset():
    return GridTaskDataset(TASKS, seed=5, length=300, buffer_size=64)


def test_every_item_is_its_task_applied_to_its_input_with_the_right_label(dataset):
    for i in range(0, 300, 7):
        s = dataset[i]
        task = TASKS[int(s["task"])]
        assert s["input"].dtype == torch.long and s["input"].shape == (8, 8)
        assert torch.equal(s["target"], compose(task, s["input"]))
        assert torch.equal(s["primitives"], multi_hot(task)) and torch.equal(s["program"], program(task))
        assert torch.equal(dataset.labels[i], multi_hot(task))
    assert not torch.equal(dataset[0]["input"], dataset[1]["input"])


def test_tasks_are_balanced_and_shuffled_within_blocks(dataset):
    counts = torch.bincount(dataset.task_ids, minlength=len(TASKS)).numpy()
    assert counts.sum() == 300 and counts.max() - counts.min() <= 1
    assert chisquare(counts).pvalue > 0.99
    assert not torch.equal(dataset.task_ids, torch.arange(300) % len(TASKS))
    for start in range(0, 300, 64):  # each block holds the tasks of its global indices, permuted
        block = dataset.task_ids[start:start + 64]
        assert sorted(block.tolist()) == sorted(((start + torch.arange(len(block))) % len(TASKS)).tolist())
    # the chi-square test itself sees an imbalance of this size
    assert chisquare(np.bincount(np.r_[np.arange(300) % 36, np.zeros(40, int)])).pvalue < 0.01


def test_same_seed_same_samples_whatever_the_access_order_and_buffer(dataset):
    again = GridTaskDataset(TASKS, seed=5, length=300, buffer_size=64, max_buffers=1)
    for i in (299, 3, 150, 3, 64, 299):  # evicts and regenerates blocks
        a, b = dataset[i], again[i]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(again._buffers) == 1
    other = GridTaskDataset(TASKS, seed=6, length=300, buffer_size=64)
    assert not torch.equal(torch.stack([other[i]["input"] for i in range(20)]),
                           torch.stack([dataset[i]["input"] for i in range(20)]))


def test_dataset_refuses_bad_arguments():
    with pytest.raises(ValueError, match="tasks is empty"):
        GridTaskDataset([], seed=0, length=4)
    with pytest.raises(ValueError, match="repeated"):
        GridTaskDataset([("rotate",), ("rotate",)], seed=0, length=4)
    with pytest.raises(ValueError, match="length must be a positive int"):
        GridTaskDataset([("rotate",)], seed=0, length=0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        GridTaskDataset([("rotate",)], seed=-2, length=4)
    with pytest.raises(IndexError, match="0..3"):
        GridTaskDataset([("rotate",)], seed=0, length=4)[4]


def test_fixed_set_has_n_per_task_and_depends_only_on_seed_and_task():
    tasks = compositions(3)[:4]
    fs = fixed_set(tasks, 5, seed=2)
    assert fs["input"].shape == (20, 8, 8) and fs["primitives"].shape == (20, 6) and fs["program"].shape == (20, 3)
    assert torch.bincount(fs["task"]).tolist() == [5, 5, 5, 5]
    for j, task in enumerate(tasks):
        rows = fs["task"] == j
        assert torch.equal(fs["target"][rows], compose(task, fs["input"][rows]))
        assert torch.equal(fs["primitives"][rows], multi_hot(task).expand(5, -1))
    swapped = fixed_set(tasks[::-1], 5, seed=2)
    assert torch.equal(swapped["input"][:5], fs["input"][15:])
    assert torch.equal(fixed_set(tasks, 5, seed=2)["target"], fs["target"])
    assert not torch.equal(fixed_set(tasks, 5, seed=3)["input"], fs["input"])


def _check_epoch(batches, labels, batch_size, groups_per_batch):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(labels))), "every index exactly once"
    for b in batches:
        rows = labels[b]
        groups, counts = torch.unique(rows, dim=0, return_counts=True)
        assert len(groups) <= groups_per_batch
        assert bool((counts >= 2).all()), f"a group with < 2 samples in batch {b}"
        assert len(b) <= batch_size


@pytest.mark.parametrize("batch_size,groups_per_batch", [(8, 1), (12, 3), (5, 1)])
def test_sampler_batches_are_homogeneous_and_cover_every_index_once(dataset, batch_size, groups_per_batch):
    sampler = GroupedBatchSampler(dataset.labels, batch_size, seed=1, groups_per_batch=groups_per_batch)
    batches = list(sampler)
    assert len(sampler) == len(batches)
    _check_epoch(batches, dataset.labels, batch_size, groups_per_batch)
    if groups_per_batch > 1:
        full = sum(len(torch.unique(dataset.labels[b], dim=0)) == groups_per_batch for b in batches)
        assert full >= 0.8 * len(batches)


def test_sampler_order_is_fixed_by_seed_and_epoch(dataset):
    first = list(GroupedBatchSampler(dataset.labels, 8, seed=1))
    assert first == list(GroupedBatchSampler(dataset.labels, 8, seed=1))
    sampler = GroupedBatchSampler(dataset.labels, 8, seed=1)
    assert list(sampler) == first  # iterating again without set_epoch repeats the epoch
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(GroupedBatchSampler(dataset.labels, 8, seed=2)) != first


def test_sampler_edge_cases_keep_two_per_group():
    labels = [0] * 5 + [1] * 3 + [2]  # odd groups with pieces of 2, and a label with one sample
    batches = list(GroupedBatchSampler(labels, 2, seed=0))
    assert sorted(map(len, batches)) == [1, 2, 3, 3]
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert all(len({labels[i] for i in b}) == 1 for b in batches)
    rows = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    assert sorted(sorted(b) for b in GroupedBatchSampler(rows, 4, seed=0)) == [[0, 2], [1, 3]]
    with pytest.raises(ValueError, match="needs 2 samples of a group"):
        GroupedBatchSampler(labels, 5, seed=0, groups_per_batch=3)
    with pytest.raises(ValueError, match=r"\[N\] group ids or \[N, P\]"):
        GroupedBatchSampler(np.zeros((2, 2, 2)), 4, seed=0)


def test_dataloader_with_the_sampler_gives_label_homogeneous_batches(dataset):
    loader = DataLoader(dataset, batch_sampler=GroupedBatchSampler(dataset.labels, 6, seed=0))
    seen = 0
    for batch in loader:
        assert batch["input"].shape[1:] == (8, 8) and batch["task"].dtype == torch.long
        assert bool((batch["primitives"] == batch["primitives"][0]).all())
        assert torch.equal(batch["target"], torch.stack([compose(TASKS[int(t)], x)
                                                         for t, x in zip(batch["task"], batch["input"])]))
        seen += len(batch["task"])
    assert seen == len(dataset)
