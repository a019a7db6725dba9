"""Fast sweeps against the naive TransformerLens sweep for every architecture; the sweep table by hand."""
from __future__ import annotations

import numpy as np
import torch

from lib.activations.names import act_name
from lib.interventions.heads import run_with_hooks_cached
from lib.interventions.readout import Readout, readout_metrics
from lib.interventions.sweep import clean_state, mean_head_z, sweep_fast, sweep_frame, sweep_naive
from tests.interventions.helpers import one_length_ids as _ids, random_readout as _readout
import pytest


@pytest.mark.parametrize("readout_layer", [None, 0])
def test_fast_sweep_equals_naive(tiny, readout_layer):
    hf = tiny.bridge.original_model
    ids = _ids(tiny)
    ro = _readout(tiny, readout_layer)
    st, src = clean_state(hf, ids, ro), clean_state(hf, ids.flip(0), ro)
    mean_z = {layer: z.mean((0, 1)) for layer, z in enumerate(st.z)}
    for mode in ("zero", "mean", "patch"):
        for pos in ("last", "all"):
            fast = sweep_fast(hf, st, ro, mode, pos, mean_z=mean_z, source=src)
            naive = sweep_naive(tiny, ids, ro, mode, pos, mean_z=mean_z, source_z=src.z)
            for k in ("probs", "logprob"):
                assert fast[k].shape == (tiny.cfg.n_layers, tiny.cfg.n_heads, 2, naive[k].shape[-1])
                np.testing.assert_allclose(fast[k], naive[k], atol=1e-4, err_msg=f"{mode} {pos} {k}")
            changed = np.abs(fast["probs"] - st.metrics["probs"].numpy()[None, None]).max()
            assert changed > 1e-4
    # the clean state's readout is the readout of a plain full forward
    name = act_name("resid_post", ro.layer)
    logits, cache = run_with_hooks_cached(tiny, ids, None, [], [name])
    ref = readout_metrics(cache[name][:, -1], logits[:, -1], ro)
    for k in ref:
        assert torch.allclose(ref[k], st.metrics[k], atol=1e-5)


def test_clean_state_z_and_residuals_equal_transformer_lens_cache(tiny):
    """z[L] is TransformerLens' attn.hook_z and resid_pre[L] its hook_resid_pre, for every layer."""
    hf = tiny.bridge.original_model
    ids = _ids(tiny)
    st = clean_state(hf, ids, _readout(tiny))
    names = [act_name(s, L) for L in range(tiny.cfg.n_layers) for s in ("z", "resid_pre")]
    _, cache = run_with_hooks_cached(tiny, ids, None, [], names)
    for L in range(tiny.cfg.n_layers):
        torch.testing.assert_close(st.z[L], cache[act_name("z", L)], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(st.resid_pre[L], cache[act_name("resid_pre", L)], atol=1e-5, rtol=1e-5)
    means = mean_head_z(st, st)
    torch.testing.assert_close(means[1], st.z[1].reshape(-1, *st.z[1].shape[2:]).mean(0))


def test_sweep_frame_is_the_mean_change_and_its_standard_error():
    rng = np.random.default_rng(0)
    ro = Readout(1, torch.zeros(2, 3), torch.zeros(2), ["anger", "gratitude"],
                 continuations={"anger": torch.tensor([1]), "gratitude": torch.tensor([2])})
    res = {"probs": rng.uniform(size=(2, 3, 4, 2)), "logprob": rng.normal(size=(2, 3, 4, 2))}
    clean = {"probs": torch.tensor(rng.uniform(size=(4, 2))), "logprob": torch.tensor(rng.normal(size=(4, 2)))}
    got = sweep_frame(res, clean, ro, "gratitude", intervention="x", model="m")
    assert list(got.columns) == ["layer", "head", "metric", "effect", "se", "intervention", "model"]
    row = got[(got["metric"] == "probe_prob") & (got["layer"] == 1) & (got["head"] == 2)].iloc[0]
    d = [res["probs"][1, 2, i, 1] - float(clean["probs"][i, 1]) for i in range(4)]
    assert np.isclose(row["effect"], sum(d) / 4)
    assert np.isclose(row["se"], np.sqrt(sum((x - sum(d) / 4) ** 2 for x in d) / 3) / 2)
    row = got[(got["metric"] == "logprob") & (got["layer"] == 0) & (got["head"] == 1)].iloc[0]
    assert np.isclose(row["effect"], np.mean(res["logprob"][0, 1, :, 1] - clean["logprob"][:, 1].numpy()))
    assert len(got) == 2 * 2 * 3
