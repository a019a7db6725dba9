"""lib.geometry.directions against hand computations (numpy, sklearn) and planted structure."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.directions import (
    cosine_matrix, diff_of_means, emotion_directions, layer_cosines, orient, pca_direction, projection_summary,
    projections, top_components,
)
from tests.geometry.synthetic import planted


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_diff_of_means_matches_hand_computation():
    x = np.array([[1., 2., 0.], [3., 0., 1.], [0., 0., 0.], [2., 2., 2.], [5., 1., 1.]])
    labels = ["anger", "anger", "neutral", "neutral", "gratitude"]
    hand = x[:2].mean(0) - x[2:4].mean(0)
    np.testing.assert_allclose(diff_of_means(x, labels, "anger"), hand / np.linalg.norm(hand))
    rest = x[:2].mean(0) - (x[2:4].mean(0) + x[4]) / 2  # mean of the class means of neutral and gratitude
    np.testing.assert_allclose(diff_of_means(x, labels, "anger", "rest"), rest / np.linalg.norm(rest))


def test_rest_weights_classes_equally_not_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(13, 4))
    labels = np.array(["anger"] * 3 + ["neutral"] * 8 + ["apology"] * 2)
    class_means = (x[labels == "neutral"].mean(0) + x[labels == "apology"].mean(0)) / 2
    pooled = x[labels != "anger"].mean(0)
    got = diff_of_means(x, labels, "anger", "rest")
    want = x[labels == "anger"].mean(0) - class_means
    np.testing.assert_allclose(got, want / np.linalg.norm(want))
    assert cos(got, x[labels == "anger"].mean(0) - pooled) < 0.9999


@pytest.mark.parametrize("emotion", TARGET_EMOTIONS)
def test_methods_recover_planted_direction_with_positive_sign(data, emotion):
    x, labels, u = data
    dirs = emotion_directions(x, labels)
    for method in ("mean_vs_neutral", "pca"):
        v = dirs[emotion, method]
        assert np.linalg.norm(v) == pytest.approx(1.0)
        assert cos(v, u[emotion]) > 0.9, (method, cos(v, u[emotion]))
    # with every emotion shifted, rest = mu + (u_b + u_c) * 3 / 3, so mean_vs_rest ~ 3 u_a - u_b - u_c
    others = [e for e in TARGET_EMOTIONS if e != emotion]
    target = 3 * u[emotion] - u[others[0]] - u[others[1]]
    assert cos(dirs[emotion, "mean_vs_rest"], target) > 0.98
    assert cos(dirs[emotion, "mean_vs_rest"], u[emotion]) > 0.85  # 3 / sqrt(11) = 0.905 in expectation


def test_all_methods_recover_u_when_only_that_emotion_is_shifted():
    x, labels, u = planted(seed=3, shifted=("gratitude",))
    dirs = emotion_directions(x, labels, emotions=("gratitude",))
    for method in ("mean_vs_neutral", "mean_vs_rest", "pca"):
        assert cos(dirs["gratitude", method], u["gratitude"]) > 0.9, method


def test_mean_vs_rest_differs_from_mean_vs_neutral_when_others_shifted(data):
    x, labels, _ = data
    a, b = diff_of_means(x, labels, "anger"), diff_of_means(x, labels, "anger", "rest")
    assert cos(a, b) < 0.95
    x0, labels0, _ = planted(seed=0, shifted=("anger",))  # others unshifted: both agree
    assert cos(diff_of_means(x0, labels0, "anger"), diff_of_means(x0, labels0, "anger", "rest")) > 0.98


def test_orient_flips_negated_vector_back(data):
    x, labels, u = data
    v = diff_of_means(x, labels, "apology")
    np.testing.assert_allclose(orient(-v, x, labels, "apology"), v)
    np.testing.assert_allclose(orient(5 * v, x, labels, "apology"), v)
    p = pca_direction(x, labels, "apology")
    assert (x[labels.emotion == "apology"] @ p).mean() > (x[labels.emotion == BASELINE] @ p).mean()
    extra = emotion_directions(x, labels, methods=(), extra={("apology", "probe"): -2 * u["apology"]})
    np.testing.assert_allclose(extra["apology", "probe"], u["apology"])


def test_nan_rows_dropped_and_counted():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 3))
    labels = np.array(["gratitude"] * 5 + ["neutral"] * 5)
    x[[0, 1, 2]] = np.nan
    x[7, 1] = np.nan
    v, counts = diff_of_means(x, labels, "gratitude", return_counts=True)
    assert counts == {"used": {"gratitude": 2, "neutral": 4}, "dropped": {"gratitude": 3, "neutral": 1}}
    hand = x[[3, 4]].mean(0) - x[[5, 6, 8, 9]].mean(0)
    np.testing.assert_allclose(v, hand / np.linalg.norm(hand))
    x2 = np.vstack([x, [[1., 2., 3.], [4., 5., 6.]]])
    labels2 = np.r_[labels, ["anger", "anger"]]
    x2[5:10] = np.nan  # no neutral row left: "rest" is the other emotions only, and neutral is reported
    v, counts = diff_of_means(x2, labels2, "gratitude", "rest", return_counts=True)
    assert counts == {"used": {"gratitude": 2, "anger": 2}, "dropped": {"gratitude": 3, "anger": 0, "neutral": 5}}
    hand = x2[[3, 4]].mean(0) - x2[[10, 11]].mean(0)
    np.testing.assert_allclose(v, hand / np.linalg.norm(hand))


def test_too_few_rows_raises_naming_the_emotion():
    x = np.arange(12.).reshape(6, 2)
    x[1] = np.nan
    labels = ["gratitude", "gratitude", "neutral", "neutral", "anger", "anger"]
    with pytest.raises(ValueError, match="'gratitude'.*1 rows.*1 dropped"):
        diff_of_means(x, labels, "gratitude")
    x[2:4] = np.nan  # the span reduction: neutral rows have no span
    with pytest.raises(ValueError, match="'neutral'"):
        diff_of_means(x, labels, "anger")
    with pytest.raises(ValueError, match="'apology'"):
        emotion_directions(np.ones((4, 2)) * [[0], [0], [1], [1]], ["neutral"] * 2 + ["anger"] * 2,
                           emotions=("anger", "apology"))
    with pytest.raises(ValueError, match="labels give"):
        diff_of_means(x, labels[:3], "anger")


def test_top_components_match_sklearn_pca(data):
    x = np.asarray(data[0][:200], dtype=np.float64)
    comps, ratios = top_components(x, 5)
    pca = PCA(n_components=5, svd_solver="full").fit(x)
    np.testing.assert_allclose(np.abs(np.sum(comps * pca.components_, axis=1)), 1.0, atol=1e-8)
    np.testing.assert_allclose(ratios, pca.explained_variance_ratio_, rtol=1e-8)
    assert ratios.sum() <= 1.0 and np.all(np.diff(ratios) <= 0)
    _, all_ratios = top_components(x[:10, :4], 4)
    assert all_ratios.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k=9"):
        top_components(x[:5, :8], 9)


def test_cosine_matrix_and_layer_cosines():
    rng = np.random.default_rng(6)
    dirs = rng.normal(size=(5, 7))
    m = cosine_matrix(dirs)
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(cosine_matrix(dirs[:2], dirs)[1, 3], cos(dirs[1], dirs[3]))
    by_layer = {layer: {("anger", "pca"): dirs[layer], ("anger", "mean"): -dirs[layer]} for layer in range(5)}
    cosines = layer_cosines(by_layer)
    assert list(cosines["anger", "pca"].index) == [0, 1, 2, 3, 4]
    assert cosines["anger", "mean"].loc[2, 4] == pytest.approx(cos(dirs[2], dirs[4]))


def test_projections_and_summary(data):
    x, labels, _ = data
    x = x.copy()
    x[0] = np.nan
    dirs = emotion_directions(x, labels, methods=("mean_vs_neutral",))
    proj = projections(x, labels, dirs)
    assert len(proj) == (len(x) - 1) * 3 and 0 not in set(proj.row)
    v = dirs["anger", "mean_vs_neutral"]
    sel = proj[(proj.direction_emotion == "anger") & (proj.emotion == "apology")]
    np.testing.assert_allclose(sel.projection, x[sel.row] @ v, rtol=1e-6)
    summary = projection_summary(proj)
    assert len(summary) == 3 * 4
    assert ((summary.ci_low < summary["mean"]) & (summary["mean"] < summary.ci_high)).all()
    row = summary.set_index(["direction_emotion", "method", "emotion"]).loc[("anger", "mean_vs_neutral", "apology")]
    hand = x[sel.row] @ v
    assert row["mean"] == pytest.approx(hand.mean(), rel=1e-6) and row["n"] == len(hand)
    half = 1.9801 * hand.std(ddof=1) / np.sqrt(len(hand))  # t_{0.975, 119}
    assert row["ci_high"] - row["mean"] == pytest.approx(half, rel=1e-3)
    own = summary[(summary.direction_emotion == summary.emotion)].set_index("emotion")["mean"]
    base = summary[summary.emotion == BASELINE].set_index("direction_emotion")["mean"]
    assert (own > base.loc[own.index]).all()  # oriented: each emotion projects above neutral
