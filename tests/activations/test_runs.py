"""Store specs by run, and their checks in params."""
from __future__ import annotations

import pytest

from lib.activations.runs import parse_profile


def test_profile_specs():
    assert parse_profile("goemotions:dev") == ("goemotions", "dev") and parse_profile("baseline") == ("baseline", None)
    from lib.pipeline.checks import check_values
    from lib.pipeline.params import ParamsError

    with pytest.raises(ParamsError, match="goemotions:dev"):
        check_values("02_activations", {"profiles": ["goemotions:test"]})
