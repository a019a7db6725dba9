"""Activation stores by run: where each (model, profile) store lives, extracting them all, opening
phase 02's stores from later phases (or extracting small ones for smoke runs and tests)."""
from __future__ import annotations

import json
from pathlib import Path

from lib.activations.store import ActivationStore, StoreError, open_store
from lib.paths import RESULTS, ROOT
from lib.paths import relative

__all__ = ["parse_profile", "resolve_stores_dir", "store_folder", "extract_all", "open_run_store", "obtain_stores"]


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


def store_folder(stores_dir: Path, model: str, profile: str, settings_sha: str) -> Path:
    """Where the store of ``model`` on ``profile`` with settings hash ``settings_sha`` lives: runs whose
    settings differ (rows, hooks, dtype, weights, ...) get their own store, runs whose settings are equal
    share one (``:`` is not used in folder names).

    >>> store_folder(Path("s"), "random:smollm2-135m", "goemotions:dev", "0123456789abcdef").as_posix()
    's/random-smollm2-135m/goemotions-dev--0123456789ab'
    """
    return Path(stores_dir) / model.replace(":", "-") / f"{profile.replace(':', '-')}--{settings_sha[:12]}"


def extract_all(models: list[str], profiles: list[str], config, stores_dir: Path, *, device: str = "auto",
                max_per_emotion: int | None = None, emotions: list[str] | None = None, seed: int = 0,
                goemotions_max_per_emotion: int | None = None, log=print) -> dict[str, dict[str, Path]]:
    """Extract each profile for each model (one model in memory at a time); return store paths.

    GoEmotions profiles are also capped at ``goemotions_max_per_emotion`` rows per emotion (if set):
    its neutral class is 7 to 12 times larger than the others.
    """
    from lib.text.datasets import load_profile
    from lib.activations.extract import extract, plan_store
    from lib.models.loading import load_model

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
            _, settings_sha = plan_store(lm, df, config)
            out = store_folder(stores_dir, name, spec, settings_sha)
            extract(lm, df, out, config, log=log)
            paths.setdefault(name, {})[spec] = out
        del lm
    return paths


def open_run_store(model: str, profile: str, run: str = "default") -> ActivationStore:
    """The store phase 02 made for ``model`` and ``profile`` in ``run`` (e.g. for phase 03), with every
    chunk's checksum verified first (it was written by another process)."""
    index = RESULTS / "02_activations" / run / "stores.json"
    if not index.exists():
        raise StoreError(f"{relative(index)} not found: run `make reproduce` (phase 02, run {run!r}) first")
    try:
        stores = json.loads(index.read_text())
    except ValueError as err:
        raise StoreError(f"{relative(index)} is damaged ({err}); rerun phase 02 of run {run!r}") from err
    if model not in stores or profile not in stores[model]:
        have = {m: sorted(p) for m, p in stores.items()}
        raise StoreError(f"no store for model {model!r}, profile {profile!r} in run {run!r}; it has {have}")
    store = open_store(ROOT / stores[model][profile], verify=True)
    suffix = store.path.name.rpartition("--")[2]
    if not store.manifest["settings_sha256"].startswith(suffix):
        raise StoreError(f"{relative(store.path)} holds a store made with settings {store.manifest['settings_sha256'][:12]}, "
                         f"not the ones its folder is named for ({suffix}); rerun phase 02 of run {run!r}")
    return store


def obtain_stores(models: list[str], profiles: list[str], activations_run: str, scratch: Path, *,
                  max_per_emotion: int | None = 20, seed: int = 0, site: str = "hook_resid_post",
                  log=print) -> dict[tuple[str, str], ActivationStore]:
    """Stores for (model, profile): from phase 02's run ``activations_run``, or, when that is empty
    (smoke runs, tests), extracted here into ``scratch`` (``site`` of every layer, reductions only,
    ``max_per_emotion`` rows per emotion)."""
    if activations_run:
        return {(m, p): open_run_store(m, p, activations_run) for m in models for p in profiles}
    from lib.activations.plan import ExtractConfig

    config = ExtractConfig(sites=(site,), token_sites=())
    paths = extract_all(models, profiles, config, Path(scratch) / "stores", device="cpu",
                        max_per_emotion=max_per_emotion, seed=seed, log=log)
    return {(m, p): open_store(paths[m][p]) for m in models for p in profiles}
