"""The emotion-label objective against plain Hugging Face forwards and losses computed by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.emotions import EMOTIONS
from lib.finetune.objective import (PROMPT_TEMPLATE, ObjectiveError, answer_loss, batch_tensors, encode_examples,
                                    label_tokens, score, summarize_scores)
from lib.models.registry import resolve_spec
from lib.models.tiny import TINY_NAMES, build_tiny_model, build_tiny_tokenizer
from lib.stats.bootstrap import mean_ci
from tests.finetune.data import planted

TEXTS = ["Thank you so much for your help with the move, I really appreciate it.", "Sorry.",
         "Why does this keep happening? Fix it now or I will cancel my account.", "The library closes at six",
         "My bad,\nI forgot to bring the charger."]
LABELS = ["gratitude", "apology", "anger", "neutral", "apology"]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _examples(tok, name, **kw):
    return encode_examples(tok, TEXTS, LABELS, prepend_bos=resolve_spec(name).prepend_bos, **kw)


def test_label_tokens_are_the_answers_with_a_space_and_first_tokens_must_differ(tok):
    got = label_tokens(tok)
    assert list(got) == list(EMOTIONS)
    for lab, ids in got.items():
        assert tok.decode(ids) == " " + lab and ids == tok(" " + lab, add_special_tokens=False)["input_ids"]
    assert len({ids[0] for ids in got.values()}) == 4
    with pytest.raises(ObjectiveError, match="share their first token"):
        label_tokens(tok, ["anger", "angry"])  # both start with " an"
    with pytest.raises(ObjectiveError, match="distinct"):
        label_tokens(tok, ["anger", "anger"])


def test_prompts_follow_the_template_and_prompt_plus_answer_tokenizes_as_one_string(tok):
    ex = encode_examples(tok, TEXTS, LABELS)
    for i, (text, lab) in enumerate(zip(TEXTS, LABELS)):
        want = PROMPT_TEMPLATE.format(text=" ".join(text.split()))
        assert tok.decode(ex.prompts[i]) == want
        # the answer appended to the prompt is how the tokenizer splits the whole string, so training sees
        # the same ids a model would read
        assert ex.prompts[i] + ex.answers[i] == tok(want + " " + lab, add_special_tokens=False)["input_ids"]
        assert ex.targets[i] == ex.answers[i][0] == label_tokens(tok)[lab][0]
    assert ex.labels == LABELS and ex.texts == TEXTS and len(ex) == 5


def test_long_comments_are_cut_to_max_text_tokens_and_bos_is_prepended_on_request(tok):
    short = encode_examples(tok, TEXTS, LABELS, max_text_tokens=4)
    full = encode_examples(tok, TEXTS, LABELS)
    n_template = len(tok(PROMPT_TEMPLATE.format(text=""), add_special_tokens=False)["input_ids"])
    for i, text in enumerate(TEXTS):
        n_text = len(tok(" ".join(text.split()), add_special_tokens=False)["input_ids"])
        if n_text > 4:
            cut = tok.decode(short.prompts[i]).removeprefix("Text: ").removesuffix("\nEmotion:")
            assert len(tok(cut, add_special_tokens=False)["input_ids"]) == 4 and " ".join(text.split()).startswith(cut)
            assert len(short.prompts[i]) < len(full.prompts[i])
        else:
            assert short.prompts[i] == full.prompts[i]
        assert len(full.prompts[i]) >= n_template
    bos = encode_examples(tok, TEXTS, LABELS, prepend_bos=True)
    assert all(b == [tok.bos_token_id] + p for b, p in zip(bos.prompts, full.prompts))


@pytest.mark.parametrize("texts, labels, kw, match", [
    (["a"], ["joy"], {}, "label 'joy' is not one of"),
    (["  "], ["anger"], {}, "row 0: text"),
    (["a", "b"], ["anger"], {}, "one label per text"),
    (["a"], ["anger"], {"max_text_tokens": 0}, "max_text_tokens=0"),
])
def test_bad_inputs_get_one_clear_error(tok, texts, labels, kw, match):
    with pytest.raises(ObjectiveError, match=match):
        encode_examples(tok, texts, labels, **kw)


def test_batch_labels_mark_exactly_the_answer_tokens(tok):
    ex = encode_examples(tok, TEXTS, LABELS)
    b = batch_tensors(ex, [1, 0, 3], pad_id=tok.pad_token_id)
    for row, i in enumerate([1, 0, 3]):
        seq = ex.prompts[i] + ex.answers[i]
        assert b.input_ids[row, :len(seq)].tolist() == seq and b.attention_mask[row].sum() == len(seq)
        lab = b.labels[row].tolist()
        assert lab[len(ex.prompts[i]):len(seq)] == ex.answers[i]
        assert set(lab[:len(ex.prompts[i])] + lab[len(seq):]) == {-100}


@pytest.mark.parametrize("name", TINY_NAMES)
def test_training_loss_equals_hugging_faces_own_loss_with_padding(tok, name):
    hf = build_tiny_model(name)
    ex = _examples(tok, name)
    b = batch_tensors(ex, [0, 1, 2, 3, 4], pad_id=tok.pad_token_id)
    assert b.attention_mask.min() == 0  # rows of different lengths: padding present
    with torch.no_grad():
        ours, n = answer_loss(hf, b)
        theirs = hf(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss
    assert n == sum(len(a) for a in ex.answers)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", TINY_NAMES)
@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_scored_loss_and_accuracy_equal_a_per_row_forward_by_hand(tok, name, batch_size):
    hf = build_tiny_model(name)
    ex = _examples(tok, name)
    got = score(hf, ex, batch_size=batch_size, pad_id=tok.pad_token_id)
    first = [label_tokens(tok)[lab][0] for lab in EMOTIONS]
    for i in range(len(ex)):
        with torch.no_grad():
            logits = hf(torch.tensor([ex.prompts[i]])).logits[0, -1]  # one row: no padding
        want = F.cross_entropy(logits[None], torch.tensor([ex.targets[i]])).item()
        assert got["loss"][i] == pytest.approx(want, rel=1e-5)
        pick = EMOTIONS[int(logits[first].argmax())]
        assert got["pred"][i] == pick and got["correct"][i] == (pick == LABELS[i])
        np.testing.assert_allclose(got["label_logprob"][i], torch.log_softmax(logits, -1)[first].numpy(), rtol=1e-5)


def test_summary_is_mean_ci_of_loss_and_accuracy(tok):
    texts, labels = planted(5)
    ex = encode_examples(tok, texts, labels)
    s = score(build_tiny_model("tiny-llama"), ex, batch_size=7)
    summ = summarize_scores(s, n_boot=500, seed=3)
    assert summ["loss"] == mean_ci(s["loss"], n_boot=500, seed=3)
    assert summ["accuracy"]["mean"] == pytest.approx(np.mean(s["correct"]))
    assert summ["loss"]["ci_low"] < summ["loss"]["mean"] < summ["loss"]["ci_high"]
