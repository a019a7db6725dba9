"""Comparing two results trees: planted differences are found, timings and paths are not differences."""
from __future__ import annotations

import json

from lib.pipeline.compare import compare_trees, json_differences, main


def _tree(root, accuracy="0.8125", wall=1.0, extra=None):
    (root / "03_x" / "default").mkdir(parents=True)
    (root / "03_x" / "default" / "probe.csv").write_text(f"layer,accuracy,wall_s\n0,{accuracy},{wall}\n1,0.5,{wall}\n")
    manifest = {"params": {"seed": 0}, "wall_s": wall, "git": {"commit": str(wall)}, "out": f"/tmp/{wall}",
                "summary": "ok", **(extra or {})}
    (root / "03_x" / "default" / "manifest.json").write_text(json.dumps(manifest))
    (root / "02_y" / "stores").mkdir(parents=True)
    (root / "02_y" / "stores" / "zarr.json").write_text(json.dumps({"anything": wall}))
    return root


def test_identical_values_with_other_timings_commits_and_paths_compare_equal(tmp_path):
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b", wall=2.0)
    logs = []
    assert compare_trees(a, b, log=logs.append) == 0
    assert logs[-1] == "2 files identical, 0 differ; 4 CSV cells compared"  # 2 rows x (layer, accuracy)


def test_planted_differences_are_found(tmp_path):
    a = _tree(tmp_path / "a")
    b = _tree(tmp_path / "b", accuracy="0.8125000000000001", extra={"summary": "changed"})
    logs = []
    assert compare_trees(a, b, log=logs.append) == 2
    assert any("probe.csv: columns ['accuracy'] differ in 1 rows" in line for line in logs)
    assert any(".summary: 'ok' vs 'changed'" in line for line in logs)
    (b / "03_x" / "default" / "probe.csv").unlink()
    assert compare_trees(a, b, log=[].append) == 2  # a file missing on one side is a difference
    assert main([str(a), str(tmp_path / "nowhere")]) == 2


def test_json_differences_by_hand():
    assert json_differences({"x": [1, 2.5, float("nan")]}, {"x": [1, 2.5, float("nan")]}) == []
    assert json_differences({"x": 1}, {"x": 1.0}) == [".x: 1 vs 1.0"]  # a type change is a change
    assert json_differences([1, 2], [1]) == [": 2 items vs 1"]
