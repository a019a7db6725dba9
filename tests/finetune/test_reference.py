"""The probe reference: its features against Hugging Face's hidden states, and on planted labels against
shuffled ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.finetune.objective import ObjectiveError, encode_examples
from lib.finetune.reference import last_prompt_states, probe_reference
from lib.geometry.probes import make_probe
from lib.models.archs import arch_of, get_path
from lib.models.registry import resolve_spec
from lib.models.tiny import TINY_NAMES, build_tiny_model, build_tiny_tokenizer
from tests.finetune.data import planted


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.mark.parametrize("name", TINY_NAMES)
def test_features_are_the_residual_stream_at_each_prompts_last_token(tok, name):
    hf = build_tiny_model(name)
    texts, labels = planted(2)
    ex = encode_examples(tok, texts, labels, prepend_bos=resolve_spec(name).prepend_bos)
    got = last_prompt_states(hf, ex, [0, 1], batch_size=3)  # batches mix prompt lengths: padding present
    final_norm = get_path(hf, arch_of(hf).final_norm)
    for i, prompt in enumerate(ex.prompts):
        with torch.no_grad():
            hs = hf(torch.tensor([prompt]), output_hidden_states=True).hidden_states  # one row, no padding
        np.testing.assert_allclose(got[0, i], hs[1][0, -1].numpy(), rtol=1e-4, atol=1e-5)
        # Hugging Face's last hidden state has the final norm applied; ours is the block's output before it
        with torch.no_grad():
            normed = final_norm(torch.from_numpy(got[1, i])[None])[0]
        np.testing.assert_allclose(normed.numpy(), hs[2][0, -1].numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ObjectiveError, match="out of range for a model with 2 layers"):
        last_prompt_states(hf, ex, [2])


def test_planted_labels_are_read_and_shuffled_labels_are_not(tok):
    hf = build_tiny_model("tiny-llama")
    texts, labels = planted(15, seed=0)
    train = encode_examples(tok, texts, labels)
    dev = encode_examples(tok, *planted(10, seed=1))
    r = probe_reference(hf, train, dev, seed=0, n_boot=500)
    assert r["layer"] in (0, 1) and set(r["cv_accuracy"]) == {0, 1}
    assert r["cv_accuracy"][r["layer"]] == max(r["cv_accuracy"].values())
    assert r["dev_accuracy"]["mean"] == pytest.approx(r["dev_correct"].mean())
    assert r["dev_accuracy"]["ci_low"] > 0.5  # chance is 0.25
    # the refit at the chosen layer is the plain pipeline fitted on the train rows' features
    x_tr = last_prompt_states(hf, train, [r["layer"]])[0]
    x_dv = last_prompt_states(hf, dev, [r["layer"]])[0]
    pred = make_probe(seed=0).fit(x_tr, train.labels).predict(x_dv)
    assert (pred == np.asarray(r["dev_pred"])).all()

    shuffled = encode_examples(tok, texts, list(np.random.default_rng(0).permutation(labels)))
    s = probe_reference(hf, shuffled, dev, seed=0, n_boot=500)
    assert s["dev_accuracy"]["ci_low"] < 0.25 < s["dev_accuracy"]["ci_high"] or s["dev_accuracy"]["mean"] < 0.45
    assert s["dev_accuracy"]["mean"] < r["dev_accuracy"]["ci_low"]
