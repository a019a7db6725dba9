"""Phase 08 glue: steer generation with emotion vectors, choose a setting on one half of the prompts and measure
it, its controls and its baselines on the other.

Per model:

1. Vectors at the grid's layers (``layer_fractions`` of the depth): CAA contrast vectors from authored
   emotion / neutral pairs (``lib.phases.steering_data``), read at each text's last token; the phase-03
   directions of every method (from ``vectors_run``, or, when that is empty, fitted here by phase 03's
   ``emotion_directions`` on the pairs' texts); a random direction and a shuffled-label vector as controls.
   Every vector is used as a unit direction u; strength s is a multiple of the layer's typical residual norm
   n_L (the mean ||x|| over the prompts' tokens, each text's first token left out, ``residual_norms``), so the
   edit x + s * n_L * u means the same across models.
2. The grid (unsteered, and every emotion x layer x strength with the CAA vector) on all prompts, batched.
3. The choice, per emotion, on the *selection* half only (``lib.phases.steering_tables.choose``).
4. On the *report* half, at the chosen layer and strength: the random and shuffled-label controls, every
   phase-03 direction, prompting (``prompt_template``) and prompting plus steering, and two vectors at once.
5. Side effects: next-token KL on held-out neutral text, steered against unsteered, beside the random vector.
6. The learning curve of the CAA vector over the number of pairs; the chosen vectors saved as safetensors +
   JSON and as llama.cpp GGUF control vectors.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib.emotions import BASELINE, EMOTIONS
from lib.geometry.directions import emotion_directions
from lib.models.archs import blocks_of
from lib.models.encoding import prepare_tokenizer
from lib.models.loading import load_hf_model
from lib.models.registry import resolve_device, resolve_dtype, resolve_spec
from lib.models.weights import state_dict_sha256
from lib.paths import RESULTS
from lib.phases.steering_data import contrast_pairs, formatted, kl_texts, prompt_halves, prompted
from lib.phases.steering_tables import choose, setting_summary
from lib.settings import step as announce
from lib.steering.grid import Setting, generate_grid
from lib.steering.hooks import Steering, _left_padded, residual_norms, steer
from lib.steering.judge import judge_accuracy, judge_from_goemotions
from lib.steering.metrics import next_token_kl
from lib.steering.scoring import TextProbe, score_generations
from lib.steering.vector_files import VectorSet, export_gguf_control_vector
from lib.steering.vectors import curve_from_differences, random_like, residual_reads_at, shuffled_label_mean
from lib.text.generated import load_lexicon

__all__ = ["SteeringConfig", "SteeringRun", "run_phase", "grid_layers"]

PHASE03_METHODS = ("mean_vs_neutral", "mean_vs_rest", "pca")


@dataclass(frozen=True)
class SteeringConfig:
    """Every setting of phase 08 (the notebook's parameters, one for one)."""

    models: tuple[str, ...]
    emotions: tuple[str, ...] = ("gratitude", "anger")
    together: tuple[str, ...] = ("gratitude", "apology")
    layer_fractions: tuple[float, ...] = (0.2, 0.35, 0.5)
    strengths: tuple[float, ...] = (0.125, 0.25, 0.5)
    operator: str = "add"
    positions: str = "both"
    norm_preserving: bool = False
    n_prompts: int = 32
    n_pairs: int = 48
    curve_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 24)
    max_new_tokens: int = 20
    batch_rows: int = 64
    n_kl_texts: int = 16
    judge_max_per_label: int | None = None
    max_ppl_ratio: float = 1.5
    min_distinct_ratio: float = 0.8
    prompt_template: str = "Reply with {emotion}: {prompt}"
    prompt_format: str = "chat"
    pair_read: str = "mean_after_first"
    vectors_run: str = ""
    n_boot: int = 1000
    n_perm: int = 2000
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0


@dataclass
class SteeringRun:
    """What ``run_phase`` measured: per-row generations with their scores, summary tables, and metadata."""

    generations: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    judge: dict
    splits: dict
    identities: list[dict]
    timings: list[dict] = field(default_factory=list)


def grid_layers(n_layers: int, fractions) -> list[int]:
    """The blocks at ``fractions`` of the depth: round(f * n_layers), clipped to 0..n_layers - 1, distinct.

    >>> grid_layers(30, (0.2, 0.35, 0.5))
    [6, 10, 15]
    """
    return sorted({min(n_layers - 1, max(0, int(round(f * n_layers)))) for f in fractions})


def _unit(v) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float32)
    return v / v.norm()


class _Clock:
    def __init__(self, model: str):
        self.model, self.rows, self.t = model, [], time.perf_counter()

    def __call__(self, what: str, **extra) -> None:
        now = time.perf_counter()
        self.rows.append({"model": self.model, "step": what, "seconds": round(now - self.t, 2), **extra})
        self.t = now


