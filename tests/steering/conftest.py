"""The tiny tokenizer every steering test module uses."""
from __future__ import annotations

import pytest

from lib.models.tiny import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()
