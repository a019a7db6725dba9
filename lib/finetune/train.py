"""A short, seeded, resumable fine-tune on the emotion-label objective (LoRA through peft, or full).

Each step draws its batch from the seed alone (epoch e's order is ``numpy.random.default_rng([seed,
e]).permutation(n)``, and step k takes stream positions ``k * batch_size ...``), seeds torch with
``(seed, k)`` for any dropout, runs one forward and one backward over ``batch_size`` rows (the mean
cross-entropy over the answer tokens, ``lib.finetune.objective.answer_loss``) and one AdamW step. So
a run resumed from a checkpoint ends with the same weights, bit for bit, as one never interrupted.

The run works in ``<out_dir>.partial`` (its ``checkpoints/`` folder is where it resumes from) and
renames it to ``out_dir`` when the merged model (``save_pretrained``: safetensors, loadable as a
``local`` model), the tokenizer and ``manifest.json`` are in. An ``out_dir`` whose manifest matches the
run is reused, not retrained; a folder this code did not make is never overwritten. The caller's model
is not modified (the fine-tune runs on a copy).

>>> from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
>>> from lib.finetune.objective import encode_examples
>>> import tempfile, pathlib; out = pathlib.Path(tempfile.mkdtemp()) / "ft"
>>> tok = build_tiny_tokenizer(); ex = encode_examples(tok, ["Thanks!", "Sorry."], ["gratitude", "apology"])
>>> r = finetune(build_tiny_model("tiny-llama"), tok, ex, FinetuneConfig(steps=2, batch_size=2), out)
>>> len(r.losses), r.manifest["weights_sha256"] == r.weights_sha256, (out / "model.safetensors").exists()
(2, True, True)
"""
from __future__ import annotations

import copy
import importlib.metadata
import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib.files import write_json
from lib.finetune.checkpoints import (CheckpointError, clear_partial, key_differences, latest_checkpoint,
                                      load_checkpoint, save_checkpoint)
from lib.finetune.config import FinetuneConfig, FinetuneError, lr_factor, resolve_targets
from lib.finetune.objective import Examples, answer_loss, batch_tensors
from lib.models.weights import state_dict_sha256

__all__ = ["FinetuneResult", "finetune", "batch_indices", "step_seed", "prepare_model", "merged_model",
           "drop_quantizer", "run_key", "MANIFEST", "PACKAGES"]

MANIFEST = "manifest.json"
RUN_FILE = "run.json"  # in the work folder: this run's key, written first (marks the folder as ours)
PACKAGES = ("torch", "transformers", "peft", "safetensors", "numpy")


@dataclass(eq=False)
class FinetuneResult:
    """The merged fine-tuned model (eval mode) and what the run recorded."""

    model: object
    losses: list[float]          # training loss of each step (mean cross-entropy over the batch's answer tokens)
    tokens_seen: int             # real tokens (prompt + answer) in all training batches
    train_tokens_per_s: float | None  # tokens / training seconds (checkpoint writing excluded; summed over resumes)
    weights_sha256: str          # lib.models.weights.state_dict_sha256 of the merged model
    out_dir: Path
    manifest: dict
    resumed_from: int = 0        # step of the checkpoint this process started from (0: from scratch)
    reused: bool = False         # True: out_dir already held this run; nothing was trained


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Row indices [batch_size] of 0-based ``step``: a pure function of its arguments.

    >>> a = batch_indices(5, 2, 0, 0); b = batch_indices(5, 2, 0, 1); c = batch_indices(5, 2, 0, 2)
    >>> sorted(np.r_[a, b, c[:1]].tolist())  # the first epoch covers every row once
    [0, 1, 2, 3, 4]
    """
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, within = pos // n, pos % n
    perms = {int(e): np.random.default_rng([int(seed), int(e)]).permutation(n) for e in np.unique(epochs)}
    return np.array([perms[int(e)][w] for e, w in zip(epochs, within)], dtype=np.int64)


def step_seed(seed: int, step: int) -> int:
    """The torch seed of 0-based ``step`` (dropout), independent of earlier steps.

    >>> step_seed(0, 3) == step_seed(0, 3) != step_seed(1, 3)
    True
    """
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0])


def drop_quantizer(model) -> None:
    """Make a GGUF-loaded model savable and trainable: drop ``hf_quantizer`` and ``quantization_config``
    (its weights are already dequantized), and record the architecture (GGUF leaves it empty)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        try:
            del model.config.quantization_config
        except AttributeError:  # a class attribute, not the instance's
            model.config.quantization_config = None
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]


