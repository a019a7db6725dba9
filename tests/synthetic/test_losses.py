"""lib.synthetic.losses against hand loops, numpy SVDs, scipy's subspace angles, torch's own SVD backward, finite
differences (gradcheck) and planted subspaces."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
import torch.nn.functional as F

from lib.synthetic.losses import (ProjectionEMA, grid_accuracy, grid_iou, projection_distance, schedule,
                                  sharing_loss, task_loss, top_k_projection)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _grids(b=4, c=4, seed=0):
    g = _gen(seed)
    return torch.randn(b, c, 8, 8, generator=g, dtype=torch.float64), torch.randint(c, (b, 8, 8), generator=g)


def _numpy_projection(x, k):
    """Top-k PCA projection of the rows of x by numpy's SVD of the centred rows."""
    x = np.asarray(x, dtype=np.float64)
    vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)[2][:k]
    return vt.T @ vt


def test_cross_entropy_is_the_mean_over_cells_of_minus_log_softmax():
    logits, target = _grids()
    logp = np.log(scipy.special.softmax(logits.numpy(), axis=1))
    by_hand = -np.mean([logp[b, target[b, i, j], i, j] for b in range(4) for i in range(8) for j in range(8)])
    assert float(task_loss(logits, target)) == pytest.approx(by_hand, rel=1e-12)


def test_soft_iou_loss_equals_a_loop_over_colours_and_cells():
    logits, target = _grids(c=4)
    p = scipy.special.softmax(logits.numpy(), axis=1)
    losses = []
    for b in range(4):
        inter = union = 0.0
        for c in range(1, 4):  # background 0 left out
            for i in range(8):
                for j in range(8):
                    t = float(target[b, i, j] == c)
                    inter += p[b, c, i, j] * t
                    union += p[b, c, i, j] + t - p[b, c, i, j] * t
        losses.append(1 - (inter + 1e-6) / (union + 1e-6))
    assert float(task_loss(logits, target, "iou")) == pytest.approx(np.mean(losses), rel=1e-10)
    # another background colour leaves out another channel
    assert float(task_loss(logits, target, "iou", background=2)) != pytest.approx(np.mean(losses), rel=1e-6)


def test_iou_loss_is_zero_when_right_one_when_wrong_and_ignores_background():
    target = torch.randint(1, 3, (2, 8, 8), generator=_gen(1))
    right = 50.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).double()
    wrong = 50.0 * F.one_hot((target % 2) + 1, 3).permute(0, 3, 1, 2).double()  # 1 <-> 2 everywhere
    assert float(task_loss(right, target, "iou")) < 1e-9
    assert float(task_loss(wrong, target, "iou")) == pytest.approx(1.0, abs=1e-7)  # eps / U off 1
    background = torch.zeros(2, 8, 8, dtype=torch.long)  # all background, predicted as such: IoU 1 by definition
    assert float(task_loss(50.0 * F.one_hot(background, 3).permute(0, 3, 1, 2).double(), background, "iou")) < 1e-9


def _iou_by_sets(pred, target, bg=0):
    out = []
    for p, t in zip(pred.tolist(), target.tolist()):
        cells = [(i, j) for i in range(len(p)) for j in range(len(p[0]))]
        inter = union = 0
        for c in (set(sum(p, [])) | set(sum(t, []))) - {bg}:
            a = {x for x in cells if p[x[0]][x[1]] == c}
            b = {x for x in cells if t[x[0]][x[1]] == c}
            inter, union = inter + len(a & b), union + len(a | b)
        out.append(inter / union if union else 1.0)
    return out


def test_grid_metrics_against_sets_and_loops():
    g = _gen(2)
    target = torch.randint(4, (6, 8, 8), generator=g)
    pred = target.clone()
    pred[1, 0, 0] = (pred[1, 0, 0] + 1) % 4  # one cell off
    pred[2] = torch.randint(4, (8, 8), generator=g)
    pred[3] = 0
    target[3] = 0  # both all background
    pred[4] = 0  # all background predicted, target not
    assert grid_accuracy(pred, target) == pytest.approx(np.mean([bool((p == t).all()) for p, t in zip(pred, target)]))
    assert grid_accuracy(pred, target, per_grid=True).tolist() == [True, False, False, True, False, True]
    np.testing.assert_allclose(grid_iou(pred, target, per_grid=True).numpy(), _iou_by_sets(pred, target))
    assert grid_iou(pred, target) == pytest.approx(np.mean(_iou_by_sets(pred, target)))
    logits = F.one_hot(pred, 4).permute(0, 3, 1, 2).double()
    assert grid_iou(logits, target) == grid_iou(pred, target)  # logits: argmax taken
    # the hard IoU is the soft one at one-hot probabilities
    soft = 1 - task_loss(60.0 * logits, target, "iou", eps=1e-12)
    assert float(soft) == pytest.approx(grid_iou(pred, target), abs=1e-6)


