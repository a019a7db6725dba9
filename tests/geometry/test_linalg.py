"""lib.geometry.linalg: input conversion, centring, unit normalisation and orthonormal bases, by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.activations.names import act_name
from lib.geometry.linalg import as_layers, as_matrix, centre, orthonormal_basis, same_rows, unit


def test_unit_divides_by_the_norm_and_clears_negative_zero():
    v = np.array([-0.0, 3.0, -4.0])
    u = unit(v, "v")
    np.testing.assert_array_equal(u, [0.0, 0.6, -0.8])
    assert not np.signbit(u[0])  # -0.0 / 5 would be -0.0
    m = np.array([[1.0, 2.0], [2.0, 4.0]])
    np.testing.assert_allclose(unit(m, "m"), m / 5.0)  # Frobenius norm sqrt(25)
    for bad in (np.zeros(3), np.array([np.inf, 1.0])):
        with pytest.raises(ValueError, match="demo: cannot normalise an array of norm"):
            unit(bad, "demo")


def test_centre_and_same_rows():
    x = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]])
    np.testing.assert_allclose(centre(x), [[-2.0, -20.0], [0.0, -10.0], [2.0, 30.0]])
    assert same_rows(x, np.zeros((3, 7))) == 3
    with pytest.raises(ValueError, match="a, b have 3 and 2 rows"):
        same_rows(x, x[:2], "a, b")


def test_as_matrix_and_as_layers_accept_every_container():
    rng = np.random.default_rng(0)
    layers = [rng.standard_normal((5, 3)) for _ in range(2)]
    t = as_matrix(torch.tensor(layers[0], dtype=torch.float32), "x")
    assert t.dtype == np.float64 and np.allclose(t, layers[0], atol=1e-6)
    for container in (layers, np.stack(layers), torch.tensor(np.stack(layers)),
                      {act_name("resid_post", i): x for i, x in enumerate(layers)}):
        got = as_layers(container, "xs")
        assert len(got) == 2 and all(np.allclose(g, x) for g, x in zip(got, layers))
    with pytest.raises(ValueError, match="floating point; input dtype: int64"):
        as_matrix(np.zeros((2, 2), dtype=np.int64), "x")
    with pytest.raises(ValueError, match=r"xs\[1\] has 4 rows but xs\[0\] has 5"):
        as_layers([layers[0], layers[1][:4]], "xs")
    with pytest.raises(ValueError, match="xs is empty"):
        as_layers([], "xs")
    with pytest.raises(ValueError, match=r"input shape: \(5, 3\)"):
        as_layers(layers[0], "xs")


def test_orthonormal_basis_spans_the_columns():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 3))
    q = orthonormal_basis(a, "a")
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(q @ (q.T @ a), a, atol=1e-12)  # projecting a onto span(q) leaves it unchanged
    assert orthonormal_basis(a[:, 0], "v").shape == (6, 1)
    with pytest.raises(ValueError, match="linearly dependent"):
        orthonormal_basis(np.c_[a[:, :1], 2 * a[:, :1]], "a")
    with pytest.raises(ValueError, match=r"1 <= k <= d; got shape \(2, 3\)"):
        orthonormal_basis(a[:2], "a")
