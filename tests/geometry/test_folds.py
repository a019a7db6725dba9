"""Leakage-safe folds against brute-force connected components, sklearn fold loops and planted duplicates."""
from __future__ import annotations

import itertools
import random
import time

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import KFold

from lib.emotions import EMOTIONS
from lib.geometry.folds import grouped_folds, text_groups
from lib.geometry.probes import probe_cv
from lib.text.datasets import load_profile
from lib.text.leakage import jaccard, near_duplicates, normalize

EMO = np.array(EMOTIONS)


def partition_reference(texts, threshold):
    """Connected components of the brute-force 'same normalised text or Jaccard >= threshold' graph."""
    n = len(texts)
    edges = [(i, j) for i, j in itertools.combinations(range(n), 2)
             if normalize(texts[i]) == normalize(texts[j]) or jaccard(texts[i], texts[j]) >= threshold - 1e-9]
    a = np.array([e[0] for e in edges] + list(range(n)))
    b = np.array([e[1] for e in edges] + list(range(n)))
    return connected_components(sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)[1]


def same_partition(g1, g2) -> bool:
    """Two labelings define the same partition iff the pair (g1, g2) is a bijection."""
    pairs = set(zip(np.asarray(g1).tolist(), np.asarray(g2).tolist()))
    return len(pairs) == len(set(g1.tolist())) == len(set(np.asarray(g2).tolist()))


# --- text_groups ---------------------------------------------------------------------------------------------

def test_text_groups_hand_built():
    texts = ["Thank you so much for all the help with the move!",     # 0
             "thank you so much for all the help with the move",      # 1 exact after normalisation
             "THANK YOU SO MUCH, for all the help with the move!!",   # 2 exact
             "Thank you so much for all of the help with the move!",  # 3 near: checked below
             "The bus is late again.",              # 4 distinct
             "I am so sorry about the mess.",       # 5 distinct
             "Why would you do that?"]              # 6 distinct
    assert jaccard(texts[0], texts[3]) >= 0.8 > max(jaccard(texts[0], t) for t in texts[4:])
    g = text_groups(texts)
    assert g[0] == g[1] == g[2] == g[3]
    assert len({g[0], g[4], g[5], g[6]}) == 4
    assert g.tolist() == [0, 0, 0, 0, 1, 2, 3]  # first-seen order, dense ids
    # a stricter threshold separates the near duplicate but never the exact ones
    g1 = text_groups(texts, threshold=1.0)
    assert g1[0] == g1[1] == g1[2] != g1[3]


def test_text_groups_are_transitive_components():
    # a ~ b and b ~ c but not a ~ c: union-find must still put all three together
    a, b, c = "abcdefghij klmnop", "abcdefghij klmnopq", "abcdefghij klmnopqr"
    th = (jaccard(a, b) + jaccard(a, c)) / 2
    assert jaccard(a, b) >= th and jaccard(b, c) >= th and jaccard(a, c) < th
    assert len(set(text_groups([a, b, c, "zzz yyy xxx"], threshold=th)[:3])) == 1


def test_text_groups_equal_brute_force_components():
    rng = random.Random(1)
    words = "thank you so much for the help sorry late again bus train meeting room angry now".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) for _ in range(80)]
    texts += [t.upper() + "!" for t in texts[:10]] + [t.replace("the", "a") for t in texts[10:20]]
    for threshold in (0.6, 0.8, 1.0):
        assert same_partition(text_groups(texts, threshold), partition_reference(texts, threshold))


def test_text_groups_on_authored_rows_match_near_duplicates():
    df = pd.concat([load_profile("baseline"), load_profile("extended")], ignore_index=True)
    t0 = time.perf_counter()
    g = text_groups(df["text"])
    assert time.perf_counter() - t0 < 10
    pairs = near_duplicates(df.assign(id=np.arange(len(df)), group="x"), threshold=0.8)
    n = len(df)
    a = np.r_[pairs["id_a"].to_numpy(dtype=int), np.arange(n)]
    b = np.r_[pairs["id_b"].to_numpy(dtype=int), np.arange(n)]
    n_comp, ref = connected_components(sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    assert same_partition(g, ref)
    assert (g.max() + 1 < n) == (len(pairs) > 0)
    assert all(g[i] == g[j] for i, j in zip(pairs["id_a"], pairs["id_b"]))


# --- grouped_folds ---------------------------------------------------------------------------------------------------

def test_grouped_folds_keep_groups_whole_stratified_and_deterministic():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 120, 500)                 # uneven group sizes
    y = EMO[groups % 4]                                # one label per group
    folds = grouped_folds(y, groups, n_splits=5, seed=3)
    assert len(folds) == 5
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(500))  # a partition of the rows
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(y[test]) == set(EMOTIONS)
        assert sorted(np.r_[train, test].tolist()) == list(range(500))
    again = grouped_folds(y, groups, n_splits=5, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = grouped_folds(y, groups, n_splits=5, seed=4)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_grouped_folds_error_names_class_and_count():
    y = np.array(["anger"] * 20 + ["apology"] * 6)
    groups = np.r_[np.arange(20), [100, 100, 101, 101, 102, 103]]  # apology: 4 distinct groups
    with pytest.raises(ValueError, match=r"'apology' has 4 distinct text groups, fewer than n_splits=5"):
        grouped_folds(y, groups, n_splits=5)


def test_grouped_folds_defeat_memorised_duplicates():
    # 200 texts, each written 3 ways that normalise alike; the label is random per text and the only
    # feature is a random vector per text: nothing generalises, everything can be memorised.
    rng = np.random.default_rng(0)
    vocab = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(400)]
    base = [" ".join(rng.choice(vocab, 7, replace=False)) for _ in range(200)]
    texts = [v for t in base for v in (t, t.upper() + "!", t.capitalize() + ".")]
    y = np.repeat(rng.permutation(np.resize(EMO, 200)), 3)
    x = np.repeat(rng.normal(size=(200, 256)), 3, axis=0) + rng.normal(scale=0.1, size=(600, 256))
    groups = text_groups(texts)
    assert same_partition(groups, np.arange(600) // 3)
    naive = probe_cv(x, y, groups, folds=list(KFold(5, shuffle=True, random_state=0).split(x)))
    grouped = probe_cv(x, y, groups)
    assert naive.accuracy > 0.9                  # looks like a great probe ...
    assert abs(grouped.accuracy - 0.25) < 0.1    # ... that knows nothing about unseen texts
    assert grouped.acc_ci[0] < 0.25 + 0.02 < naive.acc_ci[0]