def test_task_loss_and_metrics_name_bad_inputs():
    logits, target = _grids()
    with pytest.raises(ValueError, match="kind must be one of"):
        task_loss(logits, target, "mse")
    with pytest.raises(ValueError, match="target must be a torch.long"):
        task_loss(logits, target.float())
    with pytest.raises(ValueError, match=r"logits must be \[B, C, H, W\]"):
        task_loss(logits[:, :, :4], target)
    with pytest.raises(ValueError, match="colours must lie in 0..3"):
        task_loss(logits, target + 4)
    with pytest.raises(ValueError, match="pred must be"):
        grid_accuracy(target[:2], target)


def test_top_k_projection_matches_numpy_and_distance_matches_principal_angles():
    g = np.random.default_rng(0)
    a, b = g.normal(size=(12, 6)), g.normal(size=(9, 6))
    pa, pb = top_k_projection(torch.tensor(a), 3), top_k_projection(torch.tensor(b), 3)
    np.testing.assert_allclose(pa.numpy(), _numpy_projection(a, 3), atol=1e-10)
    angles = scipy.linalg.subspace_angles(np.linalg.svd(a - a.mean(0))[2][:3].T, np.linalg.svd(b - b.mean(0))[2][:3].T)
    assert float(projection_distance(pa, pb)) == pytest.approx(2 * np.sum(np.sin(angles) ** 2), rel=1e-9)


def test_distance_is_zero_for_one_subspace_and_2k_for_orthogonal_ones():
    g = _gen(3)
    basis = torch.linalg.qr(torch.randn(10, 4, generator=g, dtype=torch.float64))[0]  # 4 orthonormal columns
    spread = torch.diag(torch.tensor([4.0, 3.0], dtype=torch.float64))
    coef = lambda: torch.randn(30, 2, generator=g, dtype=torch.float64) @ spread  # noqa: E731
    same_a, same_b = coef() @ basis[:, :2].T, coef() @ (basis[:, :2] @ torch.tensor([[0.6, -0.8], [0.8, 0.6]],
                                                                                    dtype=torch.float64)).T
    other = coef() @ basis[:, 2:].T
    pa, pb, pc = (top_k_projection(x, 2) for x in (same_a, same_b, other))
    assert float(projection_distance(pa, pb)) == pytest.approx(0.0, abs=1e-9)
    assert float(projection_distance(pa, pc)) == pytest.approx(4.0, abs=1e-9)  # 2k, k = 2
    h = torch.cat([same_a, same_b, other])
    out = sharing_loss(h, torch.tensor([0] * 30 + [1] * 30 + [2] * 30), k=2)
    assert float(out.loss) == pytest.approx((0 + 4 + 4) / 3, abs=1e-9) and out.n_pairs == 3


def test_sharing_loss_equals_numpy_projections_and_multi_hot_labels_equal_ids():
    g = np.random.default_rng(4)
    h = g.normal(size=(17, 6))
    ids = np.array([0] * 6 + [1] * 5 + [2] * 6)
    proj = [_numpy_projection(h[ids == i], 2) for i in range(3)]
    by_hand = np.mean([np.sum((proj[a] - proj[b]) ** 2) for a in range(3) for b in range(a + 1, 3)])
    out = sharing_loss(torch.tensor(h), torch.tensor(ids), k=2)
    assert float(out.loss) == pytest.approx(by_hand, rel=1e-9)
    labels = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1]])[torch.tensor(ids)]
    multi = sharing_loss(torch.tensor(h), labels, k=2)
    assert float(multi.loss) == pytest.approx(by_hand, rel=1e-9)
    assert sorted(multi.keys) == ["0100", "1010", "1101"]
    shuffled = torch.randperm(17, generator=_gen(4))  # row order within the batch does not matter
    assert float(sharing_loss(torch.tensor(h)[shuffled], torch.tensor(ids)[shuffled], k=2).loss) == pytest.approx(
        by_hand, rel=1e-9)


