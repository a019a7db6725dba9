"""Phase-03 helpers: the readings of a row, emotion directions fitted on all rows (saved for phase 05, compared
across layers and methods), and emotion subspaces with their stability, for every layer.

Readings of a row: ``sentence_end`` (last real token), ``mean`` (mean over real tokens) and ``span`` (mean
over the emotion-bearing span's tokens). Every authored row has a span, neutral rows included, so the span
reading compares span with span; a row without one (NaN in the store) is dropped from that reading and
counted (``readings_by_model``), never replaced by another reading.

Probes are ``lib.phases.emotion_probes``; held-out projections ``lib.phases.emotion_projections``.

>>> READINGS
('sentence_end', 'span', 'mean')
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lib.activations.layerwise import LayerData, load_layers
from lib.emotions import TARGET_EMOTIONS
from lib.geometry.directions import emotion_directions, layer_cosines
from lib.geometry.rows import drop_missing
from lib.geometry.stability import split_half_stability, subspace_stability
from lib.geometry.subspaces import KINDS, fit_rows

__all__ = ["READINGS", "finite_rows", "reading_layers", "readings_by_model", "directions_by_layer",
           "directions_array", "directions_by_model", "cosine_long", "method_agreement", "save_directions",
           "subspace_dims", "stability_by_layer", "stability_by_model", "stability_long"]

READINGS = ("sentence_end", "span", "mean")
MEASURES = {"within": "within-class variance", "between": "class-mean offsets from neutral"}


def finite_rows(ld: LayerData) -> tuple[LayerData, dict]:
    """``ld`` without the rows that hold a NaN at any layer, and {emotion: rows dropped}.

    >>> ld = LayerData("m", "s", "span", [0], [np.array([[1.0], [np.nan]])], pd.DataFrame({"emotion": ["a", "b"]}))
    >>> kept, dropped = finite_rows(ld); len(kept.labels), dropped
    (1, {'b': 1})
    """
    ok = np.logical_and.reduce([np.isfinite(x).all(axis=1) for x in ld.xs])
    dropped = ld.labels.loc[~ok, "emotion"].value_counts().sort_index()
    return (ld if ok.all() else ld.subset(ok)), {str(k): int(v) for k, v in dropped.items()}


def reading_layers(stores, model: str, reading: str, site: str = "hook_resid_post") -> LayerData:
    """Every layer of ``site`` in one reading, rows with NaN (no span) dropped (``finite_rows``)."""
    if reading not in READINGS:
        raise ValueError(f"reading {reading!r} is not one of {READINGS}")
    return finite_rows(load_layers(stores, model, site, reading))[0]


def readings_by_model(authored: dict, stores, *, profiles, readings=READINGS, site: str = "hook_resid_post"
                      ) -> tuple[dict, pd.DataFrame]:
    """({(model, reading): LayerData} for every model of ``authored`` and reading, NaN rows dropped; a table of
    rows kept and dropped per model, reading and emotion). The sentence-end reading is ``authored[model]``;
    the others are read from ``stores[model, profile]`` for each of ``profiles``."""
    data, counts = {}, []
    for m, ld in authored.items():
        for reading in readings:
            if reading not in READINGS:
                raise ValueError(f"reading {reading!r} is not one of {READINGS}")
            raw = ld if reading == "sentence_end" else load_layers([stores[m, p] for p in profiles], m, ld.site, reading)
            data[m, reading], dropped = finite_rows(raw)
            kept = data[m, reading].labels["emotion"].value_counts()
            counts += [{"model": m, "reading": reading, "emotion": e, "rows": int(kept.get(e, 0)),
                        "dropped": dropped.get(e, 0)} for e in sorted(set(raw.labels["emotion"]))]
    return data, pd.DataFrame(counts, columns=["model", "reading", "emotion", "rows", "dropped"])


def directions_by_layer(ld: LayerData, methods=("mean_vs_neutral", "mean_vs_rest", "pca"),
                        extra_by_layer: dict | None = None) -> dict[int, dict]:
    """{layer: {(emotion, method): unit direction [d]}}, each oriented so its emotion projects higher."""
    out = {}
    for layer, x in zip(ld.layers, ld.xs):
        extra = (extra_by_layer or {}).get(layer)
        out[layer] = emotion_directions(x, ld.labels, methods, extra=extra)
    return out


def directions_array(dirs: dict[int, dict]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Stack ``directions_by_layer`` output: float32 [layers, keys, d], the layers and the keys."""
    layers = sorted(dirs)
    keys = sorted(dirs[layers[0]])
    arr = np.stack([np.stack([dirs[layer][k] for k in keys]) for layer in layers]).astype(np.float32)
    return arr, layers, keys