def _phase03(name: str, config: SteeringConfig, reads: dict, labels: list[str], layers: list[int],
             results: Path) -> tuple[dict, str]:
    """{(layer, emotion, method): unit [d]} and where they came from."""
    wanted = tuple(dict.fromkeys((*config.emotions, *config.together)))
    if not config.vectors_run:
        out = {}
        for layer in layers:
            d = emotion_directions(reads[layer].double().numpy(), labels, PHASE03_METHODS, emotions=wanted)
            out.update({(layer, e, m): _unit(v) for (e, m), v in d.items()})
        return out, "fitted here on the pairs' texts (phase 03's emotion_directions; vectors_run is empty)"
    folder = Path(results) / "03_emotion_vectors" / config.vectors_run
    stem = folder / f"directions--{name.replace(':', '-')}"
    if not stem.with_suffix(".json").exists():
        raise FileNotFoundError(f"{stem}.json not found: run phase 03 (make reproduce ARGS=\"--only "
                                f"03_emotion_vectors\") or set vectors_run to '' to fit the directions here")
    info = json.loads(stem.with_suffix(".json").read_text())
    arr = np.load(stem.with_suffix(".npy"), allow_pickle=False)
    if list(arr.shape) != list(info["shape"]) or info.get("reading") != "sentence_end":
        raise ValueError(f"{stem}.npy has shape {list(arr.shape)} and reading {info.get('reading')!r}; its JSON "
                         f"says {info['shape']}, and phase 08 needs the sentence_end reading")
    keys = [tuple(k) for k in info["keys"]]
    out = {}
    for layer in layers:
        if layer not in info["layers"]:
            raise ValueError(f"{stem}.json has layers {info['layers']}; phase 08 steers at {layer}")
        for (e, m) in keys:
            if e in wanted:
                out[layer, e, m] = _unit(arr[info["layers"].index(layer), keys.index((e, m))])
    return out, f"phase 03 run {config.vectors_run!r} ({stem.name}.npy)"


def _meta(name, *, emotion, layer, strength, vector, prompting=False) -> dict:
    return {"setting": name, "emotion": emotion, "layer": layer, "strength": strength, "vector": vector,
            "prompting": prompting}


def _generate(hf, tok, prompts, index, settings, metas, config, half) -> pd.DataFrame:
    df = generate_grid(hf, tok, prompts, settings, max_new_tokens=config.max_new_tokens,
                       batch_rows=config.batch_rows, seed=config.seed)
    df["prompt_index"] = np.asarray(index)[df["prompt_index"].to_numpy()]
    df["half"] = half
    return df.merge(pd.DataFrame(metas), on="setting", how="left")


def _kl(hf, tok, texts, steerings_by_name: dict, batch: int = 4) -> pd.DataFrame:
    """Per text and named steering: mean next-token KL(unsteered || steered) over its real tokens."""
    rows = []
    for start in range(0, len(texts), batch):
        enc = tok(texts[start:start + batch], return_tensors="pt", padding=True)
        ids, mask = enc.input_ids.to(hf.device), enc.attention_mask.to(hf.device)
        with torch.no_grad():
            clean = hf(input_ids=ids, attention_mask=mask).logits
            for name, s in steerings_by_name.items():
                with steer(hf, [s], mask):
                    steered = hf(input_ids=ids, attention_mask=mask).logits
                for r in range(len(ids)):
                    rows.append({"text_index": start + r, "vector": name,
                                 "kl": next_token_kl(clean[r:r + 1], steered[r:r + 1], mask[r:r + 1])})
    return pd.DataFrame(rows)


