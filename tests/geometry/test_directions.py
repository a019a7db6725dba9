"""lib.geometry.directions against hand computations (numpy, sklearn, scipy) and planted structure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from sklearn.decomposition import PCA

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.directions import (
    cosine_matrix, diff_of_means, drop_missing, emotion_directions, emotion_subspace,
    joint_subspace, layer_cosines, orient, pca_direction, projection_summary, projections, random_subspace_angles,
    split_half_stability, subspace_angles, subspace_stability, top_components,
)

D = 24


def _orthonormal(rng, d, k):
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


def planted(seed=0, n=120, shift=3.0, shifted=TARGET_EMOTIONS, offsets=None, d=D):
    """neutral = mu + noise; emotion e = mu + shift * u_e + noise (u_e orthonormal); anisotropic, rotated noise
    (std 0.05..0.6, below the between-class spread along u). Returns x, labels DataFrame, {emotion: u}."""
    rng = np.random.default_rng(seed)
    u = offsets if offsets is not None else dict(zip(TARGET_EMOTIONS, _orthonormal(rng, d, 3).T))
    rot = _orthonormal(rng, d, d)
    noise_sd = np.geomspace(0.05, 0.6, d)
    mu = rng.normal(0, 2, d)
    blocks, names = [], []
    for cls in (*TARGET_EMOTIONS, BASELINE):
        offset = shift * u[cls] if cls in shifted else 0.0
        blocks.append(mu + offset + (rng.standard_normal((n, d)) * noise_sd) @ rot.T)
        names += [cls] * n
    return np.vstack(blocks).astype(np.float32), pd.DataFrame({"emotion": names}), u


@pytest.fixture(scope="module")
def data():
    return planted()


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
    rows = drop_missing(x, labels)
    assert rows.index.tolist() == [3, 4, 5, 6, 8, 9] and rows.dropped == {"gratitude": 3, "neutral": 1}


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


def _known_spectrum(seed=0, shares=(0.5, 0.3, 0.15, 0.05), d=10, n=8):
    """Emotion rows minus the neutral mean = U diag(s) V^T with s^2 / sum(s^2) = shares; neutral rows == mu."""
    rng = np.random.default_rng(seed)
    left, right = _orthonormal(rng, n, len(shares)), _orthonormal(rng, d, len(shares))
    mu = rng.normal(size=d)
    offsets = left @ np.diag(np.sqrt(np.asarray(shares) * 40)) @ right.T
    x = np.vstack([mu + offsets, np.tile(mu, (3, 1))])
    return x, ["anger"] * n + ["neutral"] * 3, right


@pytest.mark.parametrize("threshold,k", [(0.5, 1), (0.6, 2), (0.8, 2), (0.9, 3), (0.95, 3), (0.96, 4), (1.0, 4)])
def test_subspace_k_is_smallest_reaching_threshold(threshold, k):
    x, labels, right = _known_spectrum()
    s = emotion_subspace(x, labels, "anger", var_threshold=threshold)
    assert s.k == k and s.basis.shape == (x.shape[1], k)
    np.testing.assert_allclose(s.explained[:4], [0.5, 0.8, 0.95, 1.0], atol=1e-12)
    np.testing.assert_allclose(s.basis.T @ s.basis, np.eye(k), atol=1e-12)
    assert subspace_angles(s.basis, right[:, :k]).max() < 1e-6  # spans the planted top-k axes


def test_subspace_max_k_and_fixed_k():
    x, labels, _ = _known_spectrum()
    assert emotion_subspace(x, labels, "anger", var_threshold=0.99, max_k=2).k == 2
    assert emotion_subspace(x, labels, "anger", k=1).k == 1


def test_joint_subspace_spans_planted_offsets(data):
    x, labels, u = data
    s = joint_subspace(x, labels, var_threshold=0.8)
    assert s.k == 3  # the three offsets carry 27 of ~30 units of squared norm per row
    assert subspace_angles(s.basis, np.stack(list(u.values()), 1)).max() < 0.15


def test_subspace_angles_match_scipy_and_known_angle():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(10, 3)), rng.normal(size=(10, 4))
    want = np.sort(scipy.linalg.subspace_angles(a, b))
    np.testing.assert_allclose(subspace_angles(a, b), want, atol=1e-10)
    np.testing.assert_allclose(subspace_angles(b, a), want, atol=1e-10)
    for t in (0.3, 1.2, 1e-7):
        e1, e2, e3 = np.eye(4)[:3]
        c = np.cos(t) * e1 + np.sin(t) * e2  # b = span{c, e3}, given by a non-orthonormal basis
        got = subspace_angles(np.stack([e1, e3], 1), np.stack([3 * c, e3 + c], 1))
        np.testing.assert_allclose(got, [0.0, t], rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="linearly dependent"):
        subspace_angles(np.ones((4, 2)), a[:4])


def test_random_subspace_reference_matches_theory():
    # one line in the plane: the angle is uniform on [0, pi/2], mean pi/4
    a = random_subspace_angles(2, 1, 1, n_samples=4000, seed=0)
    assert a.mean() == pytest.approx(np.pi / 4, abs=0.03)
    np.testing.assert_array_equal(a, random_subspace_angles(2, 1, 1, n_samples=4000, seed=0))


def test_split_half_stability_far_below_random_reference():
    rng = np.random.default_rng(5)
    d, n = 40, 60
    basis = _orthonormal(rng, d, 3)
    x, names = [], []
    for i, cls in enumerate((*TARGET_EMOTIONS, BASELINE)):
        low_rank = rng.normal(size=(n, 3)) * [1.0, 0.6, 0.3] @ basis.T  # variation inside the planted subspace
        offset = 4 * basis[:, i] if cls != BASELINE else 0
        x.append(offset + low_rank + 0.05 * rng.normal(size=(n, d)))
        names += [cls] * n
    x, labels = np.vstack(x), pd.DataFrame({"emotion": names})
    stab = split_half_stability(x, labels, n_splits=4, seed=0, n_null=100)
    summary = stab.summary()
    assert stab.k == 3 and stab.angles.shape == (4, 3) and len(stab.table) == 4
    assert summary["max_angle"] < 0.2 < 1.0 < summary["null_mean_angle"]
    assert stab.angles.max() < stab.null.mean(1).min()  # every split beats every random draw
    per_emotion = split_half_stability(x, labels, emotion="anger", k=2, n_splits=2, n_null=20)
    assert per_emotion.angles.shape == (2, 2) and per_emotion.summary()["max_angle"] < 0.3


def test_subspace_stability_same_vs_rotated_generator(data):
    x1, l1, u = data
    x2, l2, _ = planted(seed=7, offsets=u)  # same offsets, fresh noise
    same = subspace_stability(x1, l1, x2, l2, var_threshold=0.8)
    assert same.k == 3 and same.angles.max() < 0.2
    rng = np.random.default_rng(9)
    other = dict(zip(TARGET_EMOTIONS, _orthonormal(rng, D, 3).T))
    x3, l3, _ = planted(seed=8, offsets=other)
    moved = subspace_stability(x1, l1, x3, l3, var_threshold=0.8)
    assert moved.angles.max() > 0.5
    one = subspace_stability(x1, l1, x2, l2, emotion="gratitude", k=1)
    assert one.angles.shape == (1, 1) and one.angles[0, 0] < 0.1


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