def directions_by_model(data: dict, probe_dirs: dict | None = None,
                        methods=("mean_vs_neutral", "mean_vs_rest", "pca")) -> dict:
    """{(model, reading): (LayerData, ``directions_by_layer``)} for every entry of ``data`` (``readings_by_model``),
    fitted on all its rows; ``probe_dirs`` {model: {layer: {(emotion, "probe"): [d]}}} join the sentence-end
    reading. These are the directions saved for phase 05 and compared across layers; projections read on
    held-out rows are ``lib.phases.emotion_projections``."""
    return {(m, reading): (ld, directions_by_layer(ld, methods, (probe_dirs or {}).get(m)
                                                   if reading == "sentence_end" else None))
            for (m, reading), ld in data.items()}


def cosine_long(dirs: dict[int, dict], method: str) -> pd.DataFrame:
    """Cosine of each emotion's ``method`` direction between every pair of layers, long form."""
    tables = layer_cosines(dirs)
    rows = []
    for (emotion, m), table in tables.items():
        if m != method:
            continue
        long = table.stack().rename("cosine").reset_index()
        long.columns = ["layer_a", "layer_b", "cosine"]
        rows.append(long.assign(emotion=emotion))
    if not rows:
        raise ValueError(f"no directions of method {method!r}; have {sorted({m for _, m in tables})}")
    return pd.concat(rows, ignore_index=True)


def method_agreement(dirs: dict, reference: str = "mean_vs_neutral") -> pd.DataFrame:
    """Cosine between every direction and its emotion's ``reference`` direction at the same layer, from
    ``directions_by_model`` output: columns model, reading, layer, emotion, method, cosine (the reference
    itself included, cosine 1)."""
    rows = []
    for (m, reading), (_, by_layer) in dirs.items():
        for layer, d in by_layer.items():
            for (emotion, method), v in d.items():
                rows.append({"model": m, "reading": reading, "layer": layer, "emotion": emotion, "method": method,
                             "cosine": float(v @ d[emotion, reference])})
    return pd.DataFrame(rows)


def save_directions(out: Path, dirs: dict, models, site: str, reading: str = "sentence_end") -> None:
    """Per model, ``directions--<model>.npy`` (``directions_array``: float32 [layers, keys, d_model]) and
    ``directions--<model>.json`` (model, site, reading, layers, keys, shape), ':' in names written '-'."""
    for m in models:
        arr, layers, keys = directions_array(dirs[m, reading][1])
        stem = f"directions--{m.replace(':', '-')}"
        np.save(Path(out) / f"{stem}.npy", arr)
        (Path(out) / f"{stem}.json").write_text(json.dumps(
            {"model": m, "site": site, "reading": reading, "layers": layers, "keys": [list(k) for k in keys],
             "shape": list(arr.shape)}, indent=2))


def subspace_dims(ld: LayerData, layer: int, var_threshold: float = 0.9, max_k: int = 64) -> pd.DataFrame:
    """Cumulative explained share by number of dimensions at one layer, for each emotion's subspace and the
    joint one, of each kind: ``within`` (share of within-class variance; column ``k`` = the fewest dims
    reaching ``var_threshold``, at most ``max_k``) and ``between`` (share of the class-mean offsets' squared
    norm). ``measures`` says which; ``offset_norm`` is the emotion's offset from the neutral mean (joint: the
    root mean square over emotions) and ``within_rms`` the root mean squared distance of its rows to their own
    class mean, so the two can be compared."""
    rows = drop_missing(ld.layer(layer), ld.labels)
    out = []
    for name in (*TARGET_EMOTIONS, "joint"):
        emotion = None if name == "joint" else name
        for kind in KINDS:
            fit = fit_rows(rows, emotion, kind=kind, var_threshold=var_threshold, max_k=max_k)
            ems = TARGET_EMOTIONS if emotion is None else (emotion,)
            spread = np.concatenate([rows.x[rows.emotion == e] - rows.x[rows.emotion == e].mean(0) for e in ems])
            out += [{"subspace": name, "kind": kind, "measures": MEASURES[kind], "dims": i + 1, "explained": float(v),
                     "k": fit.k, "offset_norm": float(np.sqrt(np.mean(fit.offset_norms ** 2))),
                     "within_rms": float(np.sqrt(np.square(spread).sum(1).mean()))}
                    for i, v in enumerate(fit.explained[:max_k])]
    return pd.DataFrame(out)


