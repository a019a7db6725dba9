"""Extraction plans: hook names from (site, layer), aliases, sites, config checks, the dataset hash."""
from __future__ import annotations

import pytest

from lib.activations.names import act_name
from lib.activations.plan import (DEFAULT_SITES, ExtractConfig, dataset_sha256, default_hook_names, hook_names_for,
                                  keeps_tokens, plan_aliases, sites_by_layer)


def test_default_hook_names_are_act_names_layer_by_layer():
    names = default_hook_names(3, layers=[0, 2], per_head=True)
    want = [act_name(s, layer) for layer in (0, 2) for s in (*DEFAULT_SITES, "z")]
    assert names == want and len(set(names)) == len(names)
    z_only = default_hook_names(2, sites=["attn.hook_z"], per_head=True)
    assert z_only == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]


def test_aliases_and_sites(tiny):
    names = hook_names_for(tiny, ExtractConfig())
    stored, aliases = plan_aliases(names)
    n = tiny.cfg.n_layers
    assert aliases == {act_name("resid_pre", layer): act_name("resid_post", layer - 1) for layer in range(1, n)}
    assert set(stored) | set(aliases) == set(names) and act_name("resid_pre", 0) in stored
    sites = sites_by_layer(stored)
    assert sites["hook_resid_post"] == list(range(n)) and sites["hook_resid_pre"] == [0]
    # resid_pre without the resid_post before it is stored, not aliased
    assert plan_aliases([act_name("resid_pre", 1)]) == ([act_name("resid_pre", 1)], {})


def test_config_checks_and_token_sites():
    with pytest.raises(ValueError, match="store dtype 'bfloat16' must be 'float16' or 'float32'"):
        ExtractConfig(dtype="bfloat16")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        ExtractConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"unknown reduction\(s\) \['max'\]"):
        ExtractConfig(reductions=("mean", "max"))
    assert keeps_tokens("hook_resid_post", ExtractConfig()) and not keeps_tokens("hook_mlp_out", ExtractConfig())
    assert keeps_tokens("attn.hook_z", ExtractConfig(token_sites=("*",)))


def test_dataset_hash_follows_rows(rows):
    assert dataset_sha256(rows) == dataset_sha256(rows.copy())
    assert dataset_sha256(rows) != dataset_sha256(rows.iloc[::-1])
    assert dataset_sha256(rows) != dataset_sha256(rows.assign(text=rows["text"] + "!"))
