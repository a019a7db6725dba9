"""Resumable fine-tunes: the trainable parameters, AdamW's state and the step, as safetensors + JSON.

A checkpoint is a folder ``step-NNNNNN`` holding ``trainable.safetensors`` (name -> tensor),
``optimizer.safetensors`` (``{i}.step``, ``{i}.exp_avg``, ``{i}.exp_avg_sq`` for the optimizer's i-th
parameter) and ``state.json`` (the step, the run's key, the losses so far, the parameter names in the
optimizer's order). It is written as ``step-NNNNNN.partial`` and renamed once ``state.json`` is in, so a
folder without the suffix is complete; nothing is pickled (the optimizer's state dict is rebuilt from
tensors). Only the newest complete checkpoint is kept.

>>> import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp())
>>> p = torch.nn.Parameter(torch.ones(2)); opt = torch.optim.AdamW([p], lr=0.1)
>>> p.grad = torch.ones(2); opt.step()
>>> _ = save_checkpoint(d, 1, {"p": p}, opt, {"losses": [0.5]})
>>> q = torch.nn.Parameter(torch.zeros(2)); opt2 = torch.optim.AdamW([q], lr=0.1)
>>> state = load_checkpoint(latest_checkpoint(d), {"p": q}, opt2); state["step"], q.tolist() == p.tolist()
(1, True)
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lib.errors import UserError
from lib.files import write_json

__all__ = ["CheckpointError", "checkpoint_dir", "save_checkpoint", "latest_checkpoint", "load_checkpoint",
           "clear_partial", "key_differences"]

_NAME = re.compile(r"^step-(\d{6,})$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that does not belong to this run (different settings or data) or is damaged."""


def checkpoint_dir(step: int) -> str:
    """The folder name of the checkpoint after ``step`` steps.

    >>> checkpoint_dir(20)
    'step-000020'
    """
    return f"step-{int(step):06d}"


def _optimizer_tensors(optimizer: torch.optim.Optimizer, n_params: int) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    out = {}
    for i in range(n_params):
        s = state.get(i)
        if s is None:
            continue  # a parameter that has not been stepped yet (no gradient so far)
        unknown = set(s) - {"step", "exp_avg", "exp_avg_sq"}
        if unknown:
            raise CheckpointError(f"optimizer state has keys {sorted(unknown)}; only AdamW without amsgrad is saved")
        step = s["step"] if torch.is_tensor(s["step"]) else torch.tensor(float(s["step"]))
        out[f"{i}.step"] = step.detach().reshape(()).cpu().contiguous()
        out[f"{i}.exp_avg"] = s["exp_avg"].detach().cpu().contiguous()
        out[f"{i}.exp_avg_sq"] = s["exp_avg_sq"].detach().cpu().contiguous()
    return out


def save_checkpoint(folder: Path, step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    state: dict) -> Path:
    """Write the checkpoint after ``step`` steps into ``folder`` atomically and delete older ones.

    ``params``: name -> trainable parameter, in the optimizer's parameter order; ``state``: JSON-able
    run state (key, losses, ...), stored with the step and the parameter names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_dir(step)
    tmp = folder / (final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(tmp / "trainable.safetensors"))
    save_file(_optimizer_tensors(optimizer, len(params)), str(tmp / "optimizer.safetensors"))
    write_json(tmp / "state.json", {**state, "step": int(step), "param_names": list(params)})
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    for old in folder.iterdir():
        m = _NAME.match(old.name)
        if m and int(m.group(1)) < step:
            shutil.rmtree(old, ignore_errors=True)
    return final


def clear_partial(folder: Path) -> None:
    """Remove checkpoints whose writing never finished (``*.partial``)."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob("*.partial"):
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in ``folder``, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in folder.iterdir()
            if (m := _NAME.match(p.name)) and (p / "state.json").is_file()]
    return max(done)[1] if done else None


def load_checkpoint(path: Path, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> dict:
    """Copy a checkpoint's tensors into ``params`` and ``optimizer`` (rebuilt as AdamW's state dict);
    return its ``state.json``. The parameter names must match the checkpoint's, in order."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if state.get("param_names") != list(params):
        raise CheckpointError(f"checkpoint {path} holds parameters {state.get('param_names', [])[:3]}... but this "
                              f"run trains {list(params)[:3]}...; delete {path.parent} to start afresh")
    saved = load_file(str(path / "trainable.safetensors"))
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise CheckpointError(f"checkpoint {path}: {name} has shape {tuple(saved[name].shape)}, the "
                                      f"model's is {tuple(p.shape)}")
            p.copy_(saved[name].to(p.dtype))
    opt = load_file(str(path / "optimizer.safetensors"))
    current = optimizer.state_dict()
    restored = {}
    for i, p in enumerate(params.values()):
        if f"{i}.step" in opt:
            restored[i] = {"step": opt[f"{i}.step"].clone(), "exp_avg": opt[f"{i}.exp_avg"].to(p.device),
                           "exp_avg_sq": opt[f"{i}.exp_avg_sq"].to(p.device)}
    optimizer.load_state_dict({"state": restored, "param_groups": current["param_groups"]})
    return state


def key_differences(saved: dict, wanted: dict) -> list[str]:
    """Names of the keys whose values differ between two run keys (missing counts as different).

    >>> key_differences({"lr": 1, "steps": 2}, {"lr": 1, "steps": 3, "seed": 0})
    ['seed', 'steps']
    """
    return sorted(k for k in set(saved) | set(wanted) if saved.get(k, object()) != wanted.get(k, object()))