def stability_by_layer(fit_a: LayerData, fit_b: LayerData, both: LayerData, *, var_threshold: float = 0.9,
                       max_k: int = 32, n_splits: int = 5, seed: int = 0, n_null: int = 100, layers=None
                       ) -> pd.DataFrame:
    """Principal angles between subspaces fit on ``fit_a`` and ``fit_b`` (e.g. baseline and extended profiles),
    and between random halves of ``both``, beside random subspaces drawn from the data's own covariance
    (``lib.geometry.stability``) and uniform ones.

    One row per layer, subspace (each emotion and joint), kind (within, between) and comparison: k (the
    threshold k of the fit on all rows of ``both``, used by both comparisons), mean and largest angle, the
    null's mean, 5th percentile of its mean angle and largest-angle mean, the uniform reference's mean
    (degrees), and ``beats_null``.
    """
    out = []
    for layer in layers if layers is not None else both.layers:
        rows = drop_missing(both.layer(layer), both.labels)
        for name in (*TARGET_EMOTIONS, "joint"):
            emotion = None if name == "joint" else name
            for kind in KINDS:
                k = fit_rows(rows, emotion, kind=kind, var_threshold=var_threshold, max_k=max_k).k
                common = {"emotion": emotion, "kind": kind, "k": k, "n_null": n_null, "seed": seed}
                comparisons = {
                    "profiles": subspace_stability(fit_a.layer(layer), fit_a.labels, fit_b.layer(layer), fit_b.labels,
                                                   **common),
                    "split_half": split_half_stability(rows.x, rows.emotion, n_splits=n_splits, **common)}
                for comparison, st in comparisons.items():
                    s = st.summary()
                    out.append({"layer": layer, "subspace": name, "kind": kind, "comparison": comparison, "k": st.k,
                                **{key: float(np.degrees(s[key])) for key in
                                   ("mean_angle", "max_angle", "null_mean_angle", "null_mean_angle_p05",
                                    "null_max_angle", "uniform_mean_angle")},
                                "beats_null": s["beats_null"]})
    return pd.DataFrame(out)


def stability_by_model(authored: dict, profiles, **kwargs) -> pd.DataFrame:
    """``stability_by_layer`` for every model: subspaces fit on the rows of ``profiles[0]`` against
    ``profiles[1]``, and on random halves of all rows; ``kwargs`` go to ``stability_by_layer``. Adds ``model``."""
    parts = []
    for m, ld in authored.items():
        ld_a, ld_b = (ld.subset((ld.labels["profile"] == p).to_numpy()) for p in profiles[:2])
        parts.append(stability_by_layer(ld_a, ld_b, ld, **kwargs).assign(model=m))
    return pd.concat(parts, ignore_index=True)


def stability_long(stab: pd.DataFrame) -> pd.DataFrame:
    """``stability_by_model`` output in long form for one figure: per model, layer, subspace and kind, the
    observed mean angle of each comparison (``series`` "split halves", "profiles") and the data-covariance
    null's 5th percentile for the split halves ("null, 5th percentile"), in column ``angle`` (degrees)."""
    keys = ["model", "layer", "subspace", "kind"]
    obs = stab.assign(series=stab["comparison"].map({"split_half": "split halves", "profiles": "profiles"}),
                      angle=stab["mean_angle"])[keys + ["series", "angle"]]
    null = stab[stab["comparison"] == "split_half"].assign(series="null, 5th percentile",
                                                          angle=lambda d: d["null_mean_angle_p05"])
    return pd.concat([obs, null[keys + ["series", "angle"]]], ignore_index=True)
