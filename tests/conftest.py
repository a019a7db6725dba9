"""Shared fixtures: tiny randomly initialised models of every supported architecture.

Every temporary folder the tests make (smoke runs' output, the tiny tokenizer, notebook kernels'
scratch) goes under one folder that is removed when the test session ends.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

_SCRATCH = tempfile.mkdtemp(prefix="emotion-tests-")
os.environ["TMPDIR"] = _SCRATCH  # inherited by subprocesses and notebook kernels
tempfile.tempdir = None  # re-read TMPDIR in this process too
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)

from lib.settings import apply_hub_policy

apply_hub_policy()  # before transformers is imported
from lib.models.loading import load_model
from lib.models.tiny import TINY_NAMES

TEXTS = [
    "Thank you so much for staying late to help me move.",
    "Sorry.",
    "Why on earth would you cancel without telling anyone?",
    "The meeting moved to room 4B",
]


@pytest.fixture(scope="session", params=TINY_NAMES)
def tiny(request):
    """Each tiny architecture, loaded once per session through the lib loader."""
    return load_model(request.param, device="cpu")


@pytest.fixture(scope="session")
def texts():
    return list(TEXTS)
