"""Phase 06 glue: fine-tune a model on the GoEmotions label objective (or take two given checkpoints), then,
per attention head, its activation strength R_h before and after and its importance before and after, and
whether strength before predicts importance after.

Rows: GoEmotions *train* comments fine-tune the model (``n_train_per_emotion`` per label) and give the
reference set of the mean ablation (``n_reference`` other train comments); GoEmotions *dev* comments
(``n_eval_per_emotion`` per label) measure everything else. The dev rows are split by text group into a
*measure* half (R_h, importance, their correlations, top-10% overlaps: the orders that pruning follows are
chosen here) and a *prune* half (the objective before and after, the pruning curves). Display tables, the
summary and the findings live in ``lib.phases.head_strength_tables``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.emotions import EMOTIONS
from lib.finetune.objective import encode_examples, label_tokens, score
from lib.finetune.reference import probe_reference
from lib.finetune.train import FinetuneConfig, finetune
from lib.geometry.folds import text_groups
from lib.head_strength import ActivationComparator, ActivationExtractor
from lib.head_strength.agreement import spearman_interval, top_overlap
from lib.head_strength.importance import ablation_importance, gradient_importance, reference_mean_z
from lib.head_strength.pruning import pruning_curves, random_orders
from lib.models.encoding import TextEncoder, prepare_tokenizer
from lib.models.loading import load_hf_model
from lib.models.registry import resolve_device, resolve_dtype, resolve_spec
from lib.models.weights import state_dict_sha256
from lib.settings import progress_bar, step as announce
from lib.stats.bootstrap import mean_ci
from lib.stats.multitest import adjust_family
from lib.stats.splits import group_halves, split_record
from lib.text.datasets import load_goemotions

__all__ = ["EMOTION_CHOICES", "StrengthConfig", "StrengthRun", "select_rows", "finetune_key", "finetune_config",
           "run_phase"]

EMOTION_CHOICES = EMOTIONS  # the objective's answers: the three emotions and neutral


@dataclass(frozen=True)
class StrengthConfig:
    """Every setting of phase 06 (the notebook's parameters, one for one)."""

    pre_model: str
    fine_model: str = ""  # empty: fine-tune pre_model here
    emotions: tuple[str, ...] = EMOTIONS
    method: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    target_modules: tuple[str, ...] = ()
    steps: int = 120
    batch_size: int = 8
    learning_rate: float = 1e-3
    max_text_tokens: int = 32
    n_train_per_emotion: int = 250
    n_probe_per_emotion: int = 100
    n_reference: int = 64
    n_eval_per_emotion: int = 64
    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
    n_random_orders: int = 20
    top_frac: float = 0.1
    n_boot: int = 1000
    n_perm: int = 1000
    eval_batch_size: int = 32
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0


@dataclass
class StrengthRun:
    """What the phase measured: long tables, the models' identities, the splits and the timings."""

    tables: dict[str, pd.DataFrame]
    identities: list[dict]
    splits: dict
    finetune: dict
    stats: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def _balanced(df: pd.DataFrame, emotions, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for e in emotions:
        sub = df[df["emotion"] == e]
        if sub.empty:
            raise ValueError(f"GoEmotions has no single-label {e!r} rows; emotions must come from {list(EMOTIONS)}")
        parts.append(sub.iloc[np.sort(rng.choice(len(sub), size=min(n, len(sub)), replace=False))])
    return pd.concat(parts).sort_index()


def select_rows(config: StrengthConfig) -> tuple[dict[str, pd.DataFrame], dict]:
    """The rows of each role (``train``, ``reference``, ``measure``, ``prune``) and their split records."""
    train = load_goemotions("train")
    train = train[train["emotion"].isin(config.emotions)]
    fit = _balanced(train, config.emotions, config.n_train_per_emotion, config.seed)
    rest = train.drop(index=fit.index)
    reference = rest.iloc[np.sort(np.random.default_rng(config.seed + 1).choice(
        len(rest), size=min(config.n_reference, len(rest)), replace=False))]
    dev = load_goemotions("dev")
    dev = _balanced(dev[dev["emotion"].isin(config.emotions)], config.emotions, config.n_eval_per_emotion,
                    config.seed).reset_index(drop=True)
    groups = text_groups(dev["text"])
    measure, prune = group_halves(dev["emotion"].to_numpy(), groups, seed=config.seed)
    probe = pd.concat([fit[fit["emotion"] == e].iloc[:config.n_probe_per_emotion] for e in config.emotions])
    rows = {"train": fit.reset_index(drop=True), "probe": probe.reset_index(drop=True),
            "reference": reference.reset_index(drop=True),
            "measure": dev.iloc[measure].reset_index(drop=True), "prune": dev.iloc[prune].reset_index(drop=True)}
    splits = {"dev_halves": split_record("dev_halves", "GoEmotions dev rows, balanced per label, halved by text "
                                         "group (stratified): measure (R_h, importance, correlations, orders) and "
                                         "prune (objective before/after, pruning curves)", config.seed,
                                         measure=measure, prune=prune),
              "train_rows": {"rule": "GoEmotions train rows, balanced per label (fine-tune; the probe reference "
                                     "fits on the first n_probe_per_emotion of them per label); reference: other "
                                     "train rows (mean-ablation means)", "seed": config.seed,
                             "sizes": {"train": len(fit), "probe": len(probe), "reference": len(reference)}}}
    return rows, splits


def finetune_key(config: StrengthConfig, base_sha256: str) -> str:
    """A short name for a fine-tune: the base model, the method and a hash of every setting it depends on."""
    keys = ("method", "lora_rank", "lora_alpha", "target_modules", "steps", "batch_size", "learning_rate",
            "max_text_tokens", "n_train_per_emotion", "emotions", "seed", "dtype")
    blob = json.dumps({k: getattr(config, k) for k in keys} | {"base": base_sha256}, sort_keys=True, default=list)
    name = Path(config.pre_model).name if Path(config.pre_model).is_dir() else config.pre_model
    return f"{name.replace('/', '--')}-{config.method}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _load(name: str, config: StrengthConfig, device: str):
    spec = resolve_spec(name)
    hf, tok = load_hf_model(spec, dtype=resolve_dtype(config.dtype), seed=config.seed)
    return spec, hf.to(device).eval(), prepare_tokenizer(tok)


def _identity(name: str, spec, hf, config: StrengthConfig, device: str, role: str) -> dict:
    return {"role": role, "name": name, "kind": spec.kind, "source": spec.source,
            "architecture": type(hf).__name__, "weights_sha256": state_dict_sha256(hf), "dtype": config.dtype,
            "device": device, "weight_processing": "raw (no folding or centring), the same for both models"}


def _texts(rows: pd.DataFrame) -> list[str]:
    return rows["text"].tolist()


def _measure_model(hf, examples, reference, config: StrengthConfig, label: str, name: str, steps: dict) -> dict:
    """R_h per sample (the prompts of the measure half), ablation and gradient importance per row."""
    n = len(examples.prompts)
    with _timed(steps, f"{label}: activation strength", -(-n // config.eval_batch_size)) as tick:
        ex = ActivationExtractor(hf, name)
        with ex:
            ex.register_hooks()
            ex.extract_activations(_prompt_batches(examples, config.eval_batch_size), progress=tick)
    with _timed(steps, f"{label}: ablation importance", n) as tick:
        mean = reference_mean_z(hf, reference.prompts, positions="last")
        abl = ablation_importance(hf, examples.prompts, examples.targets, reference_mean=mean, positions="last",
                                  progress=tick)
    with _timed(steps, f"{label}: gradient importance", n) as tick:
        grad = gradient_importance(hf, examples.prompts, examples.targets, batch_size=config.eval_batch_size,
                                   progress=tick)
    return {"extractor": ex, "ablation": abl, "gradient": grad, "reference_mean": mean}


def _prompt_batches(examples, batch_size: int):
    """Right-padded {input_ids, attention_mask} batches of the prompts (the extractor masks the padding)."""
    for start in range(0, len(examples.prompts), batch_size):
        rows = examples.prompts[start:start + batch_size]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        yield {"input_ids": ids, "attention_mask": mask}


class _timed:
    """``with _timed(steps, name, total) as tick:`` announces the step, shows a progress bar of ``total`` units
    (``tick(k)``: k more done) and records the step's seconds in ``steps``."""

    def __init__(self, steps: dict, name: str, total: int | None = None):
        self.steps, self.name, self.total = steps, name, total

    def __enter__(self):
        announce(self.name)
        self.t0 = time.perf_counter()
        self.bar = progress_bar(total=self.total, desc=self.name, leave=False) if self.total else None
        return self.bar.update if self.bar is not None else None

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        self.steps[self.name] = round(time.perf_counter() - self.t0, 2)


def _per_row(a: np.ndarray) -> np.ndarray:
    """[L, H, n] -> [n, L * H] (heads in layer-major order)."""
    return np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1]).T


def _samples(ex: ActivationExtractor, key: str) -> np.ndarray:
    """The extractor's per-sample [n, L, H] array ``key`` as [n, L * H]."""
    a = np.asarray(ex.per_sample()[key], dtype=np.float64)
    return a.reshape(a.shape[0], -1)


def head_frame(pre: dict, fine: dict, n_layers: int, n_heads: int) -> pd.DataFrame:
    """One row per head: strength (R_h over tokens, at the last token, ||z_h||) and importance (ablation,
    gradient) before and after fine-tuning, means over the measure half's rows."""
    out = {"layer": np.repeat(np.arange(n_layers), n_heads), "head": np.tile(np.arange(n_heads), n_layers)}
    for tag, m in (("pre", pre), ("fine", fine)):
        out[f"R_{tag}"] = _samples(m["extractor"], "mean").mean(0)
        out[f"R_last_{tag}"] = _samples(m["extractor"], "last").mean(0)
        out[f"z_{tag}"] = _samples(m["extractor"], "z_mean").mean(0)
        out[f"ablation_{tag}"] = _per_row(m["ablation"]["delta"]).mean(0)
        out[f"gradient_{tag}"] = _per_row(m["gradient"]["per_row"]).mean(0)
    df = pd.DataFrame(out)
    df["R_ratio"] = df["R_fine"] / df["R_pre"]
    df["z_ratio"] = df["z_fine"] / df["z_pre"]
    return df


# (x, y) pairs of the agreement table: x before or after fine-tuning against the importance after it
PAIRS = (("R_pre", "strength before (R_h)"), ("R_last_pre", "strength before, last token"),
         ("z_pre", "||z_h|| before"), ("importance_pre", "importance before"), ("R_fine", "strength after (R_h)"))


def agreement_frame(pre: dict, fine: dict, config: StrengthConfig) -> pd.DataFrame:
    """Spearman rho over heads of each ``PAIRS`` quantity with the importance after fine-tuning (ablation and
    gradient), a bootstrap interval over the measure half's rows and a permutation p over heads, BH-adjusted as
    one family."""
    rows = []
    for kind, key in (("ablation", "delta"), ("gradient", "per_row")):
        y = _per_row(fine[kind][key])
        xs = {"R_pre": _samples(pre["extractor"], "mean"), "R_last_pre": _samples(pre["extractor"], "last"),
              "z_pre": _samples(pre["extractor"], "z_mean"), "importance_pre": _per_row(pre[kind][key]),
              "R_fine": _samples(fine["extractor"], "mean")}
        for x_key, label in PAIRS:
            r = spearman_interval(xs[x_key], y, n_boot=config.n_boot, n_perm=config.n_perm, seed=config.seed)
            ov = top_overlap(xs[x_key].mean(0), y.mean(0), frac=config.top_frac)
            rows.append({"importance": kind, "x": x_key, "label": label, "rho": r["rho"], "ci_low": r["ci_low"],
                         "ci_high": r["ci_high"], "p_value": r["p_perm"], "top_k": ov["k"],
                         "top_overlap": ov["overlap"], "top_expected": ov["expected"], "top_p": ov["p"]})
    return adjust_family(pd.DataFrame(rows))


def pruning_orders(heads: pd.DataFrame, config: StrengthConfig) -> dict[str, list[tuple[int, int]]]:
    """Removal orders, weakest or least important first (all chosen on the measure half): R_h before and after,
    ablation importance after (the signed loss increase, and its size: a head whose removal lowers the loss
    matters too), gradient importance after, and ``n_random_orders`` random orders."""
    def by(col):
        d = heads.sort_values([col, "layer", "head"], kind="stable")
        return list(zip(d["layer"].astype(int), d["head"].astype(int)))
    heads = heads.assign(ablation_size=heads["ablation_fine"].abs())
    orders = {"R_h before": by("R_pre"), "R_h after": by("R_fine"), "ablation importance after": by("ablation_fine"),
              "|ablation effect| after": by("ablation_size"), "gradient importance after": by("gradient_fine")}
    every = list(zip(heads["layer"].astype(int), heads["head"].astype(int)))
    for i, order in enumerate(random_orders(every, config.n_random_orders, config.seed)):
        orders[f"random {i + 1}"] = order
    return orders


def finetune_config(config: StrengthConfig) -> FinetuneConfig:
    """The fine-tune's settings taken from the phase's (the rest keep ``FinetuneConfig``'s defaults)."""
    return FinetuneConfig(method=config.method, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                          target_modules=tuple(config.target_modules) or None, steps=config.steps,
                          batch_size=config.batch_size, learning_rate=config.learning_rate,
                          max_text_tokens=config.max_text_tokens, seed=config.seed)


def _finetuned(pre, tok, examples, config: StrengthConfig, folder: Path, base: dict, device: str, steps: dict):
    """The fine-tuned model: ``folder``'s finished fine-tune when its settings match (``lib.finetune.train``),
    else trained into it (resuming from its checkpoints), then loaded back from the saved safetensors."""
    ft = finetune_config(config)
    with _timed(steps, "fine-tune", config.steps) as tick:
        result = finetune(pre, tok, examples, ft, folder, progress=tick, base_identity=base,
                          base_sha256=base["weights_sha256"])
    manifest = json.loads((folder / "manifest.json").read_text())
    spec, fine, _ = _load(str(folder), config, device)
    got = state_dict_sha256(fine)
    if got != manifest["weights_sha256"]:
        raise ValueError(f"{folder}: the saved weights' sha256 {got[:16]} differs from its manifest's "
                         f"{manifest['weights_sha256'][:16]}; move the folder aside and rerun")
    return spec, fine, manifest, result


def run_phase(config: StrengthConfig, scratch: Path, finetune_root: Path | None = None) -> StrengthRun:
    """Everything phase 06 measures (see the module docstring). Fine-tunes go to ``finetune_root`` (kept and
    reused across runs, resumable) or, when it is None, to ``scratch``."""
    device, steps = resolve_device(config.device), {}
    rows, splits = select_rows(config)
    spec, pre, tok = _load(config.pre_model, config, device)
    prepend_bos = bool(spec.prepend_bos and not TextEncoder(spec, tok).tokenizer_adds_bos)
    def encode(df):
        return encode_examples(tok, _texts(df), df["emotion"].tolist(), max_text_tokens=config.max_text_tokens,
                               prepend_bos=prepend_bos, label_set=tuple(config.emotions))
    examples = {role: encode(df) for role, df in rows.items()}
    label_tokens(tok, list(config.emotions))  # fails early if the answers' first tokens collide
    identities = [_identity(config.pre_model, spec, pre, config, device, "pre")]
    if config.fine_model:
        fspec, fine, ftok = _load(config.fine_model, config, device)
        if ftok.get_vocab() != tok.get_vocab():
            raise ValueError(f"fine_model {config.fine_model!r} has another tokenizer than pre_model "
                             f"{config.pre_model!r}; compare two checkpoints of one model")
        ft_info = {"fine_model": config.fine_model, "trained_here": False}
        identities.append(_identity(config.fine_model, fspec, fine, config, device, "fine"))
    else:
        folder = Path(finetune_root or scratch) / finetune_key(config, identities[0]["weights_sha256"])
        fspec, fine, manifest, result = _finetuned(pre, tok, examples["train"], config, folder, identities[0], device,
                                                   steps)
        ft_info = {"folder": str(folder), "trained_here": True, "manifest": manifest}
        identities.append(_identity(str(folder), fspec, fine, config, device, "fine"))
    n_layers, n_heads = _dims(pre, fine, config)
    dev = encode(pd.concat([rows["measure"], rows["prune"]], ignore_index=True))
    scores = {}
    with _timed(steps, "objective before and after", 2 * len(dev.prompts)) as tick:
        for tag, model in (("pre", pre), ("fine", fine)):
            scores[tag] = score(model, dev, batch_size=config.eval_batch_size, progress=tick)
    with _timed(steps, "probe reference", len(examples["probe"].prompts) + len(dev.prompts)) as tick:
        reference = probe_reference(pre, examples["probe"], dev, seed=config.seed, batch_size=config.eval_batch_size,
                                    progress=tick)
    names = {"pre": identities[0]["name"], "fine": Path(identities[1]["name"]).name}
    measured = {tag: _measure_model(model, examples["measure"], examples["reference"], config, tag, names[tag], steps)
                for tag, model in (("pre", pre), ("fine", fine))}
    heads = head_frame(measured["pre"], measured["fine"], n_layers, n_heads)
    agreement = agreement_frame(measured["pre"], measured["fine"], config)
    orders = pruning_orders(heads, config)
    with _timed(steps, "pruning curves", len(examples["prune"].prompts)) as tick:
        curves = pruning_curves(fine, examples["prune"].prompts, examples["prune"].targets,
                                orders, list(config.fractions),
                                reference_mean=measured["fine"]["reference_mean"], positions="last",
                                candidates=_candidates(tok, config), progress=tick)
    tables = {"heads": heads, "agreement": agreement, "pruning": curves,
              "objective": objective_frame(scores, reference, rows, config),
              "training": pd.DataFrame(ft_info.get("manifest", {}).get("losses", []), columns=["loss"]).rename_axis(
                  "step").reset_index() if ft_info["trained_here"] else pd.DataFrame(columns=["step", "loss"]),
              "timings": pd.DataFrame(list(steps.items()), columns=["step", "seconds"])}
    comparator = ActivationComparator(measured["pre"]["extractor"], measured["fine"]["extractor"])
    return StrengthRun(tables=tables, identities=identities, splits=splits, finetune=ft_info,
                       stats={"comparator": comparator, "extractors": (measured["pre"]["extractor"],
                                                                        measured["fine"]["extractor"]),
                              "reference": reference}, timings=steps)


def _candidates(tok, config: StrengthConfig) -> list[int]:
    return [ids[0] for ids in label_tokens(tok, list(config.emotions)).values()]


def _dims(pre, fine, config: StrengthConfig) -> tuple[int, int]:
    from lib.models.archs import model_dims

    a, b = model_dims(pre)[:2], model_dims(fine)[:2]
    if a != b:
        raise ValueError(f"pre_model {config.pre_model!r} has {a[0]} layers x {a[1]} heads but fine_model "
                         f"{config.fine_model!r} has {b[0]} x {b[1]}; compare two checkpoints of one architecture")
    return a


def objective_frame(scores: dict, reference: dict, rows: dict, config: StrengthConfig) -> pd.DataFrame:
    """The objective on the dev rows before and after fine-tuning, and the base model's probe: accuracy (argmax
    over the labels' first tokens; the probe: its prediction) and loss, means with 95% bootstrap intervals."""
    out = []
    for tag, label in (("pre", "before fine-tuning"), ("fine", "after fine-tuning")):
        for metric, values in (("accuracy", scores[tag]["correct"]), ("loss", scores[tag]["loss"])):
            out.append({"model": label, "metric": metric, **mean_ci(np.asarray(values, float), n_boot=config.n_boot,
                                                                     seed=config.seed)})
    out.append({"model": f"probe on the base model (layer {reference['layer']})", "metric": "accuracy",
                **mean_ci(np.asarray(reference["dev_correct"], float), n_boot=config.n_boot, seed=config.seed)})
    out.append({"model": "chance (always one label)", "metric": "accuracy", "mean": 1 / len(config.emotions),
                "ci_low": np.nan, "ci_high": np.nan, "n": sum(len(rows[k]) for k in ("measure", "prune")),
                "level": 0.95})
    return pd.DataFrame(out)
