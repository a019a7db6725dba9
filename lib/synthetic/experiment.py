"""One run of the shared-subspace experiment, as a JSON-able spec in and a JSON-able record out, so that the
seeds x conditions grid can go through ``lib.synthetic.grid.run_grid`` (sequentially or on Ray).

``run_one(spec)`` builds the task split and the model, trains it (``lib.synthetic.train``; a run folder that
already holds a finished training is loaded, an interrupted one resumes; ``untrained: true`` skips training,
the untrained-encoder control), then measures it: in-distribution accuracy and IoU on fresh samples of the
training tasks, zero-shot accuracy and IoU on the unseen length-3 compositions, few-shot LoRA adaptation to
other unseen compositions, and it saves the representations the phase analyses as npy files in the run folder:

- ``h.npy`` [N, d_bottleneck]: the bottleneck on the analysis set (``n_analysis_per_task`` fresh samples of
  every training task, task after task, the order of ``analysis_rows``);
- ``layers.npy`` [n_layers, N, d_model]: each encoder layer's output, mean-pooled, on the same rows;
- ``shared_h.npy`` [n_single, n_shared, d_bottleneck]: h of the same ``n_shared`` input grids under each
  single-primitive program (so that CKA can compare task groups on identical inputs).

The spec's keys: ``name``, ``seed``, ``out_dir``, ``untrained``, ``model`` (ModelConfig keywords but
``n_primitives``), ``train`` (TrainConfig keywords, ``spec`` as a dict of GridSpec keywords), ``split``
(make_splits keywords and ``seed``), ``fewshot`` (FewShotConfig keywords), ``n_eval_per_task``,
``n_analysis_per_task``, ``n_shared``, ``eval_seed``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from lib.files import write_json
from lib.synthetic.data import fixed_set
from lib.synthetic.evaluate import FewShotConfig, evaluate_set, few_shot, zero_shot
from lib.synthetic.models import GridModel, ModelConfig
from lib.synthetic.primitives import PRIMITIVES, compose
from lib.synthetic.tasks import GridSpec, generator_for, make_splits, program, random_grids
from lib.synthetic.train import TrainConfig, load_weights, train

__all__ = ["run_one", "build_split", "analysis_rows", "shared_inputs"]


def build_split(spec: dict):
    """The run's task split (the same for every seed of a grid: ``spec["split"]["seed"]``)."""
    s = dict(spec["split"])
    return make_splits(s.pop("seed"), **s, spec=GridSpec(**spec["train"].get("spec", {})))


def analysis_rows(split, n_per_task: int, seed: int, grid_spec: GridSpec) -> dict:
    """The analysis set: ``n_per_task`` fresh samples of every training task (a seed stream of its own)."""
    return fixed_set(split.train, n_per_task, seed=seed + 104_729, spec=grid_spec)


def shared_inputs(n: int, seed: int, grid_spec: GridSpec) -> torch.Tensor:
    """``n`` input grids shared by every single-primitive program (for task-group CKA)."""
    return random_grids(n, generator=generator_for(seed, "shared-inputs"), spec=grid_spec)


def _model(spec: dict) -> GridModel:
    config = ModelConfig(n_primitives=len(PRIMITIVES), **{**spec["model"], "seed": spec["seed"]})
    return GridModel(config, seed=spec["seed"])


def _train_config(spec: dict) -> TrainConfig:
    kw = dict(spec["train"])
    kw["spec"] = GridSpec(**kw.get("spec", {}))
    return TrainConfig(**{**kw, "seed": spec["seed"]})


@torch.no_grad()
def _representations(model: GridModel, rows: dict, shared: torch.Tensor, batch: int = 512) -> dict:
    model.eval()
    hs, layers = [], []
    for a in range(0, len(rows["input"]), batch):
        x, p = rows["input"][a:a + batch], rows["program"][a:a + batch]
        h, per_layer = model.encode_with_layers(x, p)
        hs.append(h)
        layers.append(torch.stack(per_layer))
    single = []
    for name in PRIMITIVES:
        prog = program((name,)).expand(len(shared), -1)
        single.append(model.encode(shared, prog))
    return {"h": torch.cat(hs).numpy(), "layers": torch.cat(layers, dim=1).numpy(),
            "shared_h": torch.stack(single).numpy()}


def _check_shared_targets(shared: torch.Tensor, grid_spec: GridSpec) -> None:
    # every single primitive must change most shared inputs, or their CKA would compare near-identities
    for name in PRIMITIVES:
        same = (compose((name,), shared, n_colours=grid_spec.n_colours) == shared).flatten(1).all(1).float().mean()
        if same > 0.5:
            raise ValueError(f"primitive {name} leaves {float(same):.0%} of the shared inputs unchanged; "
                             f"use denser grids (GridSpec)")


def run_one(spec: dict) -> dict:
    """Train (or load) and measure one run; return its record (JSON-able) and write it to
    ``out_dir/record.json``. A folder holding a record of the same spec is read, not recomputed."""
    out = Path(spec["out_dir"])
    record_path = out / "record.json"
    if record_path.is_file():
        old = json.loads(record_path.read_text())
        if old.get("spec") == spec:
            return old
        raise ValueError(f"{out} holds a run of another spec; use another results folder")
    t0 = time.perf_counter()
    split = build_split(spec)
    model = _model(spec)
    config = _train_config(spec)
    trained = None
    if not spec.get("untrained"):
        run_dir = out / "train"
        if (run_dir / "summary.json").is_file():
            load_weights(model, run_dir / "final.safetensors")
            trained = json.loads((run_dir / "summary.json").read_text())
        else:
            trained = train(model, split.train, config, run_dir, progress=False).summary()
    grid_spec = config.spec
    eval_seed = int(spec["eval_seed"])
    in_dist = evaluate_set(model, fixed_set(split.train, spec["n_eval_per_task"], seed=eval_seed + 1, spec=grid_spec))
    zero = zero_shot(model, split.test, n_per_task=spec["n_eval_per_task"], seed=eval_seed + 2, spec=grid_spec)
    fs = few_shot(model, split.fewshot, FewShotConfig(**{**spec["fewshot"], "seed": spec["seed"]}), spec=grid_spec)
    shared = shared_inputs(spec["n_shared"], eval_seed, grid_spec)
    _check_shared_targets(shared, grid_spec)
    reps = _representations(model, analysis_rows(split, spec["n_analysis_per_task"], eval_seed, grid_spec), shared)
    out.mkdir(parents=True, exist_ok=True)
    for name, array in reps.items():
        np.save(out / f"{name}.npy", array.astype(np.float32))
    record = {"spec": spec, "name": spec["name"], "seed": spec["seed"], "train": trained,
              "in_distribution": {k: in_dist[k] for k in ("accuracy", "iou")},
              "zero_shot": {k: zero[k] for k in ("accuracy", "iou")}, "zero_shot_per_task": zero["per_task"],
              "few_shot": fs.to_dict(), "model_config": asdict(model.config), "seconds": time.perf_counter() - t0,
              "files": sorted(f"{n}.npy" for n in reps)}
    write_json(record_path, record)
    return json.loads(record_path.read_text())
