"""Subspace stability against a null that can fail: random subspaces drawn from the data's own covariance.
A planted stable subspace beats it; an unstable one that beats the old uniform reference does not."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.emotions import BASELINE, TARGET_EMOTIONS
from lib.geometry.rows import drop_missing
from lib.geometry.stability import null_classes, split_half_stability, subspace_stability
from lib.geometry.subspaces import centred_rows, covariance_subspace_angles, joint_subspace, principal_angles
from tests.geometry.synthetic import D, orthonormal, planted


def cloud(spread, seed=0, n=150, offset=4.0):
    """Four classes with the same within-class spread (sd ``spread`` along rotated axes, first axes largest)
    and emotion offsets along the last three rotated axes."""
    rng = np.random.default_rng(seed)
    d = len(spread)
    rot = orthonormal(rng, d, d)
    x, names = [], []
    for i, cls in enumerate((*TARGET_EMOTIONS, BASELINE)):
        shift = offset * rot[:, d - 1 - i] if cls != BASELINE else 0.0
        x.append(shift + (rng.normal(size=(n, d)) * spread) @ rot.T)
        names += [cls] * n
    return np.vstack(x), pd.DataFrame({"emotion": names}), rot


def test_planted_stable_subspace_beats_the_data_covariance_null():
    spread = np.r_[6.0, 5.0, 4.0, np.geomspace(1.0, 0.3, 37)]  # three dominant axes, a clear gap after them
    x, labels, rot = cloud(spread)
    stab = split_half_stability(x, labels, k=3, n_splits=4, n_null=100)
    s = stab.summary()
    assert stab.k == 3 and stab.angles.shape == (4, 3) and len(stab.null) == 100
    assert s["beats_null"] and s["mean_angle"] < 0.25 * s["null_mean_angle_p05"]
    assert s["null_mean_angle"] < s["uniform_mean_angle"] - 0.3  # the data-covariance null is far harder
    assert principal_angles(joint_subspace(x, labels, k=3).basis, rot[:, :3]).max() < 0.2  # the planted axes


def test_an_unstable_subspace_beats_the_uniform_reference_but_not_the_covariance_null():
    # eight equal dominant axes: any 3 of them are as good as any other, so halves disagree within the block
    spread = np.r_[np.full(8, 5.0), np.full(92, 0.2)]
    x, labels, _ = cloud(spread, seed=1)
    s = split_half_stability(x, labels, k=3, n_splits=4, n_null=100).summary()
    assert s["mean_angle"] < s["uniform_mean_angle"] - 0.3  # the old reference called this stable
    assert not s["beats_null"]


def test_the_null_draws_from_the_within_class_spread_of_the_subspace_classes():
    x, labels, _ = cloud(np.geomspace(3, 0.3, 12), seed=2, n=40)
    rows = drop_missing(x, labels)
    assert null_classes("anger", "within") == ("anger",)
    assert null_classes(None, "between") == (*TARGET_EMOTIONS, BASELINE)
    st = subspace_stability(x[::2], labels[::2], x[1::2], labels[1::2], emotion="anger", k=2, n_null=5, seed=4)
    a = drop_missing(x[::2], labels[::2])
    b = drop_missing(x[1::2], labels[1::2])
    want = covariance_subspace_angles(centred_rows(a, ["anger"], "t"), centred_rows(b, ["anger"], "t"), 2, 5, 4)
    np.testing.assert_allclose(st.null, want)
    assert centred_rows(rows, ["anger"], "t").mean(0) == pytest.approx(np.zeros(12), abs=1e-9)


def test_between_subspace_stable_under_fresh_noise_and_moved_by_new_offsets(data):
    x1, l1, u = data
    x2, l2, _ = planted(seed=7, offsets=u)  # same offsets, fresh noise
    same = subspace_stability(x1, l1, x2, l2, kind="between", var_threshold=0.8, n_null=50)
    assert same.k == 3 and same.angles.max() < 0.2 and same.summary()["beats_null"]
    other = dict(zip(TARGET_EMOTIONS, orthonormal(np.random.default_rng(9), D, 3).T))
    x3, l3, _ = planted(seed=8, offsets=other)
    moved = subspace_stability(x1, l1, x3, l3, kind="between", var_threshold=0.8, n_null=50)
    assert moved.angles.max() > 0.5
    one = subspace_stability(x1, l1, x2, l2, emotion="gratitude", kind="between", n_null=20)
    assert one.k == 1 and one.angles.shape == (1, 1) and one.angles[0, 0] < 0.1
    table = split_half_stability(x1, l1, emotion="anger", k=2, n_splits=3, n_null=10).table
    assert list(table.columns) == ["split", "k", "mean_angle", "max_angle"] and len(table) == 3
