"""Phase-02 helpers against independent computations (scikit-learn PCA, norms by hand)."""
from __future__ import annotations

import numpy as np

from lib.activations.runs import extract_all
from lib.phases.activations import norm_profile, pca_2d, store_table
from lib.activations.plan import ExtractConfig
from lib.activations.store import open_store


def test_pca_matches_scikit_learn_up_to_sign():
    from sklearn.decomposition import PCA

    x = np.random.default_rng(0).normal(size=(50, 6)) * [5, 3, 1, 1, 1, 1]
    proj, var = pca_2d(x)
    ref = PCA(2).fit(x)
    assert np.allclose(np.abs(proj), np.abs(ref.transform(x)), atol=1e-8)
    assert np.allclose(var, ref.explained_variance_ratio_)


def test_extract_all_and_norms_by_hand(tmp_path):
    paths = extract_all(["tiny-gpt2"], ["baseline", "goemotions:dev"], ExtractConfig(layers=(1,)), tmp_path,
                        device="cpu", max_per_emotion=3, log=lambda *_: None)
    table = store_table(paths)
    assert set(table["profile"]) == {"baseline", "goemotions:dev"} and (table["rows"] == 12).all()
    store = open_store(paths["tiny-gpt2"]["baseline"])
    got = norm_profile(store).set_index(["layer", "emotion"])["norm"]
    x = store.get("blocks.1.hook_resid_post")
    for emo in ("anger", "neutral"):
        by_hand = np.linalg.norm(x[store.labels["emotion"] == emo], axis=1).mean()
        assert abs(got[(1, emo)] - by_hand) < 1e-5
    dev = open_store(paths["tiny-gpt2"]["goemotions:dev"])
    assert np.isnan(dev.get("blocks.1.hook_resid_post", "span")).all()  # GoEmotions has no spans
