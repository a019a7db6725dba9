"""Fixtures shared by the geometry tests."""
from __future__ import annotations

import pytest

from tests.geometry.synthetic import planted


@pytest.fixture(scope="module")
def data():
    """The default planted data set: x [480, 24] float32, labels, {emotion: planted unit offset}."""
    return planted()
