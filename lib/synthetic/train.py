"""Training of one grid model: task loss + alpha * sharing regulariser + beta * primitive head (+ gamma * SAE),
with per-step CSV logs, gradient clipping, mixed precision where the device has it, the best-validation
checkpoint and resume after a kill with the same final weights as an uninterrupted run.

The loss at step t (``lib.synthetic.losses``): ``task_loss(logits, target, kind) + alpha_t * sharing(h, groups)
+ beta_t * BCE(primitive_logits, multi-hot) + gamma_t * SAE(h)``, where each weight is its value times
``schedule(t, start, end, kind)``. ``alpha = 0`` skips the regulariser (no SVD is computed); ``gamma = 0``
builds no SAE. Batches come from ``GroupedBatchSampler`` (``groups_per_batch`` multi-hot labels per batch, so
the regulariser has groups to compare) over a ``GridTaskDataset`` materialised once; the batch at a step is a
function of ``(seed, epoch, position)`` alone, which is what makes resuming exact.

A run folder holds ``steps.csv`` (one row per step: losses, weights, learning rate, gradient norm, step
seconds), ``eval.csv`` (validation accuracy and IoU every ``eval_every`` steps), ``best.safetensors`` (the
weights of the best validation IoU), ``final.safetensors``, ``summary.json`` and, while it runs,
``checkpoints/step-NNNNNN`` (``lib.finetune.checkpoints``: weights, AdamW state, sampler position, logs so
far), removed when the run completes. Resuming truncates the logs to the checkpoint's step.

>>> import tempfile, pathlib
>>> from lib.synthetic.tasks import make_splits
>>> tasks = make_splits(0, n_test=1, n_fewshot=0).train[:4]
>>> cfg = TrainConfig(steps=3, batch_size=8, groups_per_batch=2, samples_per_task=8, eval_every=3,
...                   n_val_per_task=2, alpha=0.1)
>>> model = GridModel(ModelConfig(n_primitives=6, d_model=16, n_layers=1, n_heads=2, d_bottleneck=8))
>>> out = train(model, tasks, cfg, pathlib.Path(tempfile.mkdtemp()) / "run", progress=False)
>>> out.steps, len(out.history), sorted(out.history[0]) == sorted(STEP_COLUMNS)
(3, 3, True)
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lib.files import write_json
from lib.finetune.checkpoints import (CheckpointError, clear_partial, key_differences, latest_checkpoint,
                                      load_checkpoint, save_checkpoint)
from lib.settings import progress_bar
from lib.synthetic.data import GridTaskDataset, GroupedBatchSampler, fixed_set
from lib.synthetic.evaluate import evaluate_set
from lib.synthetic.losses import ProjectionEMA, schedule, sharing_loss, task_loss
from lib.synthetic.models import GridModel, ModelConfig
from lib.synthetic.sae import SparseAutoencoder, sae_loss
from lib.synthetic.tasks import GridSpec

__all__ = ["TrainConfig", "TrainResult", "train", "load_weights", "STEP_COLUMNS", "EVAL_COLUMNS"]

STEP_COLUMNS = ("step", "loss", "task", "sharing", "aux", "sae", "alpha", "beta", "gamma", "lr", "grad_norm",
                "n_groups", "n_unstable", "seconds")
EVAL_COLUMNS = ("step", "val_accuracy", "val_iou")
AMP = ("auto", "off", "bf16", "fp16")
SCHEDULES = ("constant", "step", "linear", "cosine")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of one training run. Weights ``alpha`` (sharing), ``beta`` (primitive head), ``gamma`` (SAE on
    h) are multiplied by ``schedule(step, *_start, *_end, *_schedule)``; the learning rate warms up linearly
    over ``warmup`` steps, then follows a half cosine to 0. ``samples_per_task``: the dataset's size per task
    (epochs repeat it in new orders); ``sharing_k``: the PCA rank of each group; ``sharing_ema``: None or the
    EMA momentum of the other groups' projections; ``amp``: ``auto`` (bf16 autocast on a CUDA device that has
    it, off on CPU), ``off``, ``bf16`` or ``fp16``."""

    steps: int = 1500
    batch_size: int = 64
    groups_per_batch: int = 4
    samples_per_task: int = 512
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    loss: str = "ce"
    alpha: float = 0.0
    alpha_start: int = 0
    alpha_end: int = 0
    alpha_schedule: str = "linear"
    sharing_k: int = 4
    sharing_detach: bool = False
    sharing_ema: float | None = None
    beta: float = 0.1
    beta_start: int = 0
    beta_end: int = 0
    beta_schedule: str = "constant"
    gamma: float = 0.0
    gamma_start: int = 0
    gamma_end: int = 0
    gamma_schedule: str = "constant"
    sae_k: int = 256
    sae_l1: float = 1e-3
    eval_every: int = 250
    n_val_per_task: int = 16
    checkpoint_every: int = 250
    amp: str = "auto"
    device: str = "cpu"
    seed: int = 0
    spec: GridSpec = field(default_factory=GridSpec)

    def __post_init__(self):
        for name in ("steps", "batch_size", "groups_per_batch", "samples_per_task", "sharing_k", "sae_k",
                     "eval_every", "n_val_per_task"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        for name in ("warmup", "checkpoint_every", "seed", "alpha_start", "alpha_end", "beta_start", "beta_end",
                     "gamma_start", "gamma_end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {v!r}")
        for name in ("lr", "weight_decay", "grad_clip", "alpha", "beta", "gamma", "sae_l1"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if self.loss not in ("ce", "iou"):
            raise ValueError(f"loss must be 'ce' or 'iou'; got {self.loss!r}")
        if self.amp not in AMP:
            raise ValueError(f"amp must be one of {AMP}; got {self.amp!r}")
        for name in ("alpha", "beta", "gamma"):
            if getattr(self, f"{name}_schedule") not in SCHEDULES:
                raise ValueError(f"{name}_schedule must be one of {SCHEDULES}; got "
                                 f"{getattr(self, f'{name}_schedule')!r}")
        if self.sharing_ema is not None and not 0 <= self.sharing_ema < 1:
            raise ValueError(f"sharing_ema must be None or in [0, 1); got {self.sharing_ema!r}")
        if self.batch_size // self.groups_per_batch < 2:
            raise ValueError(f"batch_size // groups_per_batch must be >= 2; got {self.batch_size} // "
                             f"{self.groups_per_batch}")

    def key(self) -> dict:
        """What must match for a checkpoint to belong to this run (everything but the logging cadence)."""
        d = asdict(self)
        d["spec"] = asdict(self.spec)
        d.pop("checkpoint_every")
        return d

    def weight(self, name: str, step: int) -> float:
        """``alpha``, ``beta`` or ``gamma`` at ``step``, schedule applied."""
        return float(getattr(self, name)) * schedule(step, getattr(self, f"{name}_start"),
                                                     getattr(self, f"{name}_end"), getattr(self, f"{name}_schedule"))

    def lr_at(self, step: int) -> float:
        """Linear warmup over ``warmup`` steps, then a half cosine from ``lr`` to 0 at ``steps``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.steps - self.warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / span)))


@dataclass
class TrainResult:
    """A finished run: the model with its final weights, the per-step history (dicts of ``STEP_COLUMNS``),
    the validation history, the best validation IoU and its step, and timing (steps/s counts training steps
    only, summed over resumes; ``resumed_from`` the step this process started from)."""

    model: GridModel
    steps: int
    history: list[dict]
    evals: list[dict]
    best_val_iou: float
    best_step: int
    final_val_accuracy: float
    final_val_iou: float
    train_seconds: float
    steps_per_s: float
    resumed_from: int = 0
    sae: SparseAutoencoder | None = None

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in ("steps", "best_val_iou", "best_step", "final_val_accuracy",
                                              "final_val_iou", "train_seconds", "steps_per_s", "resumed_from")}


def _autocast(config: TrainConfig, device: torch.device):
    kind = config.amp
    if kind == "auto":
        kind = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if kind == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if kind == "bf16" else torch.float16)


def _materialise(tasks, config: TrainConfig) -> tuple[dict, torch.Tensor]:
    ds = GridTaskDataset(tasks, seed=config.seed, length=len(tasks) * config.samples_per_task, spec=config.spec)
    samples = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}, ds.labels


def _batches(sampler: GroupedBatchSampler, epoch: int, position: int):
    """Batches from ``(epoch, position)`` on, forever, with the (epoch, position) after each."""
    while True:
        sampler.set_epoch(epoch)
        order = list(sampler)
        for i in range(position, len(order)):
            yield order[i], (epoch, i + 1)
        epoch, position = epoch + 1, 0


def _write_csv(path: Path, columns, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _append_csv(path: Path, columns, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        if new:
            w.writeheader()
        w.writerow(row)


def _save_weights(module: torch.nn.Module, path: Path) -> None:
    """A module's state dict as safetensors, written aside and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    tmp.replace(path)


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load ``best.safetensors`` / ``final.safetensors`` into ``model`` (strict: the names must match)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}; train the run first")
    model.load_state_dict(load_file(str(path)))
    return model


def train(model: GridModel, tasks, config: TrainConfig, out_dir: Path, *, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Train ``model`` in place on ``tasks`` (compositions) with ``config``, logging into ``out_dir``.

    Resumes from ``out_dir/checkpoints`` when a checkpoint of the same settings, tasks and model is there
    (another run's checkpoint is an error naming the settings that differ). ``stop_after``: leave after that
    many steps, as a kill would (for tests). Returns a TrainResult; with ``stop_after`` it describes the
    partial run."""
    out_dir = Path(out_dir)
    device = torch.device(config.device)
    model.to(device).train()
    tasks = [tuple(t) for t in tasks]
    key = {**config.key(), "tasks": [list(t) for t in tasks],
           **{f"model.{k}": v for k, v in asdict(model.config).items()}}
    pool, labels = _materialise(tasks, config)
    val = fixed_set(tasks, config.n_val_per_task, seed=config.seed + 7919, spec=config.spec)
    sampler = GroupedBatchSampler(labels, config.batch_size, config.seed, groups_per_batch=config.groups_per_batch)
    sae = SparseAutoencoder(d_in=model.config.d_bottleneck, k=config.sae_k, seed=config.seed).to(device) \
        if config.gamma > 0 else None
    params = {f"model.{k}": p for k, p in model.named_parameters()}
    if sae is not None:
        params.update({f"sae.{k}": p for k, p in sae.named_parameters()})
    opt = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    ema = ProjectionEMA(config.sharing_ema) if config.sharing_ema is not None else None

    ckpts = out_dir / "checkpoints"
    clear_partial(ckpts)
    state = {"step": 0, "epoch": 0, "position": 0, "best_val_iou": -1.0, "best_step": -1, "train_seconds": 0.0}
    history, evals = [], []
    latest = latest_checkpoint(ckpts)
    if latest is not None:
        saved = json.loads((latest / "state.json").read_text())
        diff = key_differences(saved.get("key", {}), key)
        if diff:
            raise CheckpointError(f"{ckpts} holds a run with other settings ({', '.join(diff)}); use another "
                                  f"out_dir or delete {ckpts} to start afresh")
        state = load_checkpoint(latest, params, opt)
        if ema is not None:
            ema.load_state_dict(load_file(str(latest / "ema.safetensors")))
        history, evals = state.pop("history"), state.pop("evals")
    elif out_dir.exists() and any(out_dir.iterdir()):
        done = out_dir / "summary.json"
        hint = "it holds a finished run" if done.exists() else "it is not empty"
        raise ValueError(f"out_dir {out_dir}: {hint} and has no checkpoint to resume; choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "steps.csv", STEP_COLUMNS, history)  # drops rows logged after the checkpoint
    _write_csv(out_dir / "eval.csv", EVAL_COLUMNS, evals)
    start = state["step"]
    batches = _batches(sampler, state["epoch"], state["position"])
    bar = progress_bar(total=config.steps, initial=start, desc="train", disable=not progress, leave=False)
    train_seconds = state["train_seconds"]
    try:
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            idx, (epoch, position) = next(batches)
            batch = {k: v[idx].to(device) for k, v in pool.items()}
            for g in opt.param_groups:
                g["lr"] = config.lr_at(step)
            alpha, beta, gamma = (config.weight(n, step) for n in ("alpha", "beta", "gamma"))
            with _autocast(config, device):
                out = model(batch["input"], batch["program"])
            h = out.h.float()
            l_task = task_loss(out.logits.float(), batch["target"], config.loss)
            l_aux = F.binary_cross_entropy_with_logits(out.primitive_logits.float(), batch["primitives"])
            loss = l_task + beta * l_aux
            row = {"sharing": "", "n_groups": "", "n_unstable": "", "sae": ""}
            if config.alpha > 0:
                share = sharing_loss(h, batch["primitives"], config.sharing_k, detach=config.sharing_detach, ema=ema)
                loss = loss + alpha * share.loss
                row.update(sharing=share.loss.item(), n_groups=share.n_groups, n_unstable=share.n_unstable)
            if sae is not None:
                recon, z = sae(h)
                l_sae = sae_loss(h, recon, z, config.sae_l1)
                loss = loss + gamma * l_sae.total
                row["sae"] = l_sae.total.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()),
                                                       config.grad_clip if config.grad_clip > 0 else float("inf"))
            opt.step()
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            row.update(step=step + 1, loss=loss.item(), task=l_task.item(), aux=l_aux.item(), alpha=alpha, beta=beta,
                       gamma=gamma, lr=opt.param_groups[0]["lr"], grad_norm=float(grad_norm), seconds=seconds)
            history.append(row)
            _append_csv(out_dir / "steps.csv", STEP_COLUMNS, row)
            done = step + 1
            if done % config.eval_every == 0 or done == config.steps:
                scores = evaluate_set(model, val)
                acc, iou = scores["accuracy"], scores["iou"]
                evals.append({"step": done, "val_accuracy": acc, "val_iou": iou})
                _append_csv(out_dir / "eval.csv", EVAL_COLUMNS, evals[-1])
                if iou > state["best_val_iou"]:
                    state.update(best_val_iou=iou, best_step=done)
                    _save_weights(model, out_dir / "best.safetensors")
            bar.update(1)
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                run_state = {"key": key, "epoch": epoch, "position": position, "best_val_iou": state["best_val_iou"],
                             "best_step": state["best_step"], "train_seconds": train_seconds,
                             "history": history, "evals": evals}
                path = save_checkpoint(ckpts, done, params, opt, run_state)
                if ema is not None:
                    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(path / "ema.safetensors"))
            if stop_after is not None and done >= stop_after:
                break
    finally:
        bar.close()
    steps_run = len(history)
    result = TrainResult(model=model, steps=steps_run, history=history, evals=evals,
                         best_val_iou=state["best_val_iou"], best_step=state["best_step"],
                         final_val_accuracy=evals[-1]["val_accuracy"] if evals else float("nan"),
                         final_val_iou=evals[-1]["val_iou"] if evals else float("nan"),
                         train_seconds=train_seconds, steps_per_s=steps_run / train_seconds if train_seconds else 0.0,
                         resumed_from=start, sae=sae)
    if steps_run < config.steps:
        return result
    _save_weights(model, out_dir / "final.safetensors")
    if sae is not None:
        _save_weights(sae, out_dir / "sae.safetensors")
    write_json(out_dir / "summary.json", {**result.summary(), "key": key})
    shutil.rmtree(ckpts, ignore_errors=True)
    return result
