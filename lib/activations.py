"""Phase-02 helpers: extract every (model, profile) into stores, summarise and open them later."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lib.paths import RESULTS, ROOT
from lib.provenance import relative
from lib.store import ActivationStore, open_store

__all__ = ["parse_profile", "store_folder", "extract_all", "obtain_stores", "store_table", "norm_profile", "pca_2d", "pca_panels", "open_run_store",
           "resolve_stores_dir"]


def parse_profile(spec: str) -> tuple[str, str | None]:
    """``"goemotions:dev"`` -> ("goemotions", "dev"); ``"baseline"`` -> ("baseline", None)."""
    profile, _, split = spec.partition(":")
    return profile, split or None


def resolve_stores_dir(stores_dir: str, output_dir: Path) -> Path:
    """Stores live outside a run's folder so an interrupted extraction resumes across runs;
    relative paths are from the project root; empty means ``output_dir/stores`` (smoke runs)."""
    if not stores_dir:
        return Path(output_dir) / "stores"
    path = Path(stores_dir)
    return path if path.is_absolute() else ROOT / path


def store_folder(stores_dir: Path, model: str, profile: str) -> Path:
    """Where the store of ``model`` on ``profile`` lives (``:`` is not used in folder names).

    >>> store_folder(Path("s"), "random:smollm2-135m", "goemotions:dev").as_posix()
    's/random-smollm2-135m/goemotions-dev'
    """
    return Path(stores_dir) / model.replace(":", "-") / profile.replace(":", "-")


def extract_all(models: list[str], profiles: list[str], config, stores_dir: Path, *, device: str = "auto",
                max_per_emotion: int | None = None, emotions: list[str] | None = None, seed: int = 0,
                goemotions_max_per_emotion: int | None = None, log=print) -> dict[str, dict[str, Path]]:
    """Extract each profile for each model (one model in memory at a time); return store paths.

    GoEmotions profiles are also capped at ``goemotions_max_per_emotion`` rows per emotion (if set):
    its neutral class is 7 to 12 times larger than the others.
    """
    from lib.datasets import load_profile
    from lib.extract import extract
    from lib.models import load_model

    frames = {}
    for spec in profiles:
        profile, split = parse_profile(spec)
        caps = [c for c in (max_per_emotion, goemotions_max_per_emotion if profile == "goemotions" else None) if c]
        cap = min(caps) if caps else None
        frames[spec] = load_profile(profile, split=split, emotions=emotions, max_per_emotion=cap, seed=seed)
    paths: dict[str, dict[str, Path]] = {}
    for name in models:
        lm = load_model(name, device=device)
        for spec, df in frames.items():
            out = store_folder(stores_dir, name, spec)
            extract(lm, df, out, config, replace_mismatched=True, log=log)
            paths.setdefault(name, {})[spec] = out
        del lm
    return paths


def store_table(paths: dict[str, dict[str, Path]]) -> pd.DataFrame:
    """One row per store: shapes, bytes, time, throughput and float16 error from its manifest."""
    rows = []
    for model, by_profile in paths.items():
        for profile, path in by_profile.items():
            m = json.loads((Path(path) / "manifest.json").read_text())
            rows.append({"model": model, "profile": profile, "rows": m["n_rows"], "tokens": m["n_tokens"],
                         "max_len": m["max_len"], "hooks": len(m["hooks"]), "stored_hooks": len(m["stored_hooks"]),
                         "dtype": m["config"]["dtype"], "MB": round(m["bytes"] / 1e6, 1), "wall_s": m["wall_s"],
                         "samples_per_s": m["samples_per_s"], "tokens_per_s": m["tokens_per_s"],
                         "fp16_worst_rel_err": m["float16_worst_relative_error"],
                         "resumed_at_batch": m["resumed_at_batch"], "path": str(relative(Path(path)))})
    return pd.DataFrame(rows)


def norm_profile(store: ActivationStore, site: str = "hook_resid_post", reduction: str = "sentence_end") -> pd.DataFrame:
    """Mean L2 norm of ``site`` per layer and emotion: columns layer, emotion, norm, sd."""
    emotions = store.labels["emotion"].to_numpy()
    out = []
    for layer in store.attrs["sites"].get(site, []):
        norms = np.linalg.norm(store.get(f"blocks.{layer}.{site}", reduction), axis=1)
        for emo in np.unique(emotions):
            v = norms[emotions == emo]
            out.append({"layer": layer, "emotion": emo, "norm": float(v.mean()), "sd": float(v.std())})
    return pd.DataFrame(out)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of the centred rows of ``x`` on their first two principal axes, and the share
    of variance each explains.

    >>> p, r = pca_2d(np.array([[0., 0.], [2., 0.], [4., 0.1]]))
    >>> p.shape, bool(r[0] > 0.99)
    ((3, 2), True)
    """
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s ** 2 / max((s ** 2).sum(), 1e-30)
    proj = xc @ vt[:2].T
    signs = np.sign(proj[np.abs(proj).argmax(0), range(proj.shape[1])])  # deterministic orientation
    return proj * signs, var[:2]


def pca_panels(store: ActivationStore, site: str = "hook_resid_post", reduction: str = "sentence_end") -> pd.DataFrame:
    """2-D PCA of ``site`` at the first, middle and last stored layer.

    Columns PC1, PC2, emotion, text, stage (early / middle / late), layer, and var1, var2 (the
    share of variance of each axis).
    """
    stored = store.attrs["sites"][site]
    picks = {"early": stored[0], "middle": stored[len(stored) // 2], "late": stored[-1]}
    parts = []
    for stage, layer in picks.items():
        proj, var = pca_2d(store.get(f"blocks.{layer}.{site}", reduction))
        parts.append(pd.DataFrame({"PC1": proj[:, 0], "PC2": proj[:, 1], "emotion": store.labels["emotion"],
                                   "text": store.labels["text"], "stage": stage, "layer": layer,
                                   "var1": var[0], "var2": var[1]}))
    return pd.concat(parts, ignore_index=True)


def open_run_store(model: str, profile: str, run: str = "default") -> ActivationStore:
    """The store phase 02 made for ``model`` and ``profile`` in ``run`` (e.g. for phase 03)."""
    index = RESULTS / "02_activations" / run / "stores.json"
    if not index.exists():
        raise FileNotFoundError(f"{relative(index)} not found: run `make reproduce` (phase 02, run {run!r}) first")
    stores = json.loads(index.read_text())
    if model not in stores or profile not in stores[model]:
        have = {m: sorted(p) for m, p in stores.items()}
        raise KeyError(f"no store for model {model!r}, profile {profile!r} in run {run!r}; it has {have}")
    return open_store(ROOT / stores[model][profile])


def obtain_stores(models: list[str], profiles: list[str], activations_run: str, scratch: Path, *,
                  max_per_emotion: int | None = 20, seed: int = 0, site: str = "hook_resid_post",
                  log=print) -> dict[tuple[str, str], ActivationStore]:
    """Stores for (model, profile): from phase 02's run ``activations_run``, or, when that is empty
    (smoke runs, tests), extracted here into ``scratch`` (``site`` of every layer, reductions only,
    ``max_per_emotion`` rows per emotion)."""
    if activations_run:
        return {(m, p): open_run_store(m, p, activations_run) for m in models for p in profiles}
    from lib.extract import ExtractConfig

    config = ExtractConfig(sites=(site,), token_sites=())
    paths = extract_all(models, profiles, config, Path(scratch) / "stores", device="cpu",
                        max_per_emotion=max_per_emotion, seed=seed, log=log)
    return {(m, p): open_store(paths[m][p]) for m in models for p in profiles}