def _run_model(name: str, config: SteeringConfig, judge, prompts, sel, rep, out: Path, results: Path):
    clock = _Clock(name)
    device = resolve_device(config.device)
    spec = resolve_spec(name)
    hf, tok = load_hf_model(spec, dtype=resolve_dtype(config.dtype), seed=config.seed)
    hf, tok = hf.to(device).eval(), prepare_tokenizer(tok)
    identity = {"name": name, "kind": spec.kind, "source": spec.source, "architecture": type(hf).__name__,
                "weights_sha256": state_dict_sha256(hf), "dtype": config.dtype, "device": device}
    n_layers = len(blocks_of(hf))
    layers, probe_layer = grid_layers(n_layers, config.layer_fractions), n_layers // 2
    plain_prompts, prompts = prompts, formatted(tok, prompts, config.prompt_format)
    enc = _left_padded(tok, prompts)
    norms = residual_norms(hf, enc.input_ids.to(device), enc.attention_mask.to(device), layers, skip_first=True)
    clock("load and residual norms")

    emotions = tuple(dict.fromkeys((*config.emotions, *config.together)))
    pairs = {e: contrast_pairs(e, config.n_pairs, config.seed) for e in emotions}
    texts = list(dict.fromkeys(t for e in emotions for pr in pairs[e] for t in pr))
    label_of = {t: BASELINE for e in emotions for _, t in pairs[e]}
    label_of.update({t: e for e in emotions for t, _ in pairs[e]})
    reads_last = residual_reads_at(hf, tok, texts, sorted({*layers, probe_layer}), read="last")
    reads = reads_last if config.pair_read == "last" else residual_reads_at(hf, tok, texts, layers,
                                                                            read=config.pair_read)
    pos = {t: i for i, t in enumerate(texts)}
    diffs = {(e, layer): reads[layer][[pos[p] for p, _ in pairs[e]]] - reads[layer][[pos[n] for _, n in pairs[e]]]
             for e in emotions for layer in layers}
    caa = {k: _unit(d.mean(0)) for k, d in diffs.items()}
    labels = [label_of[t] for t in texts]
    probe = TextProbe(probe_layer, seed=config.seed).fit(reads_last[probe_layer], labels)
    p03, p03_source = _phase03(name, config, reads_last, labels, layers, results)
    clock("vectors and probe", n_texts=len(texts))

    announce(f"{name}: steering grid")
    settings = [Setting(name="none", layer=layers[0], vector=caa[emotions[0], layers[0]], strength=0.0)]
    metas = [_meta("none", emotion="", layer=-1, strength=0.0, vector="none")]
    for e in config.emotions:
        for layer in layers:
            for s in config.strengths:
                n = f"{e}|caa|L{layer}|s{s:g}"
                settings.append(Setting(name=n, layer=layer, vector=caa[e, layer], strength=s * norms[layer],
                                        operator=config.operator, positions=config.positions,
                                        norm_preserving=config.norm_preserving))
                metas.append(_meta(n, emotion=e, layer=layer, strength=s, vector="caa"))
    everyone = np.arange(len(prompts))
    grid = _generate(hf, tok, prompts, everyone, settings, metas, config, "all")
    grid["half"] = np.where(np.isin(grid["prompt_index"], sel), "selection", "report")
    clock("grid generation", rows=len(grid))

    lex = load_lexicon()
    def scored(df, with_probe=True):  # the probe is read on report rows only: nothing chooses with it
        ids_of = {p: list(tok(p)["input_ids"]) for p in dict.fromkeys(df["prompt"])}  # each prompt tokenized once
        ids = [ids_of[p] for p in df["prompt"]]
        return score_generations(df, ids, model=hf, tokenizer=tok, judge=judge, lexicon=lex,
                                 probe=probe if with_probe else None, pad_id=tok.pad_token_id)
    grid = pd.concat([scored(grid[grid["half"] == "selection"], False), scored(grid[grid["half"] == "report"])],
                     ignore_index=True)
    chosen = choose(setting_summary(grid.query("half == 'selection'"), config), config)
    clock("grid scores and choice")

    announce(f"{name}: controls and baselines at the chosen settings")
    rep_prompts = [prompts[i] for i in rep]
    rep_plain = [plain_prompts[i] for i in rep]
    settings, metas, extra = [], [], []
    for _, c in chosen.iterrows():
        e, layer, s = c["emotion"], int(c["layer"]), float(c["strength"])
        vecs = {"random": _unit(random_like(caa[e, layer], seed=config.seed + 1)),
                "shuffled": _unit(shuffled_label_mean(diffs[e, layer], seed=config.seed))}
        vecs.update({f"phase03-{m}": v for (L, ee, m), v in p03.items() if L == layer and ee == e})
        other = [x for x in config.together if x != e]
        if e in config.together and other:
            b = other[0]
            vecs[f"with-{b}"] = caa[e, layer] + caa[b, layer]
            settings.append(Setting(name=f"{b}|caa|L{layer}|s{s:g}|alone", layer=layer, vector=caa[b, layer],
                                    strength=s * norms[layer], operator=config.operator, positions=config.positions,
                                    norm_preserving=config.norm_preserving))
            metas.append(_meta(settings[-1].name, emotion=b, layer=layer, strength=s, vector="caa"))
        for kind, v in vecs.items():
            n = f"{e}|{kind}|L{layer}|s{s:g}"
            settings.append(Setting(name=n, layer=layer, vector=v, strength=s * norms[layer],
                                    operator=config.operator, positions=config.positions,
                                    norm_preserving=config.norm_preserving))
            metas.append(_meta(n, emotion=e, layer=layer, strength=s, vector=kind))
    parts = [grid]
    if settings:
        df = _generate(hf, tok, rep_prompts, rep, settings, metas, config, "report")
        parts.append(scored(df))
    for _, c in chosen.iterrows():
        e, layer, s = c["emotion"], int(c["layer"]), float(c["strength"])
        ask = formatted(tok, prompted(rep_plain, config.prompt_template, e), config.prompt_format)
        st = [Setting(name=f"{e}|prompted", layer=layer, vector=caa[e, layer], strength=0.0),
              Setting(name=f"{e}|prompted+caa|L{layer}|s{s:g}", layer=layer, vector=caa[e, layer],
                      strength=s * norms[layer], operator=config.operator, positions=config.positions,
                      norm_preserving=config.norm_preserving)]
        mt = [_meta(st[0].name, emotion=e, layer=layer, strength=0.0, vector="none", prompting=True),
              _meta(st[1].name, emotion=e, layer=layer, strength=s, vector="caa", prompting=True)]
        df = _generate(hf, tok, ask, rep, st, mt, config, "report")
        parts.append(scored(df))
    clock("report-half generation and scores")

    kl_rows, curves, vset, cosines = [], [], VectorSet(), []
    neutral = kl_texts(config.n_kl_texts, config.seed)
    for _, c in chosen.iterrows():
        e, layer, s = c["emotion"], int(c["layer"]), float(c["strength"])
        delta = s * norms[layer]
        st = {v: Steering(layer=layer, vector=vec * delta, strength=1.0, operator=config.operator,
                          positions="both", norm_preserving=config.norm_preserving)
              for v, vec in (("caa", caa[e, layer]), ("random", _unit(random_like(caa[e, layer], config.seed + 1))))}
        kl_rows.append(_kl(hf, tok, neutral, st).assign(model=name, emotion=e, layer=layer, strength=s))
        half = len(pairs[e]) // 2
        ref = diffs[e, layer][half:].mean(0)
        sizes = [n for n in config.curve_sizes if n <= half]
        for r in curve_from_differences(diffs[e, layer][:half], sizes, seed=config.seed, reference=ref):
            curves.append({"model": name, "emotion": e, "layer": layer, "n_pairs": r["n"], "cosine": r["cosine"]})
        for (L, ee, m), v in p03.items():
            if L == layer and ee == e:
                cosines.append({"model": name, "emotion": e, "layer": layer, "method": m,
                                "cosine_with_caa": float(v @ caa[e, layer])})
        vset.add(f"{e}-L{layer}", caa[e, layer] * delta, layer=layer, model_name=name, method="caa-last")
    folder = out / "vectors" / name.replace(":", "-").replace("/", "-")
    folder.mkdir(parents=True, exist_ok=True)
    if len(vset):
        vset.save(folder)
        for n in vset.names:
            entry = vset[n]
            if entry.layer >= 1:
                export_gguf_control_vector({entry.layer: entry.vector}, folder / f"{n}.gguf",
                                           model_hint=type(hf).__name__)
    clock("side effects, learning curves, export")
    gens = pd.concat(parts, ignore_index=True).assign(model=name)
    extras = {"chosen": chosen.assign(model=name), "side_effects": pd.concat(kl_rows, ignore_index=True),
              "learning_curve": pd.DataFrame(curves), "vector_cosines": pd.DataFrame(cosines),
              "norms": pd.DataFrame({"model": name, "layer": list(norms), "typical_norm": list(norms.values())})}
    identity.update({"layers": layers, "probe_layer": probe_layer, "phase03_vectors": p03_source})
    return gens, extras, identity, clock.rows


