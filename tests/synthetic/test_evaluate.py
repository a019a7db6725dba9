"""lib.synthetic.evaluate: evaluate_set on planted models (exact, and wrong on one known task against hand numbers),
predict's batching and mode restoring, zero_shot, learning_curve_summary against hand values, and few-shot LoRA
adaptation (caller's model unchanged, only adapters trained, step 0 = the base model, IoU rises on an easy task,
determinism, programs read, config errors)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.synthetic.data import fixed_set
from lib.synthetic.evaluate import (QUERY_SEED_OFFSET, FewShotConfig, FewShotResult, adapt, evaluate_set, few_shot,
                                    learning_curve_summary, lora_copy, predict, zero_shot)
from lib.synthetic.models import GridModel, GridOutput, ModelConfig
from lib.synthetic.primitives import PRIMITIVES, compose
from lib.synthetic.tasks import PAD, GridSpec, program

TASKS = [("rotate",), ("flip_h", "gravity"), ("shift", "colour_shift", "flip_v")]
# an easy setting for few-shot: 3 colours, dense objects, gravity (IoU rises from ~0 within a few dozen steps)
EASY_SPEC = GridSpec(n_colours=3, min_objects=3, max_objects=4, max_object_size=4, density=0.8)
EASY_CONFIG = FewShotConfig(shots=32, steps=40, lr=3e-2, loss="iou", eval_every=10, n_query=32, batch_size=32)


class Planted(nn.Module):
    """Logits 10 * one-hot of compose(program's task, input); on the samples whose program is ``wrong`` the first
    foreground cell of that answer is set to the background. Records whether it ran in training mode."""

    def __init__(self, wrong: torch.Tensor | None = None, n_colours: int = 6):
        super().__init__()
        self.wrong, self.n_colours, self.modes = wrong, n_colours, []

    def forward(self, grids: torch.Tensor, program: torch.Tensor) -> GridOutput:
        self.modes.append(self.training)
        out = torch.stack([compose([PRIMITIVES[i] for i in p.tolist() if i != PAD], g, n_colours=self.n_colours)
                           for g, p in zip(grids, program)])
        if self.wrong is not None:
            rows = (program == self.wrong).all(dim=1)
            flat = out.flatten(1)
            first = (flat != 0).long().argmax(dim=1)
            flat[rows, first[rows]] = 0
            out = flat.view_as(out)
        logits = 10.0 * F.one_hot(out, self.n_colours).permute(0, 3, 1, 2).float()
        h = grids.flatten(1).float()[:, :4]
        return GridOutput(logits=logits, h=h, primitive_logits=torch.zeros(len(grids), len(PRIMITIVES)))


def _tiny(n_colours: int = 6, seed: int = 0) -> GridModel:
    return GridModel(ModelConfig(n_primitives=len(PRIMITIVES), n_colours=n_colours, d_model=16, n_layers=1,
                                 n_heads=2, d_bottleneck=32), seed=seed)


def test_evaluate_set_is_exact_on_a_planted_model():
    fixed = fixed_set(TASKS, 7, seed=0)
    scores = evaluate_set(Planted(), fixed, batch_size=5)  # 21 samples: batches of 5 do not divide them
    assert scores["accuracy"] == 1.0 and scores["iou"] == 1.0
    assert scores["per_task"] == [{"task": t, "n": 7, "accuracy": 1.0, "iou": 1.0} for t in range(3)]


def test_evaluate_set_per_task_numbers_of_a_model_wrong_on_one_task():
    fixed = fixed_set(TASKS, 8, seed=1)
    scores = evaluate_set(Planted(wrong=program(TASKS[1])), fixed, batch_size=6)
    # task 1: one foreground cell of f dropped: never exact, IoU (f - 1) / f per grid (I = f - 1, U = f)
    f = (fixed["target"][fixed["task"] == 1] != 0).flatten(1).sum(dim=1).double()
    assert bool((f >= 2).all())
    iou_1 = float(((f - 1) / f).mean())
    assert [row["accuracy"] for row in scores["per_task"]] == [1.0, 0.0, 1.0]
    assert [row["iou"] for row in scores["per_task"]] == pytest.approx([1.0, iou_1, 1.0], abs=1e-12)
    assert scores["accuracy"] == pytest.approx(2 / 3) and scores["iou"] == pytest.approx((2 + iou_1) / 3)
    assert iou_1 < 0.95  # the planted error is visible in the IoU


@pytest.mark.parametrize("mode", [True, False])
def test_predict_runs_in_eval_mode_without_grad_and_restores_the_mode(mode):
    model = _tiny().train(mode)
    fixed = fixed_set(TASKS, 5, seed=2)
    out = predict(model, fixed, batch_size=4)
    assert model.training is mode and all(m.training is mode for m in model.modules())
    assert not out["logits"].requires_grad and out["logits"].dtype == torch.float32
    with torch.no_grad():
        whole = model.eval()(fixed["input"], fixed["program"])
    torch.testing.assert_close(out["logits"], whole.logits)  # batches of 4 = one batch of 15
    torch.testing.assert_close(out["h"], whole.h)
    planted = Planted().train(mode)
    predict(planted, fixed, batch_size=4)
    assert planted.modes == [False] * 4 and planted.training is mode


def test_predict_and_evaluate_set_name_a_bad_fixed_set():
    fixed = fixed_set(TASKS, 2, seed=0)
    with pytest.raises(ValueError, match="lacks keys \\['program'\\]"):
        predict(Planted(), {k: v for k, v in fixed.items() if k != "program"})
    with pytest.raises(ValueError, match="lacks keys \\['task'\\]"):
        evaluate_set(Planted(), {k: v for k, v in fixed.items() if k != "task"})
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        predict(Planted(), fixed, batch_size=0)


def test_zero_shot_is_evaluate_set_on_the_fixed_set_of_the_tasks():
    model, tasks = _tiny(), [("rotate", "shift", "gravity"), ("flip_v", "colour_shift", "rotate")]
    got = zero_shot(model, tasks, n_per_task=6, seed=4)
    assert got == {**evaluate_set(model, fixed_set(tasks, 6, 4)), "tasks": [list(t) for t in tasks]}
    planted = zero_shot(Planted(wrong=program(tasks[0])), tasks, n_per_task=6, seed=4)
    assert [row["accuracy"] for row in planted["per_task"]] == [0.0, 1.0]


def test_learning_curve_summary_against_hand_values():
    assert learning_curve_summary([0, 10, 20], [0.3, 0.3, 0.3], threshold=0.3) == {"steps_to_threshold": 0,
                                                                                    "auc": pytest.approx(0.3)}
    ramp = learning_curve_summary([0, 25, 50, 75, 100], [0.0, 0.25, 0.5, 0.75, 1.0], threshold=0.6)
    assert ramp == {"steps_to_threshold": 75, "auc": pytest.approx(0.5)}
    # uneven spacing: area 1 * (0 + 1) / 2 + 2 * (1 + 1) / 2 = 2.5 over 3 steps; first >= 0.9 at step 1
    assert learning_curve_summary([0, 1, 3], [0.0, 1.0, 1.0], 0.9) == {"steps_to_threshold": 1,
                                                                       "auc": pytest.approx(2.5 / 3)}
    assert learning_curve_summary([5, 7], [0.2, 0.4], threshold=0.5) == {"steps_to_threshold": None,
                                                                         "auc": pytest.approx(0.3)}


@pytest.mark.parametrize("steps, values, message", [
    ([0], [1.0], "same length >= 2"),
    ([0, 1, 2], [0.0, 1.0], "same length >= 2"),
    ([0, 2, 2], [0.0, 0.5, 1.0], "strictly increasing"),
    ([3, 1], [0.0, 1.0], "strictly increasing"),
    ([0, 1], [0.0, math.nan], "finite"),
])
def test_learning_curve_summary_errors(steps, values, message):
    with pytest.raises(ValueError, match=message):
        learning_curve_summary(steps, values, threshold=0.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(shots=0), "shots must be a positive int"),
    (dict(steps=2.5), "steps must be a positive int"),
    (dict(eval_every=0), "eval_every must be a positive int"),
    (dict(rank=-1), "rank must be a positive int"),
    (dict(batch_size=True), "batch_size must be a positive int"),
    (dict(n_query=0), "n_query must be a positive int"),
    (dict(lr=0.0), "lr must be a positive finite number"),
    (dict(lr=math.inf), "lr must be a positive finite number"),
    (dict(threshold=math.nan), "threshold must be a finite number"),
    (dict(targets=()), "targets must be a non-empty tuple"),
    (dict(targets="bottleneck"), "targets must be a non-empty tuple"),
    (dict(loss="mse"), "loss must be one of"),
    (dict(seed=-1), "seed must be a non-negative int"),
])
def test_few_shot_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FewShotConfig(**kwargs)


def test_few_shot_leaves_the_model_unchanged_starts_at_the_base_model_and_improves_an_easy_task():
    model = _tiny(n_colours=3).train(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = few_shot(model, [("gravity",)], EASY_CONFIG, spec=EASY_SPEC)
    assert isinstance(result, FewShotResult) and result.steps == (0, 10, 20, 30, 40)
    assert model.training is False and all(p.requires_grad for p in model.parameters())
    assert {n for n, _ in model.named_parameters()} == set(before)  # no adapters injected into the caller's model
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # step 0 is the base model (LoRA B = 0) on the query set of the other seed stream
    query = fixed_set([("gravity",)], EASY_CONFIG.n_query, EASY_CONFIG.seed + QUERY_SEED_OFFSET, spec=EASY_SPEC)
    base = evaluate_set(model, query)
    assert (result.iou[0], result.accuracy[0]) == (base["iou"], base["accuracy"])
    assert result.iou[-1] > result.iou[0] + 0.1, result.iou
    summary = learning_curve_summary(result.steps, result.iou, EASY_CONFIG.threshold)
    assert (result.steps_to_threshold, result.auc, result.threshold) == (summary["steps_to_threshold"],
                                                                         summary["auc"], 0.5)
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    assert result.to_dict()["iou"] == list(result.iou)


def test_adapt_trains_only_the_lora_parameters():
    model = _tiny(n_colours=3)
    adapted = lora_copy(model, EASY_CONFIG)
    start = {n: p.detach().clone() for n, p in adapted.named_parameters()}
    support = fixed_set([("gravity",)], 16, seed=0, spec=EASY_SPEC)
    adapt(adapted, support, fixed_set([("gravity",)], 4, seed=1, spec=EASY_SPEC),
          FewShotConfig(steps=5, eval_every=5, lr=3e-2, rank=4))
    changed = {n for n, p in adapted.named_parameters() if not torch.equal(p, start[n])}
    lora_b = {n for n in start if ".lora_B." in n}
    assert lora_b and lora_b <= changed  # B starts at zero and moves
    assert all(".lora_A." in n or ".lora_B." in n for n in changed)
    base = dict(model.named_parameters())
    for n, p in adapted.named_parameters():  # the wrapped copy's base weights still equal the caller's
        if ".lora_" not in n:
            name = n.removeprefix("base_model.model.").replace(".base_layer.", ".")
            assert torch.equal(p, base[name]), n


def test_few_shot_is_deterministic_for_a_seed_and_reads_each_sample_program():
    model, tasks = _tiny(n_colours=3), [("gravity",), ("flip_h", "rotate")]
    seen = []  # (grids, program) of every forward call; the hook is deep-copied with the model
    hook = model.register_forward_pre_hook(lambda module, args: seen.append((args[0].clone(), args[1].clone())))
    config = FewShotConfig(shots=8, steps=7, eval_every=3, n_query=8, batch_size=5, lr=3e-2)
    first = few_shot(model, tasks, config, spec=EASY_SPEC)
    hook.remove()
    assert first.steps == (0, 3, 6, 7)  # every eval_every steps and the last
    evals, train = [seen[i] for i in (0, 4, 8, 10)], [seen[i] for i in (1, 2, 3, 5, 6, 7, 9)]
    assert len(seen) == 7 + 4 and [len(g) for g, _ in evals] == [16] * 4  # the query set: 2 tasks x 8
    assert all(len(g) <= 5 for g, _ in train)
    assert {tuple(r) for _, p in seen for r in p.tolist()} == {tuple(program(t).tolist()) for t in tasks}
    # every training sample is a (grid, its own program) pair of the support set
    support = fixed_set(tasks, 8, config.seed, spec=EASY_SPEC)
    pairs = {(g.numpy().tobytes(), p.numpy().tobytes()) for g, p in zip(support["input"], support["program"])}
    assert all((g.numpy().tobytes(), p.numpy().tobytes()) in pairs for gs, ps in train for g, p in zip(gs, ps))
    # the query grids are not the support grids
    assert not {g.numpy().tobytes() for g in evals[0][0]} & {g.numpy().tobytes() for g in support["input"]}
    assert few_shot(model, tasks, config, spec=EASY_SPEC) == first
    assert few_shot(model, tasks, replace(config, seed=1), spec=EASY_SPEC).iou != first.iou
    assert few_shot(model, tasks, replace(config, loss="iou"), spec=EASY_SPEC).iou != first.iou
