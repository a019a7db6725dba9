"""Every phase notebook is a thin, paired, parameterised percent script with a params file."""
from __future__ import annotations

import jupytext
import nbformat
import pytest

from lib.paths import NOTEBOOKS, PARAMS
from lib.pipeline.runner import stems


@pytest.mark.parametrize("stem", stems())
def test_paired_ipynb_matches_the_py_source(stem):
    py = jupytext.read(NOTEBOOKS / f"{stem}.py")
    nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in py.cells] == [(c.cell_type, c.source) for c in nb.cells], (
        f"notebooks/{stem}.ipynb is out of sync with {stem}.py: run `jupytext --sync notebooks/{stem}.py`")
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    assert nb.metadata["kernelspec"]["name"] == "emotion-circuits"


@pytest.mark.parametrize("stem", stems())
def test_structure(stem):
    nb = jupytext.read(NOTEBOOKS / f"{stem}.py")
    assert nb.cells[0].cell_type == "markdown" and "**Question.**" in nb.cells[0].source
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [1], "the parameters cell comes right after the opening markdown"
    assert "output_dir" in nb.cells[1].source
    assert nb.cells[-1].cell_type == "code" and "assert" in nb.cells[-1].source, "end with a cell of asserts"
    assert (PARAMS / f"{stem}.yaml").exists()
