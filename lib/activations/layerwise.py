"""Per-layer matrices from activation stores, for phases 03-04: one hook site and reduction of
every stored layer, over one or more dataset profiles, with labels, and paired across models by
row id (stores sort rows by token count, which differs between tokenizers).

>>> act_name("hook_resid_post", 6)
'blocks.6.hook_resid_post'
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lib.activations.names import act_name
from lib.activations.store import ActivationStore

__all__ = ["LayerData", "load_layers", "paired_layers", "stratified_sample"]


@dataclass
class LayerData:
    """xs[i] float32 [rows, d] is layer ``layers[i]``; ``labels`` has one row per matrix row."""

    model: str
    site: str
    reduction: str
    layers: list[int]
    xs: list[np.ndarray]
    labels: pd.DataFrame

    def subset(self, mask) -> LayerData:
        """The same layers restricted to the rows where ``mask`` is True (or to the given indices)."""
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask)
        return LayerData(self.model, self.site, self.reduction, self.layers, [x[idx] for x in self.xs],
                         self.labels.iloc[idx].reset_index(drop=True))

    def layer(self, layer: int) -> np.ndarray:
        """The matrix of one layer (by layer number, not position)."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} not stored for {self.model} {self.site}; stored: {self.layers}")
        return self.xs[self.layers.index(layer)]


def load_layers(stores: list[ActivationStore], model: str, site: str = "hook_resid_post",
                reduction: str = "sentence_end", layers: list[int] | None = None) -> LayerData:
    """Every stored layer of ``site`` (or ``layers``) from one model's stores, rows concatenated in
    store order; labels gain a ``store_row`` column. All stores must hold the same layers."""
    stored = [s.attrs["sites"].get(site) for s in stores]
    if any(s is None for s in stored):
        have = [sorted(s.attrs["sites"]) for s in stores]
        raise ValueError(f"site {site!r} is not in every store of {model}; they hold {have}")
    if any(s != stored[0] for s in stored):
        raise ValueError(f"stores of {model} hold different layers of {site}: {stored}")
    chosen = list(stored[0]) if layers is None else list(layers)
    missing = sorted(set(chosen) - set(stored[0]))
    if missing:
        raise ValueError(f"layers {missing} of {site} are not stored for {model}; stored: {stored[0]}")
    xs = [np.concatenate([s.get(act_name(site, layer), reduction) for s in stores]) for layer in chosen]
    labels = pd.concat([s.labels.assign(store_row=np.arange(len(s.labels))) for s in stores], ignore_index=True)
    return LayerData(model, site, reduction, chosen, xs, labels)


def paired_layers(a: LayerData, b: LayerData) -> tuple[LayerData, LayerData]:
    """``a`` and ``b`` restricted to the row ids both hold, in the same order (``a``'s order)."""
    if a.labels["id"].duplicated().any() or b.labels["id"].duplicated().any():
        raise ValueError("row ids must be unique within each model's stores to pair them")
    pos_b = pd.Series(np.arange(len(b.labels)), index=b.labels["id"])
    common = a.labels["id"].isin(pos_b.index).to_numpy()
    if not common.any():
        raise ValueError(f"{a.model} and {b.model} share no row ids: were they extracted on the same profiles?")
    ia = np.flatnonzero(common)
    ib = pos_b.loc[a.labels["id"].to_numpy()[ia]].to_numpy()
    return a.subset(ia), b.subset(ib)


def stratified_sample(labels: pd.DataFrame, n: int | None, seed: int = 0, by: str = "emotion") -> np.ndarray:
    """Sorted row indices of about ``n`` rows, each ``by`` class kept in proportion (all if ``n`` is
    None or at least the row count).

    >>> df = pd.DataFrame({"emotion": ["a"] * 6 + ["b"] * 2})
    >>> stratified_sample(df, 4).tolist()
    [3, 4, 5, 6]
    """
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for _, idx in labels.groupby(by, sort=True).indices.items():
        k = max(1, round(n * len(idx) / len(labels)))
        keep.extend(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.asarray(keep))
