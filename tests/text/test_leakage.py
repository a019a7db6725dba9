"""Near-duplicate search against a brute-force pairwise reference."""
from __future__ import annotations

import itertools
import random

import pandas as pd

from lib.text.leakage import jaccard, near_duplicates, normalize


def test_normalize_ignores_case_punctuation_and_spacing():
    assert normalize("  Thanks,  a LOT!! ") == normalize("thanks a lot") == "thanks a lot"


def test_jaccard_by_hand():
    # " ab " has 5-grams {" ab "}: padded text shorter than 5 gives a single shingle
    assert jaccard("ab", "ab") == 1.0
    assert jaccard("abcdef", "abcdeg") == len({" abcd", "abcde"}) / len({" abcd", "abcde", "bcdef", "cdef ",
                                                                        "bcdeg", "cdeg "})


def test_near_duplicates_equals_brute_force():
    rng = random.Random(0)
    words = "thank you so much for the help sorry late again bus train meeting room angry now".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(120)]
    texts += [t + "!" for t in texts[:10]] + [t.replace("the", "a") for t in texts[10:20]]
    df = pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts,
                       "group": [["a", "b", "c"][i % 3] for i in range(len(texts))]})
    for threshold in (0.5, 0.8, 1.0):
        got = near_duplicates(df, threshold=threshold, chunk=17)
        expected = {(f"r{i}", f"r{j}") for i, j in itertools.combinations(range(len(texts)), 2)
                    if jaccard(texts[i], texts[j]) >= threshold - 1e-9}
        assert set(zip(got["id_a"], got["id_b"])) == expected
        for row in got.itertuples():
            assert abs(row.jaccard - jaccard(row.text_a, row.text_b)) < 1e-6
            assert row.exact == (normalize(row.text_a) == normalize(row.text_b))
