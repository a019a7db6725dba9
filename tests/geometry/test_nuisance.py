"""Nuisance variants against independent computations (lstsq, sklearn's StandardScaler), and planted data: a
shared token-count signal or a shared huge-norm dimension makes unrelated representations look alike to raw
CKA and not after the correction, while a shared planted signal survives it."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from lib.geometry.cka import debiased_cka, linear_cka
from lib.geometry.nuisance import VARIANTS, length_covariates, nuisance_features, residualise, standardise


def test_length_covariates_are_powers_of_the_standardised_log_count():
    t = np.array([3, 5, 8, 13, 21, 34])
    z = (np.log(t) - np.log(t).mean()) / np.log(t).std()
    np.testing.assert_allclose(length_covariates(t), np.c_[z, z ** 2, z ** 3], atol=1e-12)
    assert length_covariates([7, 7, 7]).shape == (3, 0)  # no variation in length: nothing to regress out
    with pytest.raises(ValueError, match="counts >= 1"):
        length_covariates([3, 0, 5])


def test_residualise_matches_lstsq_and_standardise_matches_sklearn():
    rng = np.random.default_rng(0)
    x, c = rng.standard_normal((50, 6)) + 3, rng.standard_normal((50, 2))
    design = np.c_[np.ones(50), c]
    want = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    np.testing.assert_allclose(residualise(x, c), want, atol=1e-10)
    np.testing.assert_allclose(design.T @ residualise(x, c), 0, atol=1e-9)
    x[:, 2] = 4.0  # a constant feature stays 0 instead of dividing by 0
    z = standardise(x)
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(z[:, keep], StandardScaler().fit_transform(x[:, keep]), atol=1e-10)
    assert (z[:, 2] == 0).all()


def test_variants_compose_and_name_their_inputs():
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((40, 5)), rng.integers(3, 30, 40)
    np.testing.assert_allclose(nuisance_features(x, "length", t), residualise(x, length_covariates(t)))
    np.testing.assert_allclose(nuisance_features(x, "length+zscore", t),
                               standardise(residualise(x, length_covariates(t))))
    np.testing.assert_allclose(nuisance_features(x, "zscore"), standardise(x))
    assert VARIANTS == ("raw", "length", "zscore", "length+zscore")
    with pytest.raises(ValueError, match="valid variants: raw, length, zscore, length\\+zscore"):
        nuisance_features(x, "whiten")
    with pytest.raises(ValueError, match="needs n_tokens with one count per row \\(40 rows\\)"):
        nuisance_features(x, "length", t[:5])


def planted(n=600, d=40, seed=2):
    """Token counts, a shared latent z, and independent noise for two 'models'."""
    rng = np.random.default_rng(seed)
    t = rng.integers(3, 60, n)
    return rng, t, rng.standard_normal((n, 4)), rng.standard_normal((n, d)), rng.standard_normal((n, d))


def test_a_shared_token_count_signal_fools_raw_cka_and_not_the_length_correction():
    rng, t, z, nx, ny = planted()
    h = np.log(t)[:, None]
    x = nx + 6 * h @ rng.standard_normal((1, 40)) + 2 * np.sqrt(t)[:, None] @ rng.standard_normal((1, 40))
    y = ny + 6 * h @ rng.standard_normal((1, 40)) - 0.5 * h ** 2 @ rng.standard_normal((1, 40))
    assert linear_cka(x, y) > 0.6 and debiased_cka(x, y) > 0.6  # unrelated but for their length
    fx, fy = nuisance_features(x, "length", t), nuisance_features(y, "length", t)
    assert abs(debiased_cka(fx, fy)) < 0.03
    assert linear_cka(fx, fy) < 0.15  # its chance level for d = 40, n = 600 is about 0.06
    # a shared signal survives the correction (z is independent of the length)
    xs, ys = x + 3 * z @ rng.standard_normal((4, 40)), y + 3 * z @ rng.standard_normal((4, 40))
    assert debiased_cka(nuisance_features(xs, "length", t), nuisance_features(ys, "length", t)) > 0.5


def test_a_shared_outlier_dimension_fools_raw_cka_and_not_standardisation():
    rng, t, z, nx, ny = planted()
    s = rng.standard_normal(len(t))  # one scalar both models carry in one dimension of huge norm
    x, y = nx.copy(), ny.copy()
    x[:, 0], y[:, 0] = 100 * s, -80 * s
    assert linear_cka(x, y) > 0.9 and debiased_cka(x, y) > 0.9
    assert abs(debiased_cka(standardise(x), standardise(y))) < 0.05  # one dimension of 40 once each weighs the same
    # the converse: unrelated outlier dimensions hide a signal shared by all the others; standardising shows it
    shared = z @ rng.standard_normal((4, 40))
    x, y = shared + 0.5 * nx, shared @ np.linalg.qr(rng.standard_normal((40, 40)))[0] + 0.5 * ny
    x[:, 0], y[:, 0] = 100 * rng.standard_normal(len(t)), 100 * rng.standard_normal(len(t))
    assert debiased_cka(x, y) < 0.1
    assert debiased_cka(standardise(x), standardise(y)) > 0.5