def prepare_model(hf, config: FinetuneConfig):
    """(a trainable copy of ``hf``, its trainable parameters name -> tensor in a fixed order, LoRA targets).

    LoRA: peft adapters on the target modules (A drawn under ``torch.manual_seed(seed)``, B zero) and only
    those train; full: every parameter trains (tied weights once)."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(hf)
    drop_quantizer(model)
    targets = resolve_targets(model, config) if config.method == "lora" else []
    if config.method == "lora":
        conv1d = type(model).__name__ == "GPT2LMHeadModel" or "GPT2LMHeadModel" in (model.config.architectures or [])
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(targets), bias="none", fan_in_fan_out=conv1d)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning, nothing to act on)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            torch.manual_seed(config.seed)
            model = get_peft_model(model, lora)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return model, params, targets


def merged_model(model, config: FinetuneConfig):
    """The plain Hugging Face model of a prepared one: LoRA merged into the weights (W + alpha/r B A), eval mode."""
    out = model.merge_and_unload() if config.method == "lora" else model
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


def _forward_model(model, config: FinetuneConfig):
    return model.get_base_model() if config.method == "lora" else model


def _save_quietly(model, tokenizer, folder: Path) -> None:
    """``save_pretrained`` of the model (safetensors) and tokenizer, without transformers' progress bar."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(folder))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def run_key(hf, examples: Examples, config: FinetuneConfig, targets: list[str], base_sha: str | None = None) -> dict:
    """What must match for a checkpoint or a finished out_dir to count as this run."""
    return json.loads(json.dumps({**config.key(), "target_modules_resolved": targets,
                                  "base_weights_sha256": base_sha or state_dict_sha256(hf),
                                  "data_sha256": examples.sha256(), "n_examples": len(examples),
                                  "dtype": str(next(hf.parameters()).dtype).replace("torch.", "")}))


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _mismatch(where: Path, saved: dict, key: dict) -> FinetuneError:
    diff = key_differences(saved, key)
    shown = {k: (saved.get(k), key.get(k)) for k in diff[:4]}
    return FinetuneError(f"{where} was made by a fine-tune with different settings or inputs: {diff} differ "
                         f"(saved, now: {shown}); delete {where} or choose another out_dir")


def _reuse(final: Path, key: dict) -> FinetuneResult:
    from transformers import AutoModelForCausalLM

    manifest = json.loads((final / MANIFEST).read_text())
    if manifest.get("key") != key:
        raise _mismatch(final, manifest.get("key", {}), key)
    model = AutoModelForCausalLM.from_pretrained(final, dtype=getattr(torch, key["dtype"]),
                                                 attn_implementation="eager").eval()
    sha = state_dict_sha256(model)
    if sha != manifest["weights_sha256"]:
        raise FinetuneError(f"the weights in {final} changed since they were saved (sha256 {sha[:16]}..., manifest "
                            f"{manifest['weights_sha256'][:16]}...); delete {final} and rerun")
    return FinetuneResult(model, manifest["losses"], manifest["tokens_seen"], manifest["train_tokens_per_s"], sha,
                          final, manifest, manifest.get("resumed_from", 0), reused=True)


def _work_folder(final: Path, key: dict) -> Path:
    """``<out_dir>.partial``, made and marked, or checked to be this run's."""
    work = final.with_name(final.name + ".partial")
    if work.exists():
        marker = work / RUN_FILE
        if marker.is_file():
            saved = json.loads(marker.read_text())
            if saved != key:
                raise _mismatch(work, saved, key)
        elif any(work.iterdir()):
            raise FinetuneError(f"{work} exists and was not made by a fine-tune (no {RUN_FILE}); move it away or "
                                f"choose another out_dir")
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / RUN_FILE, key)
    return work


