"""HTML snippets for reports: example rows with their emotion-bearing span highlighted."""
from __future__ import annotations

import html

import pandas as pd

from lib.report.plots import EMOTION_COLORS

__all__ = ["highlight_span", "examples_html"]


def highlight_span(text: str, start, end) -> str:
    """``text`` as HTML with characters ``[start, end)`` in a <mark>; no span, no mark.

    >>> highlight_span("Thanks a lot!", 0, 6)
    '<mark>Thanks</mark> a lot!'
    """
    if start is None or pd.isna(start):
        return html.escape(text)
    s, e = int(start), int(end)
    return f"{html.escape(text[:s])}<mark>{html.escape(text[s:e])}</mark>{html.escape(text[e:])}"


def examples_html(df: pd.DataFrame, *, per_group: int = 3, seed: int = 0) -> str:
    """A table of ``per_group`` random rows per (profile, emotion), spans highlighted."""
    sample = (df.sample(frac=1.0, random_state=seed).groupby(["profile", "emotion"], sort=False)
                .head(per_group).sort_values(["profile", "emotion"], kind="stable"))
    rows = "".join(
        f"<tr style='text-align:left'><td>{html.escape(r.profile)}</td>"
        f"<td style='color:{EMOTION_COLORS.get(r.emotion, '#000')};font-weight:600'>{r.emotion}</td>"
        f"<td>{html.escape(str(r.register))}</td><td style='text-align:left'>{highlight_span(r.text, r.span_start, r.span_end)}</td></tr>"
        for r in sample.itertuples())
    return ("<table style='text-align:left'><tr style='text-align:left'><th>profile</th><th>emotion</th>"
            "<th>register</th><th style='text-align:left'>text (span marked)</th></tr>"
            f"{rows}</table>")
