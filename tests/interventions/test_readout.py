"""The readout against scikit-learn's probe and the Hugging Face model's own logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.geometry.probes import fit_probe
from lib.interventions.readout import Readout, class_index, final_logits, readout_from_probe, readout_metrics
from lib.models.tiny import build_tiny_model
from tests.interventions.helpers import one_length_ids, random_readout


def test_readout_probe_matches_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)) * rng.uniform(0.5, 3, 6) + rng.normal(size=6)
    y = np.array(["anger", "gratitude", "neutral", "apology"] * 20)
    x[y == "anger", 0] += 2
    probe = fit_probe(x, y)
    ro = readout_from_probe(probe, 0)
    got = readout_metrics(torch.tensor(x, dtype=torch.float32), None, ro)
    p = probe.predict_proba(x)
    np.testing.assert_allclose(got["probs"].numpy(), p, atol=1e-5)
    assert ro.classes == list(probe.classes_)
    # log-odds: log p - log(1 - p) of scikit-learn's probabilities (in float64), where p is not saturated
    want = np.log(p) - np.log1p(-p)
    ok = (p > 1e-4) & (p < 1 - 1e-4)
    assert ok.mean() > 0.5
    np.testing.assert_allclose(got["logodds"].numpy()[ok], want[ok], atol=2e-3, rtol=1e-3)


def test_log_odds_do_not_saturate_where_probabilities_do():
    logits = torch.tensor([[40.0, 0.0, 0.0], [-40.0, 0.0, 0.0]])
    ro = Readout(0, torch.eye(3), torch.zeros(3), ["a", "b", "c"])
    m = readout_metrics(logits, None, ro)
    assert m["probs"][0, 0] == 1.0  # float32 rounds it
    torch.testing.assert_close(m["logodds"][:, 0], torch.tensor([40.0 - np.log(2), -40.0 - np.log(2)], dtype=torch.float32))


def test_final_logits_equal_the_hugging_face_forward(tiny):
    """From the final hidden state (after the final norm) to the model's own logits, soft-capping included."""
    hf = build_tiny_model(tiny.name)
    ids = one_length_ids(tiny)
    with torch.no_grad():
        hidden = hf.base_model(ids).last_hidden_state  # after the final norm
        got = final_logits(hf, hidden[:, -1])
        want = hf(ids).logits[:, -1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_continuation_logprob_is_logsumexp_of_the_tokens_log_softmax(tiny):
    ro = random_readout(tiny)
    logits = torch.randn(3, tiny.cfg.d_vocab, generator=torch.Generator().manual_seed(2))
    got = readout_metrics(torch.zeros(3, tiny.cfg.d_model), logits, ro)["logprob"]
    p = torch.softmax(logits.double(), -1)
    want = torch.stack([p[:, ids].sum(-1).log() for ids in ro.continuations.values()], -1)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_class_index_names_the_classes():
    ro = random_readout(type("LM", (), {"cfg": type("C", (), {"d_model": 4, "n_layers": 1})})())
    assert class_index(ro, "apology") == 2
    with pytest.raises(ValueError, match=r"no class 'joy'; classes: \['gratitude'"):
        class_index(ro, "joy")
