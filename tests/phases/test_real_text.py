"""The GoEmotions comparison on planted data: choices made on train only, scores against sklearn, and a
bag-of-words baseline that wins when the words carry the label and loses when only the activations do."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from lib.activations.layerwise import LayerData
from lib.phases.real_text import choose_probe, paired_gap, per_class_f1, real_text_answer, score_on_dev

CLASSES = ["gratitude", "anger", "apology", "neutral"]
WORDS = {"gratitude": "thanks", "anger": "furious", "apology": "sorry", "neutral": "table"}


def _rows(n_per, seed, *, words_informative: bool):
    rng = np.random.default_rng(seed)
    y = np.repeat(CLASSES, n_per)
    vocab = [f"w{i}" for i in range(300)]
    texts = []
    for i, c in enumerate(y):
        filler = " ".join(rng.choice(vocab, 6))
        texts.append(f"{WORDS[c]} {filler}" if words_informative else f"{filler} {vocab[i % 300]}x{i}")
    return pd.DataFrame({"id": [f"{seed}-{i}" for i in range(len(y))], "text": texts, "emotion": y})


def _layers(labels, seed, signal_layer: int | None, d=16, n_layers=3):
    rng = np.random.default_rng(seed)
    codes = pd.Categorical(labels["emotion"], categories=CLASSES).codes
    xs = []
    for layer in range(n_layers):
        x = rng.normal(size=(len(labels), d))
        if layer == signal_layer:
            x[np.arange(len(labels)), codes] += 5.0
        xs.append(x.astype(np.float32))
    return LayerData("m", "hook_resid_post", "sentence_end", list(range(n_layers)), xs, labels)


def test_per_class_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.choice(CLASSES, 200), rng.choice(CLASSES, 200)
    assert np.allclose(per_class_f1(y, p, CLASSES), f1_score(y, p, labels=CLASSES, average=None))


def test_choose_probe_finds_the_planted_layer():
    labels = _rows(30, 1, words_informative=False)
    table = choose_probe({("hook_resid_post", "sentence_end"): _layers(labels, 1, signal_layer=2)}, seed=0, n_jobs=1)
    assert int(table.iloc[0]["layer"]) == 2 and table.iloc[0]["macro_f1"] > 0.9
    assert table["macro_f1"].iloc[1:].max() < 0.5


def test_score_on_dev_intervals_and_macro_match_sklearn():
    rng = np.random.default_rng(3)
    y = np.repeat(CLASSES, 40)
    good = np.where(rng.uniform(size=y.size) < 0.8, y, rng.choice(CLASSES, y.size))
    s = score_on_dev(y, {"good": good, "chance": rng.choice(CLASSES, y.size)}, np.arange(y.size), n_boot=500)
    macro = s[s["class"] == "macro"].set_index("reader")
    assert macro.loc["good", "f1"] == pytest.approx(f1_score(y, good, average="macro"))
    assert (s["f1_lo"] <= s["f1"] + 1e-12).all() and (s["f1"] <= s["f1_hi"] + 1e-12).all()
    assert macro.loc["chance", "f1_lo"] < 0.25 < macro.loc["chance", "f1_hi"]
    gap = paired_gap(y, good, good, np.arange(y.size), n_boot=200)
    assert gap == {"gap": 0.0, "lo": 0.0, "hi": 0.0}


@pytest.mark.parametrize("words_informative", [True, False])
def test_real_text_answer_is_chosen_on_train_and_can_go_either_way(words_informative):
    train_labels, dev_labels = _rows(40, 5, words_informative=words_informative), \
        _rows(25, 6, words_informative=words_informative)
    signal = None if words_informative else 1
    key = ("hook_resid_post", "sentence_end")
    train = {"model": {key: _layers(train_labels, 7, signal)}}
    dev = {"model": {key: _layers(dev_labels, 8, signal)}}
    # a second reader holding the same rows in another order (stores sort rows by token count) and noise only
    flip = np.random.default_rng(1).permutation(len(dev_labels))
    train["noise"] = {key: _layers(train_labels, 9, None)}
    dev["noise"] = {key: _layers(dev_labels, 10, None).subset(flip)}
    out = real_text_answer(train, dev, n_boot=300, seed=0)
    noise_rows = dev["noise"][key].labels["id"].tolist()
    assert noise_rows != dev_labels["id"].tolist()  # really another order
    macro = out["scores"][out["scores"]["class"] == "macro"].set_index("reader")["f1"]
    gap = out["gaps"].set_index("reader").loc["model"]
    if words_informative:  # only the words carry the label: the bag of words wins, the activations are at chance
        assert macro["tf-idf"] > 0.9 and macro["model"] < 0.45 and gap["hi"] < 0
    else:  # only the activations carry it
        assert macro["model"] > 0.9 and macro["tf-idf"] < 0.45 and gap["lo"] > 0
    # the dev labels play no part in any choice: shuffling them leaves every choice unchanged
    shuffled = dev_labels.assign(emotion=np.random.default_rng(0).permutation(dev_labels["emotion"].to_numpy()))
    dev2 = {"model": {key: _layers(shuffled, 8, signal)}, "noise": {key: _layers(shuffled, 10, None).subset(flip)}}
    again = real_text_answer(train, dev2, n_boot=50, seed=0)
    pd.testing.assert_frame_equal(again["choices"], out["choices"])
    assert again["tfidf_cv"].equals(out["tfidf_cv"])


def test_real_text_answer_refuses_readers_with_other_rows():
    labels = _rows(10, 1, words_informative=True)
    key = ("hook_resid_post", "sentence_end")
    train = {"a": {key: _layers(labels, 1, 0)}, "b": {key: _layers(labels, 2, 0)}}
    dev = {"a": {key: _layers(labels, 3, 0)}, "b": {key: _layers(labels, 4, 0).subset(np.arange(20))}}
    with pytest.raises(ValueError, match=r"b hook_resid_post sentence_end \(dev\) holds 20 rows, not the 40 rows"):
        real_text_answer(train, dev, n_boot=10)
