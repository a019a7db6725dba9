"""Tests of lib.synthetic.grid: spec order, sequential == Ray results for seeded torch work, one-line errors.

The run functions are defined at module level here so that Ray workers can import them
(``tests.synthetic.test_grid``). A local Ray start costs about 20 s here, so the Ray tests share one, started
by the same code as ``run_grid`` (``_start_ray``); shutting down a Ray that ``run_grid`` started is checked by
making it believe it started the shared one.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import lib.synthetic.grid as grid
from lib.synthetic.grid import PROJECT_ROOT, _run_here, ray_available, run_grid, worker_env

needs_ray = pytest.mark.skipif(not ray_available(), reason="Ray is not installed")


def affine(spec: dict) -> dict:
    """A deterministic run: a hand formula of the spec, and the thread count the run saw."""
    return {"index": spec["index"], "value": 3 * spec["index"] + spec.get("offset", 0),
            "threads": torch.get_num_threads()}


def train_linear(spec: dict) -> dict:
    """Real seeded torch work: a 6 -> 3 linear map fitted for 20 SGD steps to a random target map."""
    torch.manual_seed(spec["seed"])
    x, target = torch.randn(32, 6), torch.randn(6, 3)
    y = x @ target
    model = nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"])
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return {"seed": spec["seed"], "weight": model.weight.detach().flatten().tolist(),
            "bias": model.bias.detach().tolist(), "loss": loss.item(), "pid": os.getpid(),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED")}}


def _work(result: dict) -> dict:
    """A result without where it ran (process id, environment)."""
    return {k: v for k, v in result.items() if k not in ("pid", "env")}


def fail_on_two(spec: dict) -> dict:
    if spec["index"] == 2:
        raise ValueError("no column\nnamed x")
    return {"index": spec["index"]}


def test_sequential_results_in_spec_order_with_one_thread():
    specs = [{"index": i, "offset": o} for i, o in [(4, 1), (0, 0), (2, 5), (1, -3)]]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = run_grid(affine, specs, progress=False)
        assert torch.get_num_threads() == 2  # the loop restores this process's setting
    finally:
        torch.set_num_threads(threads)
    assert [r["value"] for r in results] == [13, 0, 11, 0]  # 3 * index + offset, in the order given
    assert [r["index"] for r in results] == [4, 0, 2, 1]
    assert all(r["threads"] == 1 for r in results)


def test_sequential_torch_runs_match_direct_calls_and_differ_by_seed():
    specs = [{"seed": s, "lr": 0.1} for s in (0, 1)]
    results = run_grid(train_linear, specs, progress=False)
    direct = train_linear(specs[1])
    assert results[1]["weight"] == direct["weight"] and results[1]["loss"] == direct["loss"]
    assert results[0]["weight"] != results[1]["weight"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for this module's Ray tests, started as run_grid starts one."""
    import ray

    if ray.is_initialized():
        pytest.skip("another Ray is running in this process")
    assert grid._start_ray(2, None)
    yield ray
    ray.shutdown()


@needs_ray
def test_parallel_ray_equals_sequential_exactly(local_ray):
    specs = [{"seed": s, "lr": lr} for s in (0, 1) for lr in (0.05, 0.2)]
    sequential = run_grid(train_linear, specs, progress=False)
    parallel = run_grid(train_linear, specs, workers=2, progress=False)
    assert [_work(r) for r in parallel] == [_work(r) for r in sequential]
    assert len({tuple(r["weight"]) for r in parallel}) == 4
    assert all(r["pid"] != os.getpid() for r in parallel)  # they really ran in Ray workers
    assert all(r["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"} for r in parallel)
    assert local_ray.is_initialized()  # a Ray this call did not start is left running


@needs_ray
def test_error_inside_ray_run_names_index_and_shuts_down_what_it_started(local_ray, monkeypatch):
    shutdowns = []
    monkeypatch.setattr(grid, "_start_ray", lambda workers, address: True)  # as if run_grid had started it
    monkeypatch.setattr(local_ray, "shutdown", lambda: shutdowns.append(1))
    specs = [{"index": i} for i in range(4)]
    with pytest.raises(RuntimeError, match=r'^run 2 \(spec \{"index": 2\}\) failed: ValueError: no column named x$'):
        run_grid(fail_on_two, specs, workers=2, progress=False)
    assert shutdowns == [1]


def test_error_inside_sequential_run_is_one_line_and_chained():
    specs = [{"index": i} for i in range(4)]
    with pytest.raises(RuntimeError) as info:
        run_grid(fail_on_two, specs, progress=False)
    assert str(info.value) == "run 2 (spec {\"index\": 2}) failed: ValueError: no column named x"
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("workers", [0, -1, 1.0, "2", True, None])
def test_bad_workers(workers):
    with pytest.raises(ValueError, match=r"^workers must be an integer >= 1; got"):
        run_grid(affine, [{"index": 0}], workers=workers)


def test_bad_specs_name_their_index():
    with pytest.raises(ValueError, match=r"^spec 1 must be a dict; got list"):
        run_grid(affine, [{"index": 0}, [1, 2]])
    with pytest.raises(ValueError, match=r"^spec 2 must be JSON-able"):
        run_grid(affine, [{"index": 0}, {"index": 1}, {"index": 2, "x": torch.zeros(1)}])
    with pytest.raises(ValueError, match=r"^specs must be a list of dicts; got dict"):
        run_grid(affine, {"index": 0})


def test_fn_must_be_importable():
    with pytest.raises(ValueError, match=r"top-level function .*<lambda>'$"):
        run_grid(lambda spec: spec, [{"index": 0}])


def test_result_must_be_a_dict():
    with pytest.raises(RuntimeError, match=r"^run 0 .* failed: fn returned list, not a dict$"):
        run_grid(list, [{"index": 0}], progress=False)


def test_worker_env():
    env = worker_env()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(PROJECT_ROOT)
    assert (PROJECT_ROOT / "lib" / "synthetic" / "grid.py").is_file()
    assert {k: env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED", "HF_HUB_OFFLINE")} == \
        {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1"}


def test_progress_bar_counts_finished_runs():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    _run_here(affine, [{"index": i} for i in range(3)], bar)
    assert bar.n == 3


@needs_ray
def test_phase_runs_on_ray_equal_the_sequential_ones(local_ray, tmp_path):
    """The real phase-07 runs (train, evaluate, representations) give the same records on Ray as in a loop."""
    from tests.synthetic.test_experiment import tiny_spec

    def specs(root):
        return [tiny_spec(root / f"r{s}-{a}", seed=s, alpha=a) for s in (0, 1) for a in (0.0, 0.5)]

    seq = run_grid(run_tiny_phase, specs(tmp_path / "seq"), progress=False)
    par = run_grid(run_tiny_phase, specs(tmp_path / "par"), workers=2, progress=False)
    assert [_record(r) for r in par] == [_record(r) for r in seq]
    assert len({r["in_distribution"]["iou"] for r in seq} | {r["few_shot"]["auc"] for r in seq}) > 1


def run_tiny_phase(spec: dict) -> dict:
    from lib.synthetic.experiment import run_one
    import numpy as np

    record = run_one(spec)
    record["h_sum"] = float(np.load(f"{spec['out_dir']}/h.npy").astype("float64").sum())
    return record


def _record(r: dict) -> dict:
    """A record without what may differ between the two runs: folders and timings."""
    train = {k: v for k, v in (r["train"] or {}).items() if k not in ("train_seconds", "steps_per_s")}
    return {"train": train, "in": r["in_distribution"], "zero": r["zero_shot"], "few": r["few_shot"],
            "h_sum": r["h_sum"]}
