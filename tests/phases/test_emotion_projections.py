"""Phase-03 held-out projection glue against direct cross-fitted projections, the probe run's folds and its
inner probe fits, on synthetic layers and small stores of tiny models."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.activations.layerwise import LayerData, load_layers
from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.heldout import crossfit_projections, insample_projections, permuted_gaps, projection_stats
from lib.phases.emotion_probes import fit_layers, probe_directions, probe_selection
from lib.phases.emotion_projections import (PROJECTION_COLUMNS, gap_summary, projection_table, projections_by_model,
                                            reading_folds)
from lib.phases.emotion_vectors import directions_by_model, readings_by_model
from lib.stats.splits import nested_folds
from tests.phases.test_emotion_vectors import stores  # noqa: F401  (the module's small stores)

CLASSES = [*TARGET_EMOTIONS, BASELINE]


def _layers(seed=0, n=240, d=10, shift=1.5):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.resize(CLASSES, n // 2), 2)  # text groups of two rows share a label
    u = {e: rng.normal(size=d) for e in TARGET_EMOTIONS}
    xs = [rng.normal(size=(n, d)) + s * np.stack([u.get(c, np.zeros(d)) for c in y]) for s in (0.0, shift)]
    labels = pd.DataFrame({"emotion": y, "id": [f"r{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)]})
    return LayerData("m", "hook_resid_post", "sentence_end", [3, 8], xs, labels)


def test_projection_table_equals_direct_crossfit_stats_and_null():
    ld = _layers()
    y = ld.labels["emotion"].to_numpy()
    groups = np.arange(len(y)) // 2
    folds = nested_folds(y, groups, 4, 0)
    full = {layer: {(e, m): np.random.default_rng(i).normal(size=10) for i, (e, m) in
                    enumerate((e, m) for e in TARGET_EMOTIONS for m in ("mean_vs_neutral", "pca"))}
            for layer in ld.layers}
    table = projection_table(ld, folds, groups, methods=("mean_vs_neutral", "pca"), full_dirs=full, repeats=5,
                             n_boot=100, seed=2)
    assert list(table.columns) == PROJECTION_COLUMNS and len(table) == 2 * 6 * 4
    proj = np.stack([crossfit_projections(x, y, folds, ("mean_vs_neutral", "pca"))[0] for x in ld.xs])
    st = projection_stats(proj, y, classes=CLASSES, groups=groups, n_boot=100, seed=2)
    row = table[(table["layer"] == 8) & (table["direction_emotion"] == "anger") & (table["method"] == "pca")
                & (table["emotion"] == "anger")].iloc[0]
    k = 3  # keys: (gratitude, mean_vs_neutral), (gratitude, pca), (anger, mean_vs_neutral), (anger, pca), ...
    assert row["gap"] == pytest.approx(st["gap"][1, k, 1]) and row["gap_lo"] == pytest.approx(st["gap_lo"][1, k, 1])
    assert row["mean"] == pytest.approx(st["mean"][1, k, 1]) and np.isnan(row["null_gap"])  # no null for pca
    assert row["gap"] > 2 and row["gap_lo"] > 1  # the planted layer
    same = insample_projections(ld.xs[1], y, full[8])[0]
    assert row["gap_in_sample"] == pytest.approx(projection_stats(same, y, classes=CLASSES)["gap"][k, 1])
    g, _ = permuted_gaps(ld.xs, y, folds, groups, repeats=5, emotions=list(TARGET_EMOTIONS),
                         methods=["mean_vs_neutral"], classes=CLASSES, seed=2)
    dm = table[(table["layer"] == 3) & (table["direction_emotion"] == "apology") & (table["method"] == "mean_vs_neutral")
               & (table["emotion"] == "apology")].iloc[0]
    null = g[:, 0, 2, 2]
    assert dm["null_gap"] == pytest.approx(null.mean())
    assert (dm["null_lo"], dm["null_hi"]) == pytest.approx(tuple(np.quantile(null, [0.025, 0.975])))
    assert (table.loc[table["emotion"] == BASELINE, "gap"] == 0).all()
    own = gap_summary(table)
    assert len(own) == 2 * 3 and (own["emotion"] != BASELINE).all()


def test_projections_reuse_the_probe_folds_and_its_inner_directions(stores):
    m = "tiny-gpt2"
    authored = {m: load_layers([stores[m, "baseline"]], m)}
    run = probe_selection(authored[m], None, shuffled_repeats=2, n_splits=3, n_boot=50)
    data, _ = readings_by_model(authored, stores, profiles=["baseline"], readings=("sentence_end", "span"))
    dirs = directions_by_model(data, {m: probe_directions(fit_layers(authored[m]))}, methods=("mean_vs_neutral",))
    proj, splits = projections_by_model(dirs, {m: run}, methods=("mean_vs_neutral",), n_splits=3, repeats=2,
                                        n_boot=50)
    assert splits == {(m, "sentence_end"): None, (m, "span"): None}  # same rows: the probe's folds
    folds, groups, same = reading_folds(data[m, "span"], run, 3, 0)
    assert same and folds is run["probe"].folds
    ld = authored[m]
    y = ld.labels["emotion"].to_numpy()
    probe = run["probe"]
    j, c = list(probe.layers).index(1), list(probe.classes).index("anger")
    want, keys = crossfit_projections(ld.layer(1), y, probe.folds, ("mean_vs_neutral",),
                                      extra={("anger", "probe"): probe.directions[:, j, c]})
    gap = projection_stats(want, y, classes=CLASSES)["gap"][keys.index(("anger", "probe")), 1]
    got = proj[(proj["reading"] == "sentence_end") & (proj["layer"] == 1) & (proj["method"] == "probe")
               & (proj["direction_emotion"] == "anger") & (proj["emotion"] == "anger")]["gap"].item()
    assert got == pytest.approx(gap)
    assert set(proj.loc[proj["reading"] == "span", "method"]) == {"mean_vs_neutral"}


def test_reading_folds_recomputed_on_the_rows_a_reading_keeps():
    ld = _layers()
    run = {"ids": ld.labels["id"].to_numpy(), "groups": np.arange(240) // 2, "probe": None}
    kept = ld.subset(np.arange(240) % 7 != 0)
    folds, groups, same = reading_folds(kept, run, 4, 0)
    assert not same and len(groups) == len(kept.labels)
    np.testing.assert_array_equal(groups, (np.flatnonzero(np.arange(240) % 7 != 0)) // 2)
    assert sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(len(kept.labels)))
    stranger = ld.subset(np.arange(10))
    stranger.labels["id"] = "new"
    with pytest.raises(ValueError, match="not among the probe's rows"):
        reading_folds(stranger, run, 4, 0)
