"""lib.geometry.rows: NaN rows dropped and counted, one class's rows, errors that name the class."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.geometry.rows import class_counts, class_rows, drop_missing


def test_drop_missing_indices_and_counts():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 3))
    labels = np.array(["gratitude"] * 5 + ["neutral"] * 5)
    x[[0, 1, 2]] = np.nan
    x[7, 1] = np.nan
    rows = drop_missing(x, labels)
    assert rows.index.tolist() == [3, 4, 5, 6, 8, 9] and rows.dropped == {"gratitude": 3, "neutral": 1}
    keep = ~np.isnan(x).any(axis=1)  # by hand: the rows with no NaN, in order
    np.testing.assert_array_equal(rows.x, x[keep])
    assert rows.x.dtype == np.float64 and rows.emotion.tolist() == labels[keep].tolist()
    framed = drop_missing(x.astype(np.float32), pd.DataFrame({"emotion": labels, "text": "t"}))
    np.testing.assert_array_equal(framed.index, rows.index)


def test_class_rows_and_counts():
    x = np.arange(12.).reshape(6, 2)
    x[1] = np.nan
    rows = drop_missing(x, ["gratitude", "gratitude", "neutral", "neutral", "anger", "anger"])
    np.testing.assert_array_equal(class_rows(rows, "neutral", "demo"), x[2:4])
    assert class_counts(rows.emotion) == {"anger": 2, "gratitude": 1, "neutral": 2}
    with pytest.raises(ValueError, match=r"demo: emotion 'gratitude' has 1 rows.*\(1 dropped as NaN\).*at least 2"):
        class_rows(rows, "gratitude", "demo")
    assert len(class_rows(rows, "gratitude", "demo", min_rows=1)) == 1


def test_bad_inputs_name_what_was_passed():
    with pytest.raises(ValueError, match=r"2-D.*\(3,\)"):
        drop_missing(np.zeros(3), ["anger"] * 3)
    with pytest.raises(ValueError, match="no 'emotion' column; columns: \\['label'\\]"):
        drop_missing(np.zeros((2, 2)), pd.DataFrame({"label": ["a", "b"]}))
    with pytest.raises(ValueError, match="labels give"):
        drop_missing(np.zeros((2, 2)), ["anger"])
