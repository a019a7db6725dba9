"""Rows shared by the extraction and store tests: three baseline rows per emotion."""
from __future__ import annotations

import pytest

from lib.text.datasets import load_profile


@pytest.fixture(scope="module")
def rows():
    return load_profile("baseline", max_per_emotion=3, seed=1)
