"""Phase 07: the shared-subspace experiment on synthetic grid tasks, hypotheses H1-H4.

Runs the seeds x conditions grid (``lib.synthetic.grid.run_grid``: a loop, or Ray with ``workers`` > 1 or an
``address``) of ``lib.synthetic.experiment.run_one`` in two waves: the regulariser off (alpha 0) and on
(``alpha``; plus ``alpha_sweep`` and more ``encoders`` in larger runs), then the controls whose settings
depend on the first wave: a bottleneck of matched effective rank (alpha 0, h limited to a fixed random
subspace of the on-models' median participation ratio on the fitting half of the analysis rows, rounded) and
the untrained encoder. Then it measures
every run's representations (``measure_run``) and leaves the hypothesis tests to
``lib.phases.shared_subspace_tables``.

Per run, on the analysis set (fresh samples of the training tasks), split in halves by sample for anything
fitted: the sharing distance (mean pairwise geodesic Grassmann distance between the multi-hot label groups'
top-k PCA subspaces of h, with the variance they keep), the participation ratio of h, linear probes per
primitive with a control task, an SAE on h (trained on the first half; health and unit-primitive alignment on
the second) against PCA and FastICA codes of h, and CKA between the single-primitive task groups on identical
inputs (linear and debiased).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from lib.synthetic.alignment import baseline_codes, chance_f1, code_alignment, primitive_probes
from lib.synthetic.analysis import cka_table, layer_matching_check, random_subspace_null, subspace_sharing, \
    group_subspaces
from lib.synthetic.experiment import analysis_rows, build_split, run_one
from lib.synthetic.grid import run_grid
from lib.synthetic.primitives import PRIMITIVES
from lib.synthetic.sae import SparseAutoencoder, sae_health, train_sae
from lib.synthetic.tasks import GridSpec

__all__ = ["SharedConfig", "PhaseRun", "split_summary", "run_specs", "control_specs", "participation_ratio",
           "measure_run", "planted_checks", "examples", "unit_pictures", "run_phase"]


@dataclass(frozen=True, kw_only=True)
class SharedConfig:
    """The phase's parameters (see ``params/07_shared_subspace.yaml`` for their meaning)."""

    seeds: int = 5
    encoders: tuple = ("transformer",)
    alpha: float = 0.1
    alpha_sweep: tuple = ()
    matched_rank_control: bool = True
    train_steps: int = 2000
    batch_size: int = 64
    groups_per_batch: int = 4
    samples_per_task: int = 512
    learning_rate: float = 3e-3
    sharing_k: int = 4
    analysis_k: int = 2
    beta: float = 0.1
    d_model: int = 64
    n_layers: int = 2
    d_bottleneck: int = 128
    decoder: str = "mlp"
    min_objects: int = 1
    max_objects: int = 2
    max_object_size: int = 2
    n_heldout_pairs: int = 6
    n_test: int = 20
    n_fewshot: int = 10
    fewshot_shots: int = 16
    fewshot_steps: int = 60
    fewshot_rank: int = 4
    fewshot_threshold: float = 0.5
    n_eval_per_task: int = 32
    n_analysis_per_task: int = 32
    n_shared: int = 64
    sae_k: int = 16
    sae_l1: float = 0.01
    sae_steps: int = 1500
    baseline_k: int = 16
    n_null: int = 200
    n_boot: int = 2000
    workers: int = 1
    ray_address: str = ""
    seed: int = 0

    def __post_init__(self):
        if self.seeds < 2:
            raise ValueError(f"seeds must be >= 2 (intervals over seeds); got {self.seeds}")
        self.grid_spec()  # fails early on a bad grid setting
        if self.analysis_k >= self.d_bottleneck:
            raise ValueError(f"analysis_k must be < d_bottleneck ({self.d_bottleneck}); got {self.analysis_k}")

    @property
    def grid(self) -> dict:
        """GridSpec keywords of the input grids."""
        return {"min_objects": self.min_objects, "max_objects": self.max_objects,
                "max_object_size": self.max_object_size}

    def grid_spec(self) -> GridSpec:
        return GridSpec(**self.grid)

    def conditions(self) -> list[tuple[str, str, float]]:
        """(condition name, encoder, alpha) of the first wave."""
        out = []
        for enc in self.encoders:
            suffix = "" if enc == self.encoders[0] else f"-{enc}"
            out += [(f"off{suffix}", enc, 0.0), (f"on{suffix}", enc, float(self.alpha))]
            out += [(f"alpha={a:g}{suffix}", enc, float(a)) for a in self.alpha_sweep if a not in (0.0, self.alpha)]
        return out


