"""Where a notebook writes its artifacts, and the provenance block at the end of each report."""
from __future__ import annotations

import tempfile
from pathlib import Path

from lib.pipeline.provenance import git_commit, package_versions

__all__ = ["prepare_output_dir", "provenance_markdown"]


def prepare_output_dir(output_dir: str) -> Path:
    """The folder for a notebook's artifacts: the pipeline passes one; empty means a fresh temp folder
    (interactive or smoke runs never write into ``results/``)."""
    path = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="emotion-smoke-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def provenance_markdown(models: list[dict] | None = None) -> str:
    """A short Markdown block: commit, package versions, and model identities."""
    git = git_commit()
    v = package_versions()
    lines = ["### Provenance",
             f"- commit `{(git['commit'] or 'none')[:10]}`{' with local changes' if git['dirty'] else ''}",
             "- " + ", ".join(f"{k} {val}" for k, val in v.items() if val)]
    for m in models or []:
        lines.append(f"- model `{m['name']}`: {m['source']}, weights sha256 `{m['weights_sha256'][:16]}`, "
                     f"{m['dtype']} on {m['device']}")
    return "\n".join(lines)
