"""lib.synthetic.sae against the formulas by hand (numpy), sklearn's R^2, loops, and planted sparse directions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from lib.synthetic.sae import (L1Scheduler, SparseAutoencoder, dead_units, direction_recovery, mean_l0, sae_health,
                               sae_loss, train_sae, variance_explained)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("tied", [False, True])
def test_forward_is_the_formula_by_hand(tied):
    sae = SparseAutoencoder(d_in=5, k=7, tied=tied, seed=2)
    g = _gen(3)
    with torch.no_grad():  # non-zero biases and an untied decoder that differs from the encoder
        sae.b_enc.copy_(0.3 * torch.randn(7, generator=g))
        sae.b_dec.copy_(torch.randn(5, generator=g))
        if not tied:
            sae.w_dec.copy_(torch.randn(7, 5, generator=g))
    x = torch.randn(6, 5, generator=g)
    recon, z = sae(x)
    w_enc, b_enc, b_dec = (t.detach().numpy().astype(np.float64) for t in (sae.w_enc, sae.b_enc, sae.b_dec))
    w_dec = w_enc if tied else sae.w_dec.detach().numpy().astype(np.float64)
    z_hand = np.maximum(0.0, (x.numpy() - b_dec) @ w_enc.T + b_enc)
    d = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)
    np.testing.assert_allclose(z.detach().numpy(), z_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recon.detach().numpy(), z_hand @ d + b_dec, rtol=1e-5, atol=1e-5)
    assert 0 < (z_hand > 0).mean() < 1  # some units on, some off: the ReLU was exercised
    assert len(list(sae.parameters())) == (3 if tied else 4)


def test_sae_loss_and_activity_by_hand():
    g = np.random.default_rng(0)
    x, recon = g.normal(size=(4, 3)), g.normal(size=(4, 3))
    z = np.maximum(0, g.normal(size=(4, 5)))
    out = sae_loss(torch.tensor(x), torch.tensor(recon), torch.tensor(z), 0.25)
    mse = np.mean((x - recon) ** 2)
    l1 = np.mean(np.abs(z).sum(axis=1))
    assert float(out.mse) == pytest.approx(mse) and float(out.l1) == pytest.approx(l1)
    assert float(out.total) == pytest.approx(mse + 0.25 * l1)
    assert out.l0 == pytest.approx(np.mean((z > 0).sum(axis=1))) == mean_l0(torch.tensor(z))
    with pytest.raises(ValueError, match="l1_weight must be >= 0"):
        sae_loss(torch.tensor(x), torch.tensor(recon), torch.tensor(z), -1.0)


def test_variance_explained_is_sklearns_variance_weighted_r2():
    g = np.random.default_rng(1)
    x = g.normal(size=(20, 4)) * [1.0, 2.0, 0.5, 3.0]
    recon = x + g.normal(size=x.shape) * 0.7
    expected = r2_score(x, recon, multioutput="variance_weighted")
    assert variance_explained(torch.tensor(x), torch.tensor(recon)) == pytest.approx(expected, rel=1e-12)
    assert variance_explained(torch.tensor(x), torch.tensor(np.tile(x.mean(0), (20, 1)))) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no variance"):
        variance_explained(torch.ones(3, 2), torch.zeros(3, 2))


def test_dead_units_and_health_against_loops():
    g = _gen(4)
    batches = [torch.relu(torch.randn(5, 6, generator=g)) for _ in range(3)]
    for b in batches:
        b[:, 2] = 0.0  # unit 2 never fires
    batches[1][0, 4], batches[0][:, 4], batches[2][:, 4] = 1.0, 0.0, 0.0  # unit 4 fires once, in one batch
    expected = [not any(float(b[i, j]) > 0 for b in batches for i in range(5)) for j in range(6)]
    assert dead_units(batches).tolist() == expected and expected[2] and not expected[4]
    sae = SparseAutoencoder(d_in=3, k=8, seed=5)
    x = torch.randn(50, 3, generator=g)
    health = sae_health(sae, x, batch_size=7)  # batches of 7 give the same figures as one batch
    recon, z = sae(x)
    assert health.n_dead == int(sum((z[:, j] <= 0).all() for j in range(8)))
    assert health.dead_fraction == pytest.approx(health.n_dead / 8)
    assert health.mean_l0 == pytest.approx(float((z > 0).sum(1).double().mean()))
    assert health.variance_explained == pytest.approx(variance_explained(x, recon.detach()), rel=1e-6)


def test_l1_scheduler_moves_towards_the_target_by_the_stated_rule():
    z = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # fraction active 3/8, L0 1.5
    up = L1Scheduler(target=0.25, weight=1.0, rate=0.2)
    assert up.step(z) == pytest.approx(math.exp(0.2 * (0.375 - 0.25) / 0.25))
    down = L1Scheduler(target=2.0, weight=1.0, rate=0.2, measure="l0")
    assert down.step(z) == pytest.approx(math.exp(0.2 * (1.5 - 2.0) / 2.0)) and down.weight < 1.0
    level = L1Scheduler(target=0.375, weight=0.5)
    assert level.step(z) == pytest.approx(0.5)
    clipped = L1Scheduler(target=0.01, weight=1.0, rate=10.0, max_weight=2.0)
    assert clipped.step(z) == 2.0
    resumed = L1Scheduler(target=0.25, weight=1.0, rate=0.2)
    resumed.load_state_dict(up.state_dict())
    assert resumed.weight == up.weight and resumed.step(z) == up.step(z)
    with pytest.raises(ValueError, match="target must be in"):
        L1Scheduler(target=1.5)
    with pytest.raises(ValueError, match="measure must be one of"):
        L1Scheduler(target=0.1, measure="l2")


def test_direction_recovery_against_a_loop():
    g = np.random.default_rng(6)
    dirs, planted = g.normal(size=(5, 4)), g.normal(size=(3, 4))
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    expected = [max(cos(p, d) for d in dirs) for p in planted]
    np.testing.assert_allclose(direction_recovery(torch.tensor(dirs), torch.tensor(planted)).numpy(), expected)


def _planted(seed=10, d=32, m=8, n=4096, p=0.15, noise=0.01):
    """h = sparse non-negative combination of m known unit directions + Gaussian noise."""
    g = _gen(seed)
    planted = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)
    coef = (torch.rand(n, m, generator=g) < p) * (0.5 + torch.rand(n, m, generator=g))
    return coef @ planted + noise * torch.randn(n, d, generator=g), planted


def test_trained_sae_recovers_planted_directions_and_an_untrained_one_does_not():
    x, planted = _planted()
    sae = SparseAutoencoder(d_in=32, k=16, seed=1)
    assert direction_recovery(sae.directions(), planted).min() < 0.5  # the control: the metric can fail
    hist = train_sae(sae, x, steps=800, batch_size=256, lr=3e-3, l1_weight=3e-3, seed=0)
    assert hist[-1]["mse"] < 0.2 * hist[0]["mse"]
    assert direction_recovery(sae.directions(), planted).min() > 0.9
    health = sae_health(sae, x)
    assert health.variance_explained > 0.95 and 0.8 < health.mean_l0 < 3.0  # planted L0: 0.15 * 8 = 1.2


def test_training_is_deterministic_and_the_scheduler_reaches_its_target():
    x, planted = _planted(n=2048)
    runs = []
    for _ in range(2):
        sae = SparseAutoencoder(d_in=32, k=16, seed=1)
        sched = L1Scheduler(target=0.1, weight=1e-3, rate=0.05)
        runs.append((train_sae(sae, x, steps=600, batch_size=256, lr=3e-3, scheduler=sched, seed=0), sae))
    (hist, sae), (hist2, sae2) = runs
    assert hist == hist2 and all(torch.equal(a, b) for a, b in zip(sae.parameters(), sae2.parameters()))
    assert hist[0]["l0"] / 16 > 0.3  # it starts far too active ...
    assert 0.07 < np.mean([h["l0"] for h in hist[-50:]]) / 16 < 0.13  # ... and ends near the target 0.1
    assert hist[-1]["l1_weight"] != hist[0]["l1_weight"]
