"""The comparison figures: four layer x head heatmaps (pre, fine, difference, ratio) as a PNG (matplotlib, no
pyplot state) and as a self-contained HTML page (plotly, with plotly.js inline so that it renders offline).
Pre and fine share one sequential scale; the difference is coloured on a diverging scale centred at 0 and
the ratio on a diverging log scale centred at 1. Files are written aside and renamed into place.

>>> import pandas as pd, tempfile, pathlib
>>> df = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "R_pre": [1.0, 2, 3, 4],
...                    "R_fine": [1.0, 3, 3, 2], "difference": [0.0, 1, 0, -2], "ratio": [1.0, 1.5, 1, 0.5]})
>>> grids(df)["ratio"].tolist()
[[1.0, 1.5], [1.0, 0.5]]
>>> d = pathlib.Path(tempfile.mkdtemp()); write_comparison_png(df, d / "h.png").read_bytes()[:4]
b'\\x89PNG'
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["PANELS", "grids", "ratio_limit", "panel_norms", "write_comparison_png", "write_comparison_html"]

# column -> panel title
PANELS = {"R_pre": "pre-tuned R_h", "R_fine": "fine-tuned R_h", "difference": "difference (fine - pre)",
          "ratio": "ratio (fine / pre)"}


def grids(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each panel's column as a [layers, heads] grid (rows: layers ascending, columns: heads ascending)."""
    return {col: df.pivot(index="layer", columns="head", values=col).sort_index().sort_index(axis=1).to_numpy()
            for col in PANELS}


def ratio_limit(ratio: np.ndarray) -> float:
    """M >= 1.01 with every finite ratio in [1/M, M]: the symmetric log range centred at 1.

    >>> ratio_limit(np.array([0.5, 1.5]))
    2.0
    """
    r = ratio[np.isfinite(ratio) & (ratio > 0)]
    return max(1.01, float(np.exp(np.abs(np.log(r)).max())) if r.size else 1.01)


def _diff_limit(diff: np.ndarray) -> float:
    d = np.abs(diff[np.isfinite(diff)])
    return float(d.max()) if d.size and d.max() > 0 else 1e-12


def panel_norms(g: dict[str, np.ndarray]) -> dict[str, tuple]:
    """{panel: (matplotlib norm, colormap name)}: pre and fine share one linear scale; the difference is linear
    and symmetric about 0, the ratio logarithmic and symmetric about 1 (both map their centre to 0.5)."""
    from matplotlib.colors import LogNorm, Normalize

    both = np.concatenate([g["R_pre"].ravel(), g["R_fine"].ravel()])
    lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
    shared = Normalize(lo, hi if hi > lo else lo + 1e-12)
    m, d = ratio_limit(g["ratio"]), _diff_limit(g["difference"])
    return {"R_pre": (shared, "viridis"), "R_fine": (shared, "viridis"), "difference": (Normalize(-d, d), "RdBu_r"),
            "ratio": (LogNorm(1 / m, m), "RdBu_r")}


def _aside(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def write_comparison_png(df: pd.DataFrame, path, *, title: str = "") -> Path:
    """The four heatmaps as one PNG at ``path``; returns ``path``."""
    from matplotlib.figure import Figure

    path = Path(path)
    g = grids(df)
    layers = np.sort(df["layer"].unique())
    heads = np.sort(df["head"].unique())
    norms = panel_norms(g)
    m = ratio_limit(g["ratio"])
    width = min(24.0, max(9.0, 2 * (3.0 + 0.4 * len(heads))))  # inches, two panels side by side
    height = min(20.0, max(6.0, 2 * (1.5 + 0.22 * len(layers))))
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(2, 2)
    for ax, (col, label) in zip(axes.ravel(), PANELS.items()):
        norm, cmap = norms[col]
        grid = np.ma.masked_invalid(g[col])
        im = ax.imshow(grid, norm=norm, cmap=cmap, aspect="auto", interpolation="nearest", origin="lower")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(len(heads)), [str(h) for h in heads], fontsize=7)
        step = max(1, len(layers) // 15)
        ax.set_yticks(range(0, len(layers), step), [str(x) for x in layers[::step]], fontsize=7)
        bar = fig.colorbar(im, ax=ax, shrink=0.9)
        if col == "ratio":
            ticks = np.geomspace(1 / m, m, 5)
            bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
            bar.ax.minorticks_off()
    if title:
        fig.suptitle(title, fontsize=11)
    tmp = _aside(path)
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)
    return path


def write_comparison_html(df: pd.DataFrame, path, *, title: str = "") -> Path:
    """The four heatmaps as an interactive self-contained HTML page at ``path`` (plotly.js inline); returns it.
    The ratio panel is coloured by log2(ratio), centred at 0 (ratio 1); hovering shows the ratio itself."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    path = Path(path)
    g = grids(df)
    layers = [int(x) for x in np.sort(df["layer"].unique())]
    heads = [int(x) for x in np.sort(df["head"].unique())]
    both = np.concatenate([g["R_pre"].ravel(), g["R_fine"].ravel()])
    lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
    m, d = ratio_limit(g["ratio"]), _diff_limit(g["difference"])
    with np.errstate(divide="ignore", invalid="ignore"):
        log2 = np.log2(g["ratio"])
    fig = make_subplots(rows=2, cols=2, subplot_titles=list(PANELS.values()), horizontal_spacing=0.14,
                        vertical_spacing=0.14)
    hover = "layer %{y}, head %{x}<br>%{customdata:.5g}<extra></extra>"
    spec = {"R_pre": (g["R_pre"], dict(colorscale="Viridis", zmin=lo, zmax=hi)),
            "R_fine": (g["R_fine"], dict(colorscale="Viridis", zmin=lo, zmax=hi)),
            "difference": (g["difference"], dict(colorscale="RdBu_r", zmid=0, zmin=-d, zmax=d)),
            "ratio": (log2, dict(colorscale="RdBu_r", zmid=0, zmin=-np.log2(m), zmax=np.log2(m)))}
    for i, col in enumerate(PANELS):
        row, c = divmod(i, 2)
        z, style = spec[col]
        bar = dict(x=0.43 + 0.57 * c, y=0.79 - 0.57 * row, len=0.42, thickness=12)
        if col == "ratio":
            ticks = np.linspace(-np.log2(m), np.log2(m), 5)
            bar |= dict(tickvals=ticks.tolist(), ticktext=[f"{2 ** t:.3g}" for t in ticks])
        fig.add_trace(go.Heatmap(z=np.where(np.isfinite(z), z, None).tolist(), x=heads, y=layers,
                                 customdata=np.where(np.isfinite(g[col]), g[col], None).tolist(),
                                 hovertemplate=hover, colorbar=bar, **style), row=row + 1, col=c + 1)
        fig.update_xaxes(title_text="head", row=row + 1, col=c + 1, dtick=1)
        fig.update_yaxes(title_text="layer", row=row + 1, col=c + 1)
    fig.update_layout(title=title or None, height=max(600, 140 + 40 * len(layers)), width=1100,
                      template="plotly_white")
    tmp = _aside(path)
    fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    tmp.replace(path)
    return path