def run_phase(config: SteeringConfig, out: Path, results: Path = RESULTS) -> SteeringRun:
    """Everything phase 08 measures (module docstring), for every model of ``config``."""
    t0 = time.perf_counter()
    announce("judge")
    judge = judge_from_goemotions(EMOTIONS, max_per_label=config.judge_max_per_label, seed=config.seed)
    judge_info = judge_accuracy(judge, max_per_label=config.judge_max_per_label, seed=config.seed)
    prompts, sel, rep, record = prompt_halves(config.n_prompts, config.seed)
    timings = [{"model": "", "step": "judge and prompts", "seconds": round(time.perf_counter() - t0, 2)}]
    gens, extras, identities = [], {}, []
    for name in config.models:
        g, x, ident, t = _run_model(name, config, judge, prompts, sel, rep, Path(out), Path(results))
        gens.append(g)
        identities.append(ident)
        timings.extend(t)
        for k, v in x.items():
            extras.setdefault(k, []).append(v)
    tables = {k: pd.concat(v, ignore_index=True) for k, v in extras.items()}
    tables["timings"] = pd.DataFrame(timings)
    return SteeringRun(generations=pd.concat(gens, ignore_index=True), tables=tables, judge=judge_info,
                       splits={"prompts": record, "prompt_indices": {"selection": [int(i) for i in sel],
                                                                           "report": [int(i) for i in rep]}}, identities=identities, timings=timings)
