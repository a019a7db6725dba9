"""Compare two results trees value by value: every CSV and JSON, ignoring what legitimately differs between
runs (timings, throughput, commit hashes, absolute paths, input hashes that cover the code).

``python -m lib.pipeline.compare BEFORE_RESULTS AFTER_RESULTS`` prints one line per differing file and a
total; exit code 0 when every value is identical. Activation stores (zarr) are skipped: they carry their
own settings hash.

>>> ignored_key("wall_s"), ignored_key("load_s"), ignored_key("tokens_per_s"), ignored_key("accuracy")
(True, True, True, False)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

__all__ = ["IGNORED_KEYS", "ignored_key", "json_differences", "csv_differences", "compare_trees", "main"]

# Keys that record when, how fast, from which commit or where a result was made, not what it is.
IGNORED_KEYS = {"started", "git", "versions", "inputs_sha256", "upstream_sha256", "report_sha256", "report", "path"}
_IGNORED_PARTS = ("wall", "time", "seconds", "per_s", "elapsed")


def ignored_key(key) -> bool:
    """Whether a JSON key or CSV column records timing (``*_s`` are seconds), provenance or location rather than a result."""
    k = str(key)
    return k in IGNORED_KEYS or k.endswith("_s") or any(part in k for part in _IGNORED_PARTS)


def _is_path(value) -> bool:
    return isinstance(value, str) and value.startswith("/")


def json_differences(a, b, where: str = "") -> list[str]:
    """Places where two JSON values differ (ignored keys and absolute paths skipped; NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if ignored_key(k):
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'the second' if k in b else 'the first'}")
            else:
                out += json_differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = [] if len(a) == len(b) else [f"{where}: {len(a)} items vs {len(b)}"]
        for i, (x, y) in enumerate(zip(a, b)):
            out += json_differences(x, y, f"{where}[{i}]")
        return out
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    if _is_path(a) and _is_path(b):
        return []
    return [] if a == b and type(a) is type(b) else [f"{where}: {a!r} vs {b!r}"]


def csv_differences(a: Path, b: Path) -> tuple[list[str], int]:
    """Differences between two CSV files read as text cells (exact), and how many cells were compared."""
    da, db = pd.read_csv(a, dtype=str, keep_default_na=False), pd.read_csv(b, dtype=str, keep_default_na=False)
    if list(da.columns) != list(db.columns) or da.shape != db.shape:
        return [f"columns or shape differ: {list(da.columns)} {da.shape} vs {list(db.columns)} {db.shape}"], 0
    keep = [c for c in da.columns if not ignored_key(c)]
    ne = da[keep] != db[keep]
    cols = [c for c in keep if ne[c].any()]
    return ([f"columns {cols} differ in {int(ne.any(axis=1).sum())} rows"] if cols else []), int(ne.size)


def compare_trees(first: Path, second: Path, log=print) -> int:
    """Compare every CSV and JSON under two results folders; return the number of files that differ."""
    first, second = Path(first), Path(second)

    def files(root: Path) -> set[Path]:
        return {p.relative_to(root) for p in root.rglob("*") if p.suffix in (".csv", ".json") and p.is_file()
                and not any(part == "stores" or ".partial" in part or ".incomplete" in part
                            for part in p.relative_to(root).parts)}

    n_same = n_diff = n_cells = 0
    for rel in sorted(files(first) | files(second)):
        a, b = first / rel, second / rel
        if not (a.exists() and b.exists()):
            diffs = [f"only in {first if a.exists() else second}"]
        elif rel.suffix == ".json":
            diffs = json_differences(json.loads(a.read_text()), json.loads(b.read_text()), "")
        else:
            diffs, cells = csv_differences(a, b)
            n_cells += cells
        if diffs:
            n_diff += 1
            log(f"DIFFERS {rel}: " + "; ".join(diffs[:5]) + (f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else ""))
        else:
            n_same += 1
    log(f"{n_same} files identical, {n_diff} differ; {n_cells} CSV cells compared")
    return n_diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.pipeline.compare", description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="a results/ folder")
    parser.add_argument("second", type=Path, help="another results/ folder")
    args = parser.parse_args(argv)
    for folder in (args.first, args.second):
        if not folder.is_dir():
            print(f"error: {folder} is not a folder; pass two results/ folders", file=sys.stderr)
            return 2
    return 1 if compare_trees(args.first, args.second) else 0


if __name__ == "__main__":
    raise SystemExit(main())
