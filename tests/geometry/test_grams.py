"""lib.geometry.grams against the textbook centring formulas written out with explicit matrices and loops."""
from __future__ import annotations

import numpy as np
import pytest

from lib.geometry.grams import KINDS, check_kind, gram_stack, kernel, normalised_gram


def u_centre_by_loop(k):
    """Szekely & Rizzo 2014, eq. (3), with K's diagonal zeroed first:
    U_ij = K_ij - K_i./(n-2) - K_.j/(n-2) + K_../((n-1)(n-2)) for i != j, and 0 on the diagonal."""
    n = len(k)
    k = k.copy()
    np.fill_diagonal(k, 0.0)
    out = np.zeros_like(k)
    for i in range(n):
        for j in range(n):
            if i != j:
                out[i, j] = (k[i, j] - k[i].sum() / (n - 2) - k[:, j].sum() / (n - 2)
                             + k.sum() / ((n - 1) * (n - 2)))
    return out


def test_linear_and_rbf_grams_are_double_centred_and_unit_norm():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 4)) + 3.0
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    lin = h @ (x @ x.T) @ h
    np.testing.assert_allclose(normalised_gram(x, "linear"), (lin / np.linalg.norm(lin)).ravel(), atol=1e-12)
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    sigma = 0.5 * np.median(dist[np.triu_indices(n, 1)])
    rbf = np.exp(-dist ** 2 / (2 * sigma ** 2))
    np.testing.assert_allclose(kernel(x, "rbf", 0.5), rbf, atol=1e-12)
    centred = h @ rbf @ h
    np.testing.assert_allclose(normalised_gram(x, "rbf", 0.5), (centred / np.linalg.norm(centred)).ravel(), atol=1e-12)


def test_debiased_gram_is_the_u_centred_kernel():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3))
    xc = x - x.mean(0)
    u = u_centre_by_loop(xc @ xc.T)
    np.testing.assert_allclose(normalised_gram(x, "debiased"), (u / np.linalg.norm(u)).ravel(), atol=1e-12)
    stacked = gram_stack([x, 2 * x], "debiased", 0.8, "xs")
    assert stacked.shape == (2, 64) and np.allclose(stacked[0], stacked[1])


def test_errors_name_the_kind_and_the_layer():
    with pytest.raises(ValueError, match="valid kinds: linear, debiased, rbf"):
        check_kind("cosine", 10)
    with pytest.raises(ValueError, match="debiased CKA needs at least 4 rows, got 3"):
        check_kind("debiased", 3)
    assert KINDS == ("linear", "debiased", "rbf")
    with pytest.raises(ValueError, match=r"xs\[3\] has a zero centred Gram"):
        gram_stack([np.ones((5, 2))], "linear", 0.8, "xs", offset=3)
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        kernel(np.r_[np.zeros((5, 2)), np.ones((1, 2))], "rbf", 0.8)