def _groups_case(dtype=torch.float64):
    """Three groups of unequal sizes (5, 4, 6) in d = 7 (n < d: padding and null spaces in play)."""
    h = torch.randn(15, 7, generator=_gen(5), dtype=dtype) * torch.linspace(2.0, 0.5, 7, dtype=dtype)
    return h, torch.tensor([0] * 5 + [1] * 4 + [2] * 6)


@pytest.mark.parametrize("with_ema", [False, True])
def test_sharing_loss_gradient_passes_gradcheck(with_ema):
    h, ids = _groups_case()
    ema = ProjectionEMA()
    if with_ema:  # targets from another batch; each call gets a fresh copy, so the EMA does not move under gradcheck
        sharing_loss(h.flip(0), ids, k=2, ema=ema)

    def fresh():
        out = ProjectionEMA()
        out.load_state_dict(ema.state_dict())
        return out

    assert torch.autograd.gradcheck(lambda x: sharing_loss(x, ids, k=2, ema=fresh() if with_ema else None).loss,
                                    (h.clone().requires_grad_(),), eps=1e-6, atol=1e-6)


def test_custom_gradient_equals_torch_svd_backward_where_that_is_defined():
    # full-rank groups (n > d, distinct singular values): torch's own SVD backward is finite and exact there
    h = torch.randn(24, 4, generator=_gen(6), dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0, 0.5],
                                                                                    dtype=torch.float64)
    ids = torch.tensor([0] * 12 + [1] * 12)
    x1 = h.clone().requires_grad_()
    sharing_loss(x1, ids, k=2).loss.backward()
    x2 = h.clone().requires_grad_()
    p = []
    for g in (0, 1):
        rows = x2[ids == g]
        vt = torch.linalg.svd(rows - rows.mean(0), full_matrices=False)[2][:2]
        p.append(vt.T @ vt)
    ((p[0] - p[1]) ** 2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-8, atol=1e-10)


def test_detach_keeps_the_value_and_halves_the_gradient():
    h, ids = _groups_case()
    x1, x2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    full, half = sharing_loss(x1, ids, k=2), sharing_loss(x2, ids, k=2, detach=True)
    assert float(full.loss) == pytest.approx(float(half.loss), rel=1e-12)
    full.loss.backward()
    half.loss.backward()
    torch.testing.assert_close(x2.grad, 0.5 * x1.grad)


def test_fallbacks_are_counted_and_left_out():
    g = _gen(7)
    good = [torch.randn(6, 5, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2],
                                                                                dtype=torch.float64) for _ in range(2)]
    tie = torch.tensor([[1.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0], [0, -1.0, 0, 0, 0]],
                       dtype=torch.float64)  # s_1 = s_2: the top-1 axis is not defined
    too_few_axes = torch.randn(2, 5, generator=g, dtype=torch.float64)  # 2 rows: 1 axis < k = 2
    single = torch.randn(1, 5, generator=g, dtype=torch.float64)
    h = torch.cat([good[0], good[1], tie, too_few_axes, single])
    ids = torch.tensor([0] * 6 + [1] * 6 + [2] * 4 + [3] * 2 + [4])
    out = sharing_loss(h, ids, k=2)  # k = 2: the tie group is stable (s_2 > s_3 = 0), the 2-row group is not
    assert (out.n_groups, out.n_small, out.n_unstable, out.keys) == (3, 1, 1, ["0", "1", "2"])
    out1 = sharing_loss(h, ids, k=1)  # k = 1: the tie group is unstable, the 2-row group stable
    assert (out1.n_groups, out1.n_small, out1.n_unstable, out1.keys) == (3, 1, 1, ["0", "1", "3"])
    kept = torch.isin(ids, torch.tensor([0, 1, 3]))  # the left-out groups add nothing
    assert float(out1.loss) == pytest.approx(float(sharing_loss(h[kept], ids[kept], k=1).loss), rel=1e-12)
    assert sharing_loss(h, ids, k=1, min_group=7).n_small == 5
    two = sharing_loss(h, ids, k=2, min_group=6)
    assert (two.n_groups, two.n_small, two.n_unstable, two.n_pairs) == (2, 3, 0, 1)
    x = good[0].clone().requires_grad_()  # one group: no pair, loss 0, still connected to h
    one = sharing_loss(x, torch.zeros(6, dtype=torch.long), k=2)
    assert (one.n_groups, one.n_pairs, float(one.loss)) == (1, 0, 0.0)
    one.loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_regulariser_aligns_planted_subspaces_when_optimised():
    g = _gen(8)
    bases = [torch.linalg.qr(torch.randn(8, 2, generator=g))[0] for _ in range(3)]  # three random planes in 8-d
    h = torch.cat([torch.randn(10, 2, generator=g) @ torch.diag(torch.tensor([2.0, 1.0])) @ b.T for b in bases])
    h = torch.nn.Parameter(h + 0.05 * torch.randn(h.shape, generator=g))
    ids = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)

    def angles():  # an independent reading: scipy's principal angles between numpy PCA planes, group 0 and 1
        a, b = (h.detach().numpy()[ids.numpy() == i] for i in (0, 1))
        return scipy.linalg.subspace_angles(*(np.linalg.svd(x - x.mean(0))[2][:2].T for x in (a, b)))

    before, angles_before = float(sharing_loss(h, ids, k=2).loss), angles()
    opt = torch.optim.Adam([h], lr=0.02)
    for _ in range(150):
        loss = sharing_loss(h, ids, k=2).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(sharing_loss(h, ids, k=2).loss)
    assert before > 1.0 and after < 0.1 * before
    assert np.max(angles()) < 0.5 * np.max(angles_before)


