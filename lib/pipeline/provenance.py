"""What produced a result: git commit, package versions, input hashes, and result-folder checks."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from lib.files import IncompleteResultsError, write_json
from lib.paths import ROOT, relative

__all__ = ["git_commit", "package_versions", "hash_paths", "read_manifest", "save_summary", "PACKAGES"]

PACKAGES = ("torch", "transformer-lens", "transformers", "gguf", "numpy", "pandas", "scikit-learn",
            "plotly", "papermill", "jupytext", "nbconvert")


def git_commit() -> dict:
    """Commit hash of the project checkout and whether tracked files differ from it."""
    def run(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    head = run("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    # Untracked files count where they can change results; ignored ones (results, .venv) do not.
    dirty = run("status", "--porcelain", "--", "lib", "notebooks", "params", "data", "requirements.txt",
                "requirements-lock.txt", "Makefile").stdout.strip() != ""
    return {"commit": head.stdout.strip(), "dirty": dirty}


def package_versions() -> dict:
    """Versions of Python, the platform, and the packages results depend on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hash_paths(paths: list[Path], extra: bytes = b"") -> str:
    """sha256 over the relative paths and bytes of files (folders expand to their files, sorted)."""
    digest = hashlib.sha256(extra)
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                         and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
            files.append(p)
    for f in sorted(set(files)):
        digest.update(str(relative(f)).encode() + b"\0")
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """The manifest of a finished result folder; a folder without one is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no results folder {folder}; run `make reproduce` first")
    path = folder / "manifest.json"
    if not path.exists():
        raise IncompleteResultsError(
            f"{folder} has no manifest.json: it is half-written (an interrupted run?). "
            f"Its contents are not trusted; rerun `make reproduce` to rebuild it.")
    return json.loads(path.read_text())


def save_summary(output_dir: Path, *, summary: str, models: list[dict] | None = None, **extra) -> None:
    """Called by a notebook's save cell: the one-line summary and model identities for its manifest."""
    write_json(Path(output_dir) / "summary.json", {"summary": summary, "models": models or [], **extra})