def finetune(hf, tokenizer, examples: Examples, config: FinetuneConfig, out_dir, *, progress=None,
             base_identity: dict | None = None, base_sha256: str | None = None) -> FinetuneResult:
    """Fine-tune a copy of ``hf`` on ``examples`` (``config.steps`` steps of ``config.batch_size`` rows; one
    forward and one backward per step), save the merged model into ``out_dir`` and return it.

    Resumes from the newest complete checkpoint of an interrupted run with the same settings and inputs
    (``<out_dir>.partial/checkpoints``); an ``out_dir`` already holding this run is loaded, not retrained.
    ``progress(1)`` after each step; ``base_identity`` (e.g. ``LoadedModel.identity()``) goes into the manifest;
    ``base_sha256`` (``state_dict_sha256(hf)``, computed when not given) identifies the base weights.
    """
    if not isinstance(config, FinetuneConfig):
        raise FinetuneError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    if len(examples) == 0:
        raise FinetuneError("no training examples")
    final = Path(out_dir)
    base_sha = base_sha256 or state_dict_sha256(hf)
    targets = resolve_targets(hf, config) if config.method == "lora" else []
    key = run_key(hf, examples, config, targets, base_sha)
    if final.exists():
        if (final / MANIFEST).is_file():
            return _reuse(final, key)
        if not final.is_dir() or any(final.iterdir()):
            raise FinetuneError(f"out_dir {final} exists and was not made by a fine-tune (no {MANIFEST}); "
                                f"choose another folder or delete it")
    work = _work_folder(final, key)
    ckpts = work / "checkpoints"
    clear_partial(ckpts)
    pad_id = next(v for v in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if v is not None)

    with torch.random.fork_rng(devices=[]):
        model, params, _ = prepare_model(hf, config)
        opt = torch.optim.AdamW(list(params.values()), lr=config.learning_rate, weight_decay=config.weight_decay)
        losses, tokens, seconds, start = [], 0, 0.0, 0
        latest = latest_checkpoint(ckpts)
        if latest is not None:
            state = load_checkpoint(latest, params, opt)
            if state.get("key") != key:
                raise CheckpointError(str(_mismatch(latest, state.get("key", {}), key)))
            losses, tokens, seconds, start = state["losses"], state["tokens_seen"], state["train_seconds"], state["step"]
        fwd = _forward_model(model, config)
        fwd.train()
        t0, saving = time.perf_counter(), 0.0
        for k in range(start, config.steps):
            batch = batch_tensors(examples, batch_indices(len(examples), config.batch_size, config.seed, k), pad_id)
            for group in opt.param_groups:
                group["lr"] = config.learning_rate * lr_factor(k, config.steps, config.warmup_steps)
            torch.manual_seed(step_seed(config.seed, k))
            loss, _ = answer_loss(fwd, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm)
            opt.step()
            losses.append(float(loss.detach()))
            tokens += int(batch.attention_mask.sum())
            done = k + 1
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                t1 = time.perf_counter()
                save_checkpoint(ckpts, done, params, opt, {"key": key, "losses": losses, "tokens_seen": tokens,
                                                          "train_seconds": seconds + t1 - t0 - saving})
                saving += time.perf_counter() - t1  # checkpoint writing is not training time
            if progress is not None:
                progress(1)
        seconds += time.perf_counter() - t0 - saving
        merged = merged_model(model, config)
    drop_quantizer(merged)
    sha = state_dict_sha256(merged)
    _save_quietly(merged, tokenizer, work)
    run_tokens = tokens  # all steps, including those before a resume
    manifest = {"key": key, "config": {**config.key(), "checkpoint_every": config.checkpoint_every},
                "target_modules": targets, "base_model": base_identity or {}, "base_weights_sha256": base_sha,
                "steps": config.steps, "weights_sha256": sha, "losses": losses, "tokens_seen": run_tokens,
                "train_seconds": round(seconds, 3),
                "train_tokens_per_s": run_tokens / seconds if seconds > 0 else None,
                "resumed_from": start, "n_trainable_params": int(sum(p.numel() for p in params.values())),
                "cost_per_step": {"forwards": 1, "backwards": 1, "rows": config.batch_size},
                "packages": _versions(), "format": "safetensors (save_pretrained), fp weights merged"}
    write_json(work / MANIFEST, manifest)
    shutil.rmtree(ckpts, ignore_errors=True)
    (work / RUN_FILE).unlink(missing_ok=True)
    if final.exists():
        final.rmdir()  # empty (checked above)
    work.replace(final)
    return FinetuneResult(merged, losses, run_tokens, manifest["train_tokens_per_s"], sha, final, manifest, start)