def test_ema_averages_projections_and_serves_as_the_other_side():
    h, ids = _groups_case()
    ema = ProjectionEMA(momentum=0.75)
    first = sharing_loss(h, ids, k=2, ema=ema)
    assert first.n_pairs == 0 and float(first.loss) == 0.0 and sorted(ema.keys()) == ["0", "1", "2"]
    p0 = {key: ema[key].clone() for key in ema.keys()}
    h2 = h + 0.3 * torch.randn(h.shape, generator=_gen(9), dtype=h.dtype)
    ids2 = torch.where(ids == 2, torch.tensor(5), ids)  # a new label, 5; no 2 in this batch
    x = h2.clone().requires_grad_()
    second = sharing_loss(x, ids2, k=2, ema=ema)
    p_new = {key: torch.tensor(_numpy_projection(h2[ids2 == int(key)].numpy(), 2)) for key in ("0", "1", "5")}
    targets = {key: p0[key] for key in ("0", "1", "2")}
    dists = [float(((p_new[a] - targets[b]) ** 2).sum()) for a in p_new for b in targets if a != b]
    assert second.n_pairs == len(dists) == 7 and float(second.loss) == pytest.approx(np.mean(dists), rel=1e-9)
    second.loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    torch.testing.assert_close(ema["0"], 0.75 * p0["0"] + 0.25 * p_new["0"])
    torch.testing.assert_close(ema["2"], p0["2"])  # not in the batch: unchanged
    torch.testing.assert_close(ema["5"], p_new["5"])
    again = ProjectionEMA(momentum=0.75)
    again.load_state_dict(ema.state_dict())
    assert again.keys() == ema.keys() and all(torch.equal(again[k], ema[k]) for k in ema.keys())


def test_sharing_loss_names_bad_inputs():
    h, ids = _groups_case()
    with pytest.raises(ValueError, match=r"k must be an integer in 1..6"):
        sharing_loss(h, ids, k=7)
    with pytest.raises(ValueError, match="groups must be ids"):
        sharing_loss(h, ids[:3], k=2)
    with pytest.raises(ValueError, match="only 0 and 1"):
        sharing_loss(h, torch.full((15, 3), 2), k=2)
    with pytest.raises(ValueError, match="min_group"):
        sharing_loss(h, ids, k=2, min_group=1)
    with pytest.raises(ValueError, match="momentum"):
        ProjectionEMA(momentum=1.0)


def test_schedules_by_hand():
    assert [schedule(s, 10, 20, "linear") for s in (0, 10, 12, 20, 25)] == [0.0, 0.0, 0.2, 1.0, 1.0]
    assert schedule(15, 10, 20, "cosine") == pytest.approx(0.5)
    assert schedule(12, 10, 20, "cosine") == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.2)))
    assert [schedule(s, 10, 20, "step") for s in (9, 10, 30)] == [0.0, 1.0, 1.0]
    assert schedule(0, 10, 20, "constant") == 1.0
    assert [schedule(s, 5, 5) for s in (4, 5)] == [0.0, 1.0]
    with pytest.raises(ValueError, match="start <= end"):
        schedule(0, 20, 10)
    with pytest.raises(ValueError, match="kind must be one of"):
        schedule(0, 0, 1, "exp")