@dataclass
class PhaseRun:
    """Every run's record and measurements, the matched rank, the cross-seed checks and timings."""

    records: list[dict]
    measures: list[dict]
    matched_rank: int | None
    layer_checks: list[dict]
    planted: list[dict]
    seconds: dict


def _spec(config: SharedConfig, name: str, encoder: str, alpha: float, seed: int, out: Path, *,
          rank: int | None = None, untrained: bool = False) -> dict:
    model = {"encoder": encoder, "d_model": config.d_model, "n_layers": config.n_layers,
             "d_bottleneck": config.d_bottleneck, "decoder": config.decoder, "bottleneck_rank": rank}
    train = {"steps": config.train_steps, "batch_size": config.batch_size, "groups_per_batch": config.groups_per_batch,
             "samples_per_task": config.samples_per_task, "lr": config.learning_rate, "alpha": alpha,
             "alpha_start": config.train_steps // 4, "alpha_end": config.train_steps // 2,  # the task is learnt first
             "sharing_k": config.sharing_k, "beta": config.beta, "spec": dict(config.grid),
             "eval_every": max(1, config.train_steps // 8), "checkpoint_every": max(1, config.train_steps // 8)}
    fewshot = {"shots": config.fewshot_shots, "steps": config.fewshot_steps, "rank": config.fewshot_rank,
               "threshold": config.fewshot_threshold, "eval_every": max(1, config.fewshot_steps // 6)}
    return {"name": name, "condition": name, "encoder": encoder, "seed": int(seed), "untrained": untrained,
            "out_dir": str(out / "runs" / f"{name}_s{seed}"), "model": model, "train": train,
            "split": {"seed": config.seed, "n_test": config.n_test, "n_fewshot": config.n_fewshot,
                      "n_heldout_pairs": config.n_heldout_pairs},
            "fewshot": fewshot, "n_eval_per_task": config.n_eval_per_task,
            "n_analysis_per_task": config.n_analysis_per_task, "n_shared": config.n_shared,
            "eval_seed": config.seed + 1}


def run_specs(config: SharedConfig, out: Path) -> list[dict]:
    """The first wave: every condition of ``config.conditions()`` for seeds 0..seeds-1."""
    return [_spec(config, name, enc, alpha, s, out) for name, enc, alpha in config.conditions()
            for s in range(config.seeds)]


def control_specs(config: SharedConfig, out: Path, matched_rank: int | None) -> list[dict]:
    """The second wave: the matched-rank bottleneck (alpha 0) and the untrained encoder, per seed, first
    encoder."""
    enc = config.encoders[0]
    specs = [_spec(config, "untrained", enc, 0.0, s, out, untrained=True) for s in range(config.seeds)]
    if matched_rank is not None:
        specs += [_spec(config, "matched-rank", enc, 0.0, s, out, rank=matched_rank) for s in range(config.seeds)]
    return specs


def split_summary(config: SharedConfig) -> dict:
    """The task split every run shares: sizes, held-out pairs and the pair coverage of the test compositions
    (the fraction of their consecutive pairs trained as pairs, and of compositions with every pair trained)."""
    split = build_split(_spec(config, "split", config.encoders[0], 0.0, 0, Path(".")))
    cov = split.pair_coverage("test")
    return {"train_tasks": len(split.train), "zero_shot_tasks": len(split.test), "few_shot_tasks": len(split.fewshot),
            "heldout_pairs": [" then ".join(p) for p in split.heldout_pairs],
            "pair_coverage": cov["fraction"], "tasks_fully_covered": cov["tasks_covered"],
            "zero_shot": [" then ".join(t) for t in split.test], "few_shot": [" then ".join(t) for t in split.fewshot]}


def participation_ratio(h: np.ndarray) -> float:
    """(sum of the covariance eigenvalues)^2 / sum of their squares: an effective dimension of h [n, d].

    >>> round(participation_ratio(np.random.default_rng(0).normal(size=(4000, 3)) * [1, 1, 0]), 1)
    2.0
    """
    x = np.asarray(h, dtype=np.float64)
    ev = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False)), 0, None)
    return float(ev.sum() ** 2 / (ev ** 2).sum()) if ev.sum() > 0 else 0.0


def _halves(n_tasks: int, n_per_task: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows split by sample within each task: even positions fit, odd positions score."""
    pos = np.tile(np.arange(n_per_task), n_tasks)
    idx = np.arange(n_tasks * n_per_task)
    return idx[pos % 2 == 0], idx[pos % 2 == 1]


def _sae_alignment(h: np.ndarray, labels: np.ndarray, train_idx, test_idx, config: SharedConfig, seed: int) -> dict:
    x = torch.as_tensor(h, dtype=torch.float32)
    mu, sd = x[train_idx].mean(0), x[train_idx].std(0).mean().clamp_min(1e-8)
    x = (x - mu) / sd  # one scale for every unit, from the fitting half
    sae = SparseAutoencoder(d_in=x.shape[1], k=config.sae_k, seed=seed)
    train_sae(sae, x[train_idx], steps=config.sae_steps, lr=1e-3, l1_weight=config.sae_l1, seed=seed)
    health = sae_health(sae, x[test_idx])
    with torch.no_grad():
        z = sae.encode(x).numpy()
    sae_al = code_alignment(z, labels, train_idx, test_idx)
    out = {"sae_f1": sae_al.sparse_probe.mean_f1, "sae_matched_corr": sae_al.matched.mean_matched,
           "sae_variance_explained": health.variance_explained, "sae_dead_fraction": health.dead_fraction,
           "sae_l0": health.mean_l0, "chance_f1": float(np.mean(chance_f1(labels[test_idx]))),
           "units": _top_units(z, sae_al.sparse_probe, test_idx)}
    for method in ("pca", "ica"):
        with warnings.catch_warnings():  # FastICA's convergence note: the codes are scored all the same
            warnings.simplefilter("ignore", ConvergenceWarning)
            codes = baseline_codes(h, config.baseline_k, train_idx, method=method, seed=seed)
        al = code_alignment(codes, labels, train_idx, test_idx)
        out[f"{method}_f1"] = al.sparse_probe.mean_f1
        out[f"{method}_matched_corr"] = al.matched.mean_matched
    return out


def _top_units(z: np.ndarray, probe, test_idx, n_top: int = 4) -> list[dict]:
    """For each primitive, the SAE unit its 1-sparse probe chose and the scoring rows it fires most on."""
    out = []
    for p, unit in enumerate(np.asarray(probe.unit)):
        act = z[test_idx, int(unit)] * float(probe.sign[p])
        top = np.asarray(test_idx)[np.argsort(-act, kind="stable")[:n_top]]
        out.append({"primitive": PRIMITIVES[p], "unit": int(unit), "f1": float(probe.f1[p]),
                    "top_rows": [int(i) for i in top]})
    return out


def _group_cka(shared_h: np.ndarray) -> dict:
    out = {}
    for kind in ("linear", "debiased"):
        table = cka_table(dict(zip(PRIMITIVES, shared_h)), kind=kind).values
        off = table[~np.eye(len(table), dtype=bool)]
        out[f"group_cka_{kind}"] = float(off.mean())
    return out


def measure_run(record: dict, config: SharedConfig) -> dict:
    """Every per-run measurement on its saved representations (see the module docstring)."""
    spec = record["spec"]
    out = Path(spec["out_dir"])
    h = np.load(out / "h.npy").astype(np.float64)
    split = build_split(spec)
    rows = analysis_rows(split, spec["n_analysis_per_task"], spec["eval_seed"], config.grid_spec())
    labels = rows["primitives"].numpy().astype(int)
    train_idx, test_idx = _halves(len(split.train), spec["n_analysis_per_task"])
    groups = [tuple(r) for r in labels]
    subs = group_subspaces(h[test_idx], [groups[i] for i in test_idx], config.analysis_k)
    probes = primitive_probes(h, labels, train_idx, test_idx, seed=spec["seed"])
    m = {"condition": spec["condition"], "encoder": spec["encoder"], "seed": spec["seed"],
         "sharing_distance": subspace_sharing(h[test_idx], [groups[i] for i in test_idx], config.analysis_k),
         "variance_kept": float(np.mean(subs.kept)), "participation_ratio": participation_ratio(h),
         "probe_accuracy": float(np.mean(probes.accuracy)), "probe_control": float(np.mean(probes.control_accuracy)),
         "probe_selectivity": float(np.mean(probes.selectivity)),
         "in_dist_accuracy": record["in_distribution"]["accuracy"], "in_dist_iou": record["in_distribution"]["iou"],
         "zero_shot_accuracy": record["zero_shot"]["accuracy"], "zero_shot_iou": record["zero_shot"]["iou"],
         "few_shot_auc": record["few_shot"]["auc"], "few_shot_steps": record["few_shot"]["steps_to_threshold"],
         "train_seconds": (record["train"] or {}).get("train_seconds", 0.0),
         "steps_per_s": (record["train"] or {}).get("steps_per_s", float("nan"))}
    m.update(_sae_alignment(h, labels, train_idx, test_idx, config, spec["seed"]))
    m.update(_group_cka(np.load(out / "shared_h.npy").astype(np.float64)))
    return m


def planted_checks(config: SharedConfig, seed: int = 0) -> list[dict]:
    """The H1 and H4 metrics on planted data, where the answer is known: groups drawn in one shared subspace
    vs in their own subspaces (the sharing distance must be smaller for the shared ones), and h made of one
    planted direction per primitive plus noise (the SAE's 1-sparse F1 must find them)."""
    rng = np.random.default_rng(seed)
    d, k, n_groups, n = config.d_bottleneck, config.analysis_k, 6, 64
    basis = np.linalg.qr(rng.normal(size=(d, k)))[0]
    shared = np.concatenate([rng.normal(size=(n, k)) @ basis.T + 0.05 * rng.normal(size=(n, d))
                             for _ in range(n_groups)])
    own = np.concatenate([rng.normal(size=(n, k)) @ np.linalg.qr(rng.normal(size=(d, k)))[0].T
                          + 0.05 * rng.normal(size=(n, d)) for _ in range(n_groups)])
    groups = np.repeat(np.arange(n_groups), n)
    null = random_subspace_null(d, k, n=config.n_null, seed=seed)
    rows = [{"check": "H1 sharing distance, groups in one subspace", "value": subspace_sharing(shared, groups, k),
             "reference": float(np.mean(null)), "passes": None},
            {"check": "H1 sharing distance, groups in their own subspaces", "value": subspace_sharing(own, groups, k),
             "reference": float(np.mean(null)), "passes": None}]
    rows[0]["passes"] = rows[1]["passes"] = bool(rows[0]["value"] < 0.5 * rows[1]["value"])
    n_rows, p = 2000, 6
    labels = (rng.random((n_rows, p)) < 0.3).astype(int)
    dirs = np.linalg.qr(rng.normal(size=(d, p)))[0].T
    h = labels @ (3.0 * dirs) + 0.3 * rng.normal(size=(n_rows, d))
    train_idx, test_idx = np.arange(0, n_rows, 2), np.arange(1, n_rows, 2)
    al = _sae_alignment(h, labels, train_idx, test_idx, config, seed)
    rows.append({"check": "H4 SAE 1-sparse F1, planted primitive directions", "value": al["sae_f1"],
                 "reference": al["chance_f1"], "passes": bool(al["sae_f1"] > 0.9)})
    rows += [{"check": f"H4 {m.upper()} 1-sparse F1, planted primitive directions (baseline)", "value": al[f"{m}_f1"],
              "reference": al["chance_f1"], "passes": None} for m in ("pca", "ica")]
    return rows


def _layers(record: dict) -> dict[str, np.ndarray]:
    """A run's encoder layers (mean-pooled) and its bottleneck h on the analysis rows, by name."""
    folder = Path(record["spec"]["out_dir"])
    layers = np.load(folder / "layers.npy").astype(np.float64)
    return {**{f"layer {i}": x for i, x in enumerate(layers)}, "h": np.load(folder / "h.npy").astype(np.float64)}


def _layer_checks(records: list[dict]) -> list[dict]:
    """Kornblith's check per trained condition: seed 0's layers (and h) against seed 1's (linear and debiased
    CKA)."""
    out = []
    by = {}
    for r in records:
        by.setdefault(r["spec"]["condition"], {})[r["seed"]] = r
    for cond, runs in by.items():
        if 0 not in runs or 1 not in runs:
            continue
        a, b = (_layers(runs[s]) for s in (0, 1))
        for kind in ("linear", "debiased"):
            lm = layer_matching_check(a, b, kind=kind)
            table = lm.table.values
            out.append({"condition": cond, "kind": kind, "accuracy": lm.accuracy,
                        "same_layer": float(np.mean(np.diag(table))),
                        "other_layers": float(table[~np.eye(len(table), dtype=bool)].mean()) if len(table) > 1
                        else float("nan")})
    return out


def run_phase(config: SharedConfig, out: Path, *, progress: bool = True) -> PhaseRun:
    """Both waves of runs, then every measurement (``out`` receives ``runs/<condition>_s<seed>/``)."""
    import time

    t0 = time.perf_counter()
    kw = {"workers": config.workers, "address": config.ray_address or None, "progress": progress}
    first = run_grid(run_one, run_specs(config, out), desc="runs (wave 1)", **kw)
    t1 = time.perf_counter()
    on = [r for r in first if r["spec"]["condition"] == "on"]
    matched = None
    if config.matched_rank_control and on:
        # chosen on the fitting half of the analysis rows, so the H1 distances (scoring half) did not choose it
        fit = _halves(len(build_split(on[0]["spec"]).train), on[0]["spec"]["n_analysis_per_task"])[0]
        prs = [participation_ratio(np.load(Path(r["spec"]["out_dir"]) / "h.npy")[fit]) for r in on]
        matched = int(min(config.d_bottleneck - 1, max(1, round(float(np.median(prs))))))
    second = run_grid(run_one, control_specs(config, out, matched), desc="runs (controls)", **kw)
    t2 = time.perf_counter()
    records = first + second
    measures = [measure_run(r, config) for r in records]
    t3 = time.perf_counter()
    return PhaseRun(records=records, measures=measures, matched_rank=matched, layer_checks=_layer_checks(
        [r for r in records if not r["spec"]["untrained"]]), planted=planted_checks(config, config.seed),
        seconds={"wave_1": t1 - t0, "controls": t2 - t1, "measure": t3 - t2, "total": time.perf_counter() - t0})


def examples(record: dict, config: SharedConfig, n: int = 3) -> dict:
    """Input, target and predicted grids of ``n`` samples of the first unseen test composition, from the run's
    final weights: {"task": names, "input", "target", "prediction"} (arrays [n, 8, 8])."""
    from lib.synthetic.data import fixed_set
    from lib.synthetic.models import GridModel, ModelConfig
    from lib.synthetic.train import load_weights

    spec = record["spec"]
    split = build_split(spec)
    model = GridModel(ModelConfig(**record["model_config"]))
    if not spec["untrained"]:
        load_weights(model, Path(spec["out_dir"]) / "train" / "final.safetensors")
    rows = fixed_set(split.test[:1], n, seed=spec["eval_seed"] + 3, spec=config.grid_spec())
    model.eval()
    with torch.no_grad():
        pred = model(rows["input"], rows["program"]).logits.argmax(1)
    return {"task": list(split.test[0]), "input": rows["input"].numpy(), "target": rows["target"].numpy(),
            "prediction": pred.numpy()}


def unit_pictures(record: dict, measure: dict, config: SharedConfig) -> tuple[np.ndarray, list[str]]:
    """The input and target grids of the rows each primitive's SAE unit fires most on: grids [m, 8, 8] and a
    title per grid."""
    spec = record["spec"]
    rows = analysis_rows(build_split(spec), spec["n_analysis_per_task"], spec["eval_seed"], config.grid_spec())
    grids, titles = [], []
    for u in measure["units"]:
        for i in u["top_rows"][:2]:
            grids += [rows["input"][i].numpy(), rows["target"][i].numpy()]
            titles += [f"{u['primitive']} unit {u['unit']}: input", "target"]
    return np.stack(grids), titles
