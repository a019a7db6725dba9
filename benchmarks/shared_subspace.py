"""Shared-subspace benchmark (phase 07): training steps/s of the default configuration, the sharing regulariser's
cost as a fraction of a step, and the wall time of a small seeds x conditions grid with 1 and 2 workers.

(steps/s)   lib.synthetic.train on the default run's model and batches (params/07_shared_subspace.yaml), one
            thread, the regulariser off and on (alpha > 0 from the first step), after a warm-up.
(cost)      (step time on - step time off) / step time on: the share of a step the regulariser takes (target
            <= 0.25). Also the regulariser alone (forward + backward of sharing_loss on a batch's h).
(grid)      run_grid over 4 runs (2 seeds x off/on) of --grid-steps steps each, with 1 worker (a loop in this
            process) and with 2 workers (a local Ray, its start included), and their ratio.

Usage: .venv/bin/python benchmarks/shared_subspace.py [--steps 300] [--grid-steps 300] [--skip-grid]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from lib.phases.shared_subspace import SharedConfig, run_specs
from lib.synthetic.experiment import _model, _train_config, build_split, run_one
from lib.synthetic.grid import run_grid
from lib.synthetic.losses import sharing_loss
from lib.synthetic.train import train

PARAMS = Path(__file__).resolve().parents[1] / "params" / "07_shared_subspace.yaml"


def default_config(**overrides) -> SharedConfig:
    params = yaml.safe_load(PARAMS.read_text())
    keys = set(SharedConfig.__dataclass_fields__)
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items() if k in keys}
    return SharedConfig(**{**kw, **overrides})


def steps_per_s(config: SharedConfig, alpha: float, steps: int, root: Path) -> float:
    spec = run_specs(config, root)[0]
    spec["train"].update(alpha=alpha, alpha_start=0, alpha_end=0, steps=steps, eval_every=steps,
                         checkpoint_every=0)
    model = _model(spec)
    result = train(model, build_split(spec).train, _train_config(spec), root / f"alpha{alpha}", progress=False)
    warm = result.history[20:]  # the first steps pay for allocations
    return len(warm) / sum(r["seconds"] for r in warm)


def regulariser_alone(config: SharedConfig, repeats: int = 50) -> float:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(config.batch_size, config.d_bottleneck, generator=g, requires_grad=True)
    groups = torch.arange(config.batch_size) % config.groups_per_batch
    t0 = time.perf_counter()
    for _ in range(repeats):
        sharing_loss(h, groups, config.sharing_k).loss.backward()
    return (time.perf_counter() - t0) / repeats


def grid_seconds(config: SharedConfig, workers: int, root: Path) -> float:
    specs = [s for s in run_specs(config, root) if s["seed"] < 2]
    t0 = time.perf_counter()
    run_grid(run_one, specs, workers=workers, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--grid-steps", type=int, default=300)
    ap.add_argument("--skip-grid", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = default_config()
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"model: {config.encoders[0]}, d_model {config.d_model}, "
          f"{config.n_layers} layers, h {config.d_bottleneck}; batch {config.batch_size} "
          f"({config.groups_per_batch} groups), sharing k {config.sharing_k}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        off = steps_per_s(config, 0.0, args.steps, root)
        on = steps_per_s(config, config.alpha, args.steps, root)
        alone = regulariser_alone(config)
        cost = (1 / on - 1 / off) / (1 / on)
        print(f"training steps/s: regulariser off {off:.1f}, on {on:.1f}")
        print(f"regulariser cost: {cost:.1%} of a step (target <= 25%); alone {alone * 1e3:.2f} ms "
              f"({alone * on:.1%} of a step on)")
        if not args.skip_grid:
            small = default_config(train_steps=args.grid_steps)
            one = grid_seconds(small, 1, root / "w1")
            two = grid_seconds(small, 2, root / "w2")
            print(f"grid of 4 runs x {args.grid_steps} steps: 1 worker {one:.1f} s, 2 workers (Ray) {two:.1f} s, "
                  f"speed-up {one / two:.2f}x")


if __name__ == "__main__":
    main()
