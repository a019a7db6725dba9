"""Fast sweeps and fast head sets against the naive TransformerLens forwards for every architecture; the
position-matched reference mean and the sweep table by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.activations.names import act_name
from lib.interventions.effects import set_metrics
from lib.interventions.heads import run_with_hooks_cached
from lib.interventions.readout import Readout, class_index, readout_metrics
from lib.interventions.sweep import clean_state, position_mean_z, sets_fast, sweep_fast, sweep_frame, sweep_naive
from tests.interventions.helpers import one_length_ids as _ids, random_readout as _readout


@pytest.mark.parametrize("readout_layer", [None, 0])
def test_fast_sweep_equals_naive(tiny, readout_layer):
    hf = tiny.bridge.original_model
    ids = _ids(tiny)
    ro = _readout(tiny, readout_layer)
    st, src = clean_state(hf, ids, ro), clean_state(hf, ids.flip(0), ro)
    mean_z = position_mean_z(src)  # [T, H, dh]: differs by position, so a position mix-up shows
    for mode in ("zero", "mean", "patch"):
        for pos in ("last", "all"):
            fast = sweep_fast(hf, st, ro, mode, pos, mean_z=mean_z, source=src)
            naive = sweep_naive(tiny, ids, ro, mode, pos, mean_z=mean_z, source_z=src.z)
            for k in ("probs", "logodds", "logprob"):
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


SETS = [[(1, 0), (0, 2)], [], [(1, 3)], [(0, 0), (0, 1), (1, 1)], [(1, 2), (1, 0)], [(0, 3)]]


@pytest.mark.parametrize("readout_layer", [None, 0])
def test_fast_sets_equal_naive_set_metrics(tiny, readout_layer):
    """Several sets in one batch (chunks of a few rows, sets starting at different layers, an empty set) equal
    one TransformerLens forward per set, for every mode and position rule."""
    hf = tiny.bridge.original_model
    ids = _ids(tiny)
    ro = _readout(tiny, readout_layer)
    st, src = clean_state(hf, ids, ro), clean_state(hf, ids.flip(0), ro)
    mean_z = position_mean_z(src)
    for mode in ("zero", "mean", "patch"):
        for pos in ("last", "all"):
            fast = sets_fast(hf, st, ro, SETS, mode, pos, mean_z=mean_z, source=src, max_rows=4)
            for i, heads in enumerate(SETS):
                naive = set_metrics(tiny, ids, ro, heads, mode if heads else None, positions=pos, mean_z=mean_z,
                                    source_z=src.z)
                for k in ("probs", "logodds", "logprob"):
                    np.testing.assert_allclose(fast[k][i], naive[k], atol=1e-4, err_msg=f"{mode} {pos} set {i} {k}")
            assert np.abs(fast["logodds"][0] - fast["logodds"][1]).max() > 1e-4  # sets do something
            np.testing.assert_allclose(fast["probs"][1], st.metrics["probs"].numpy(), atol=1e-6)


def test_fast_sets_check_their_input(tiny):
    hf = tiny.bridge.original_model
    ids = _ids(tiny)
    ro = _readout(tiny)
    st = clean_state(hf, ids, ro)
    with pytest.raises(ValueError, match=r"head 9:0 is out of range"):
        sets_fast(hf, st, ro, [[(9, 0)]], "zero", "last")
    with pytest.raises(ValueError, match="positions must be 'last' or 'all'"):
        sets_fast(hf, st, ro, [[(0, 0)]], "zero", "first")
    short = clean_state(hf, ids[:, :-1], ro)
    with pytest.raises(ValueError, match=r"position-matched means of the target's token length need \[" + str(st.T)):
        sets_fast(hf, st, ro, [[(0, 0)]], "mean", "last", mean_z=position_mean_z(short))


def test_position_mean_z_is_the_mean_at_each_position(tiny):
    hf = tiny.bridge.original_model
    ids = _ids(tiny)
    ro = _readout(tiny)
    a, b = clean_state(hf, ids, ro), clean_state(hf, ids.flip(0), ro)
    got = position_mean_z(a, b)
    L = 1
    want = torch.stack([torch.stack([a.z[L][i, t] for i in range(2)] + [b.z[L][i, t] for i in range(2)]).mean(0)
                        for t in range(a.T)])
    torch.testing.assert_close(got[L], want)
    assert got[L].shape == (a.T, tiny.cfg.n_heads, tiny.cfg.d_head)
    assert (got[L][0] - got[L][-1]).abs().max() > 1e-3  # the first position (the sink) is not the last
    with pytest.raises(ValueError, match="share one token length"):
        position_mean_z(a, clean_state(hf, ids[:, :-1], ro))


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


def test_sweep_frame_is_the_mean_change_and_its_standard_error():
    rng = np.random.default_rng(0)
    ro = Readout(1, torch.zeros(2, 3), torch.zeros(2), ["anger", "gratitude"],
                 continuations={"anger": torch.tensor([1]), "gratitude": torch.tensor([2])})
    res = {"probs": rng.uniform(size=(2, 3, 4, 2)), "logodds": rng.normal(size=(2, 3, 4, 2)),
           "logprob": rng.normal(size=(2, 3, 4, 2))}
    clean = {k: torch.tensor(rng.normal(size=(4, 2))) for k in res}
    got = sweep_frame(res, clean, ro, "gratitude", intervention="x", model="m")
    assert list(got.columns) == ["layer", "head", "metric", "effect", "se", "intervention", "model"]
    assert list(got["metric"].unique()) == ["probe_logodds", "probe_prob", "logprob"]
    row = got[(got["metric"] == "probe_logodds") & (got["layer"] == 1) & (got["head"] == 2)].iloc[0]
    d = [res["logodds"][1, 2, i, 1] - float(clean["logodds"][i, 1]) for i in range(4)]
    assert np.isclose(row["effect"], sum(d) / 4)
    assert np.isclose(row["se"], np.sqrt(sum((x - sum(d) / 4) ** 2 for x in d) / 3) / 2)
    row = got[(got["metric"] == "probe_prob") & (got["layer"] == 0) & (got["head"] == 1)].iloc[0]
    assert np.isclose(row["effect"], np.mean(res["probs"][0, 1, :, 1] - clean["probs"][:, 1].numpy()))
    row = got[(got["metric"] == "logprob") & (got["layer"] == 0) & (got["head"] == 1)].iloc[0]
    assert np.isclose(row["effect"], np.mean(res["logprob"][0, 1, :, 1] - clean["logprob"][:, 1].numpy()))
    assert len(got) == 3 * 2 * 3 and class_index(ro, "gratitude") == 1
