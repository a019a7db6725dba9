"""Phase 02 (activation stores): the per-store table, norm profiles and PCA panels of the report.

Extracting and opening stores by run is ``lib.activations.runs``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lib.activations.names import act_name
from lib.emotions import EMOTIONS
from lib.paths import relative
from lib.activations.store import ActivationStore

__all__ = ["EMOTION_CHOICES", "store_table", "norm_profile", "pca_2d", "pca_panels"]

# Phase 02's ``emotions`` filters the dataset's rows, so neutral is a valid choice.
EMOTION_CHOICES = EMOTIONS


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
        norms = np.linalg.norm(store.get(act_name(site, layer), reduction), axis=1)
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
        proj, var = pca_2d(store.get(act_name(site, layer), reduction))
        parts.append(pd.DataFrame({"PC1": proj[:, 0], "PC2": proj[:, 1], "emotion": store.labels["emotion"],
                                   "text": store.labels["text"], "stage": stage, "layer": layer,
                                   "var1": var[0], "var2": var[1]}))
    return pd.concat(parts, ignore_index=True)
