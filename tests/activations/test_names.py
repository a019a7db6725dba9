"""Hook-name helpers against the real hook dictionaries of tiny models."""
from __future__ import annotations

import pytest

from lib.activations.names import SITES, act_name, check_hook_names, check_layers


def test_every_site_name_exists_in_every_architecture(tiny):
    for site in SITES:
        name = act_name(site, 1)
        if site == "resid_mid" and not tiny.quirks["has_resid_mid"]:
            assert name not in tiny.bridge.hook_dict
            continue
        check_hook_names([name], tiny.bridge.hook_dict, tiny.name)


def test_bad_names_and_layers_are_named():
    hooks = {"blocks.0.hook_resid_post": None, "blocks.0.attn.hook_z": None, "blocks.1.hook_resid_post": None}
    with pytest.raises(ValueError, match=r"'blocks.0.hook_resid_pots' is not a hook of m. Closest: \['blocks.0.hook_resid_post'"):
        check_hook_names(["blocks.0.hook_resid_pots"], hooks, "m")
    with pytest.raises(ValueError, match=r"layer\(s\) \[30, -1\] out of range for smollm2-135m, which has 30 layers \(0..29\)"):
        check_layers([0, 30, -1], 30, "smollm2-135m")
    with pytest.raises(ValueError, match="unknown site 'resid'"):
        act_name("resid", 0)
