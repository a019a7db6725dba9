"""Per-layer norms and reads in one pass, NLL on token ids, the judge table, the text probe and the per-row scores,
against hand computations and the Hugging Face models' own hidden states and logits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
from lib.steering.hooks import mean_residual_norm, residual_norms
from lib.steering.judge import EmotionJudge
from lib.steering.metrics import continuation_nll, continuation_nll_ids
from lib.steering.scoring import TextProbe, judge_table, score_generations
from lib.steering.vectors import residual_reads, residual_reads_at
from lib.stats.permutation import sign_flip_p
from lib.text.generated import load_lexicon

TEXTS = ["Thank you so much for your help with the move.", "Sorry.", "Why does this keep happening to me?"]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma3"])
def test_residual_norms_equal_the_hidden_states_norms(name):
    model, tok = build_tiny_model(name), build_tiny_tokenizer()
    tok.padding_side = "left"
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    got = residual_norms(model, enc.input_ids, enc.attention_mask, [1, 0])
    skipped = residual_norms(model, enc.input_ids, enc.attention_mask, [0], skip_first=True)
    norms, rest = [], []
    for t in TEXTS:  # each text alone, no padding; hidden_states[1] is block 0's output (the last one is normed)
        one = tok([t], return_tensors="pt")
        with torch.no_grad():
            h = model(**one, output_hidden_states=True).hidden_states[1][0].norm(dim=-1)
        norms.append(h)
        rest.append(h[1:])
    assert got[0] == pytest.approx(float(torch.cat(norms).mean()), rel=1e-5)
    assert skipped[0] == pytest.approx(float(torch.cat(rest).mean()), rel=1e-5)
    assert got[1] == pytest.approx(mean_residual_norm(model, enc.input_ids, enc.attention_mask, 1), rel=1e-6)
    with pytest.raises(ValueError, match="no token left"):
        residual_norms(model, torch.tensor([[5]]), torch.tensor([[1]]), [0], skip_first=True)


@pytest.mark.parametrize("read", ["last", "mean"])
def test_reads_at_several_layers_equal_one_layer_at_a_time(read):
    model, tok = build_tiny_model("tiny-pythia"), build_tiny_tokenizer()
    both = residual_reads_at(model, tok, TEXTS, [1, 0], read=read, batch_size=2)
    assert sorted(both) == [0, 1]
    for layer in (0, 1):
        torch.testing.assert_close(both[layer], residual_reads(model, tok, TEXTS, layer, read=read), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="layers is empty"):
        residual_reads_at(model, tok, TEXTS, [])


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gpt-neo", "tiny-pythia", "tiny-llama", "tiny-gemma3"])
def test_nll_on_ids_scores_an_eos_only_continuation_and_matches_text(name):
    model, tok = build_tiny_model(name), build_tiny_tokenizer()
    prompt = tok("Thank you so much")["input_ids"]
    eos = tok.eos_token_id
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].double(), -1)
    cont = tok(" for the help", add_special_tokens=False)["input_ids"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    got = continuation_nll_ids(model, [(prompt, [eos]), (prompt, cont), (prompt[:2], cont + [eos])], pad_id=pad,
                               batch_size=3)
    assert got[0] == pytest.approx(float(-logp[eos]), abs=1e-6)
    text = continuation_nll(model, tok, ["Thank you so much"], [" for the help"])
    assert got[1] == pytest.approx(text[0], abs=1e-6)
    alone = continuation_nll_ids(model, [(prompt[:2], cont + [eos])], pad_id=pad)
    assert got[2] == pytest.approx(alone[0], abs=1e-6)  # padding beside a longer row changes nothing
    # rows sharing a prompt (one prompt pass, its cache repeated) score as each row does alone
    shared = continuation_nll_ids(model, [(prompt, cont), (prompt, [eos]), (prompt, cont[:1] + [eos])], pad_id=pad,
                                  batch_size=2)
    single = [continuation_nll_ids(model, [(prompt, c)], pad_id=pad)[0] for c in (cont, [eos], cont[:1] + [eos])]
    np.testing.assert_allclose(shared, single, atol=1e-6)
    with torch.no_grad():  # and as a plain forward over prompt + continuation does
        full = torch.log_softmax(model(torch.tensor([prompt + cont])).logits[0].double(), -1)
    plain = -full[torch.arange(len(prompt) - 1, len(prompt) + len(cont) - 1), torch.tensor(cont)].mean()
    assert shared[0] == pytest.approx(float(plain), abs=1e-6)
    with pytest.raises(ValueError, match="pair 0"):
        continuation_nll_ids(model, [(prompt, [])], pad_id=pad)


def _judge():
    return EmotionJudge().fit(["thanks a lot", "thank you so much", "you idiot", "I hate this", "the bus is late",
                               "it is noon"], ["gratitude", "gratitude", "anger", "anger", "neutral", "neutral"], seed=0)


def test_judge_table_makes_an_empty_continuation_neutral():
    t = judge_table(_judge(), ["thank you", "", "   ", "you idiot"])
    assert t["judge_label"].tolist() == ["gratitude", "neutral", "neutral", "anger"]
    probs = t[[c for c in t if c != "judge_label"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert t.loc[1, "judge_neutral"] == 1.0 and t.loc[1, "judge_gratitude"] == 0.0
    no_neutral = EmotionJudge().fit(["thanks", "idiot"], ["gratitude", "anger"], seed=0)
    with pytest.raises(ValueError, match="lack 'neutral'"):
        judge_table(no_neutral, ["x"])


def test_text_probe_reads_planted_directions_and_skips_empty_text():
    model, tok = build_tiny_model("tiny-llama"), build_tiny_tokenizer()
    rng = np.random.default_rng(0)
    base = torch.tensor(rng.normal(size=(40, 64)), dtype=torch.float32)
    labels = ["gratitude"] * 20 + ["neutral"] * 20
    base[:20, 3] += 6.0  # planted: gratitude rows lie along axis 3
    probe = TextProbe(layer=1).fit(base, labels)
    assert probe.labels == ["gratitude", "neutral"]
    p = probe.proba(model, tok, ["Thank you.", "", "Sorry."])
    assert p.shape == (3, 2) and p.iloc[1].isna().all() and np.allclose(p.iloc[[0, 2]].sum(1), 1.0)
    planted = probe._model.predict(np.c_[np.zeros((1, 3)), [[6.0]], np.zeros((1, 60))])
    assert planted.tolist() == ["gratitude"]
    with pytest.raises(ValueError, match="at least two classes"):
        TextProbe(layer=0).fit(base[:2], ["neutral", "neutral"])


def test_score_generations_columns_and_nll_on_the_rows_ids():
    model, tok = build_tiny_model("tiny-llama"), build_tiny_tokenizer()
    ids = [tok("Thank you")["input_ids"], tok("Sorry.")["input_ids"]]
    rows = pd.DataFrame({"setting": ["a", "b"], "prompt_index": [0, 1], "prompt": ["Thank you", "Sorry."],
                         "text": [" thanks a lot", ""], "token_ids": [tok(" thanks a lot", add_special_tokens=False)
                                                                   ["input_ids"], [tok.eos_token_id]]})
    probe = TextProbe(layer=0).fit(torch.randn(6, 64, generator=torch.Generator().manual_seed(0)),
                                   ["gratitude", "neutral"] * 3)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    s = score_generations(rows, ids, model=model, tokenizer=tok, judge=_judge(), lexicon=load_lexicon(),
                          probe=probe, pad_id=pad)
    assert {"judge_gratitude", "judge_label", "vader", "kw_gratitude", "probe_gratitude", "nll", "n_tokens"} <= set(s)
    assert s["kw_gratitude"].tolist() == [1, 0] and s.loc[1, "vader"] == 0.0 and np.isnan(s.loc[1, "probe_gratitude"])
    expect = continuation_nll_ids(model, list(zip(ids, rows["token_ids"])), pad_id=pad)
    np.testing.assert_allclose(s["nll"].to_numpy(), expect)
    with pytest.raises(ValueError, match="2 rows but 1 prompt"):
        score_generations(rows, ids[:1], model=model, tokenizer=tok, judge=_judge(), lexicon=load_lexicon(), pad_id=pad)


def test_sign_flip_p_exact_against_enumeration_and_random_patterns():
    d = np.array([0.5, -0.2, 0.9, 0.1, 0.3])
    pats = np.array([[1 - 2 * ((k >> i) & 1) for i in range(5)] for k in range(32)], dtype=float)
    brute = float(np.mean(pats @ d / 5 >= d.mean() - 1e-12))
    assert sign_flip_p(d) == pytest.approx(brute)
    assert sign_flip_p(d, alternative="two-sided") >= sign_flip_p(d)
    big = np.r_[d, d, d, d]  # 20 values: random patterns, close to the exact value of the same data
    assert sign_flip_p(big, n_perm=20000, seed=1) < 0.05
    assert sign_flip_p(np.zeros(6)) == 1.0
    with pytest.raises(ValueError, match="empty"):
        sign_flip_p([])


def test_mean_after_first_leaves_out_each_texts_first_token():
    model, tok = build_tiny_model("tiny-gpt2"), build_tiny_tokenizer()
    got = residual_reads(model, tok, TEXTS, 0, read="mean_after_first", batch_size=3)
    for i, t in enumerate(TEXTS):
        one = tok([t], return_tensors="pt")
        with torch.no_grad():
            h = model(**one, output_hidden_states=True).hidden_states[1][0]
        torch.testing.assert_close(got[i], h[1:].mean(0), rtol=0, atol=1e-5)
    one_token = tok.convert_tokens_to_string(tok.convert_ids_to_tokens(tok("Hi")["input_ids"][:1]))
    with pytest.raises(ValueError, match="needs two"):
        residual_reads(model, tok, [one_token], 0, read="mean_after_first")
