"""The comparison figures: grids oriented layer x head, colour scales centred at 0 (difference) and 1 (ratio),
a readable PNG of the expected layout, files written whole."""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.head_strength.heatmaps import grids, panel_norms, ratio_limit, write_comparison_png

DF = pd.DataFrame({"layer": [1, 0, 1, 0, 0, 1], "head": [0, 0, 2, 2, 1, 1],  # rows out of order on purpose
                   "R_pre": [1.0, 2, 3, 4, 5, 6], "R_fine": [2.0, 2, 1, 4, 6, 6],
                   "difference": [1.0, 0, -2, 0, 1, 0], "ratio": [2.0, 1, 1 / 3, 1, 1.2, 1]})


def test_grids_put_layers_in_rows_and_heads_in_columns():
    g = grids(DF)
    assert g["R_pre"].tolist() == [[2.0, 5.0, 4.0], [1.0, 6.0, 3.0]]
    assert g["ratio"][1, 2] == 1 / 3


def test_diverging_scales_are_centred_at_zero_and_one():
    norms = panel_norms(grids(DF))
    diff, ratio = norms["difference"][0], norms["ratio"][0]
    assert diff(0.0) == 0.5 and diff(-2.0) == 0.0 and diff(2.0) == 1.0
    assert abs(ratio(1.0) - 0.5) < 1e-12 and abs(ratio(3.0) - 1.0) < 1e-12  # the largest change, 1/3, sets the range
    assert norms["R_pre"][0] is norms["R_fine"][0] and norms["R_pre"][0](1.0) == 0.0
    assert ratio_limit(np.array([1.0, 1.0])) == 1.01 and ratio_limit(np.array([np.nan, 0.25, 2.0])) == 4.0


def test_png_is_written_whole(tmp_path):
    from matplotlib.image import imread

    path = write_comparison_png(DF, tmp_path / "h.png", title="t")
    image = imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 300  # two panels across, two down
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]
