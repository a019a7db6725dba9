"""Evaluation of a trained grid model (``lib.synthetic.models.GridModel``): predictions on a fixed set, exact-grid
accuracy and hard IoU overall and per task, zero-shot scores on unseen compositions, and few-shot LoRA adaptation
to new compositions summarised by its learning curve.

A fixed set is ``lib.synthetic.data.fixed_set``'s dict: ``input``, ``target`` long [N, 8, 8], ``primitives``
float [N, P], ``program`` long [N, MAX_LENGTH], ``task`` long [N] (index into the task list). The model is called
as ``model(input, program)`` and returns ``GridOutput`` (or a mapping) with ``logits`` [B, C, 8, 8] and ``h``
[B, d_bottleneck].

Metrics come from ``lib.synthetic.losses``: exact-grid accuracy (every cell right) and hard IoU over the
non-background cells (1 when prediction and target are both all background), each a mean over grids.

Few-shot adaptation (``few_shot``): a deep copy of the model gets LoRA adapters (``add_lora``; B = 0, so step 0 is
the base model), and only the adapters are trained with AdamW (torch defaults besides ``lr``) on a support set of
``shots`` samples per task, in minibatches of a fresh permutation of the support set each epoch. The query set
(``n_query`` per task, a different seed stream, so disjoint grids) is scored at step 0, every ``eval_every``
steps and at the last step. Learning curve summary over the query IoU:

- ``steps_to_threshold``: the first evaluated step whose value is >= ``threshold`` (None if never);
- ``auc``: trapezoidal area under (steps, values) divided by ``steps[-1] - steps[0]``, the curve's mean height
  (a constant curve v gives v).

>>> learning_curve_summary([0, 10, 20], [0.0, 0.5, 1.0], threshold=0.5)
{'steps_to_threshold': 10, 'auc': 0.5}
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lib.synthetic.data import fixed_set
from lib.synthetic.losses import TASK_LOSSES, grid_accuracy, grid_iou, task_loss
from lib.synthetic.models import DEFAULT_LORA_TARGETS, add_lora
from lib.synthetic.tasks import GridSpec

__all__ = ["QUERY_SEED_OFFSET", "predict", "evaluate_set", "zero_shot", "learning_curve_summary", "FewShotConfig",
           "FewShotResult", "lora_copy", "eval_steps", "adapt", "few_shot"]

QUERY_SEED_OFFSET = 1_000_003  # query set seed = config.seed + this: grids apart from the support set's
_FIXED_KEYS = ("input", "target", "program", "task")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def _check_fixed(fixed, keys=_FIXED_KEYS) -> int:
    """The number of samples N of a fixed set, after checking it has ``keys`` with one leading dimension N."""
    if not isinstance(fixed, Mapping):
        raise ValueError(f"fixed must be a dict from lib.synthetic.data.fixed_set; got {type(fixed).__name__}")
    missing = [k for k in keys if k not in fixed]
    if missing:
        raise ValueError(f"fixed set lacks keys {missing}; it needs {list(keys)} (lib.synthetic.data.fixed_set)")
    sizes = {k: int(fixed[k].shape[0]) for k in keys}
    if len(set(sizes.values())) != 1 or not next(iter(sizes.values())):
        raise ValueError(f"fixed set tensors must share one non-zero leading dimension N; got {sizes}")
    return next(iter(sizes.values()))


def _device(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; the CPU for a model without tensors."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def predict(model: nn.Module, fixed: dict, *, batch_size: int = 512) -> dict:
    """``logits`` float [N, C, 8, 8] and ``h`` float [N, d_bottleneck] (on the CPU) of ``model(input, program)``
    over a fixed set, in eval mode under ``torch.no_grad``; the model's train/eval mode is restored after.

    >>> from lib.synthetic.models import GridModel, ModelConfig
    >>> model = GridModel(ModelConfig(n_primitives=6, d_model=8, n_layers=1, n_heads=2, d_bottleneck=4))
    >>> out = predict(model, fixed_set([("rotate",), ("flip_h",)], 3, seed=0), batch_size=4)
    >>> tuple(out["logits"].shape), tuple(out["h"].shape), model.training
    ((6, 6, 8, 8), (6, 4), True)
    """
    n, batch_size = _check_fixed(fixed, ("input", "program")), _positive_int("batch_size", batch_size)
    device, was_training = _device(model), model.training
    logits, h = [], []
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                part = slice(start, start + batch_size)
                out = model(fixed["input"][part].to(device), fixed["program"][part].to(device))
                logits.append(out["logits"].float().cpu())
                h.append(out["h"].float().cpu())
    finally:
        model.train(was_training)
    return {"logits": torch.cat(logits), "h": torch.cat(h)}


def evaluate_set(model: nn.Module, fixed: dict, *, batch_size: int = 512) -> dict:
    """Exact-grid ``accuracy`` and mean hard ``iou`` of ``model`` on a fixed set, and ``per_task``: a list of
    ``{"task", "n", "accuracy", "iou"}`` per task index present, in increasing order.

    >>> from lib.synthetic.models import GridModel, ModelConfig
    >>> model = GridModel(ModelConfig(n_primitives=6, d_model=8, n_layers=1, n_heads=2, d_bottleneck=4))
    >>> scores = evaluate_set(model, fixed_set([("rotate",), ("flip_h",)], 3, seed=0))
    >>> sorted(scores), [row["task"] for row in scores["per_task"]], 0 <= scores["iou"] <= 1
    (['accuracy', 'iou', 'per_task'], [0, 1], True)
    """
    _check_fixed(fixed)
    logits = predict(model, fixed, batch_size=batch_size)["logits"]
    target, task = fixed["target"].cpu(), fixed["task"].cpu()
    exact = grid_accuracy(logits, target, per_grid=True).double()  # [N]
    iou = grid_iou(logits, target, per_grid=True)  # [N] float64
    per_task = [{"task": int(t), "n": int((task == t).sum()), "accuracy": float(exact[task == t].mean()),
                 "iou": float(iou[task == t].mean())} for t in torch.unique(task)]
    return {"accuracy": float(exact.mean()), "iou": float(iou.mean()), "per_task": per_task}


def zero_shot(model: nn.Module, tasks, *, n_per_task: int, seed: int, spec: GridSpec = GridSpec(),
              batch_size: int = 512) -> dict:
    """``evaluate_set`` on ``fixed_set(tasks, n_per_task, seed, spec=spec)`` (the unseen length-3 compositions),
    with ``tasks`` added: the task names in the order of the ``per_task`` indices.

    >>> from lib.synthetic.models import GridModel, ModelConfig
    >>> model = GridModel(ModelConfig(n_primitives=6, d_model=8, n_layers=1, n_heads=2, d_bottleneck=4))
    >>> zero_shot(model, [("rotate", "shift", "gravity")], n_per_task=2, seed=0)["tasks"]
    [['rotate', 'shift', 'gravity']]
    """
    tasks = [tuple(t) for t in tasks]
    scores = evaluate_set(model, fixed_set(tasks, n_per_task, seed, spec=spec), batch_size=batch_size)
    return {**scores, "tasks": [list(t) for t in tasks]}


def learning_curve_summary(steps: Sequence[int], values: Sequence[float], threshold: float) -> dict:
    """``steps_to_threshold`` (first step with value >= threshold, or None) and ``auc`` (trapezoidal area over
    ``steps[-1] - steps[0]``) of a curve; ``steps`` strictly increasing, as many as ``values``, at least 2.

    >>> learning_curve_summary([0, 5, 10], [0.2, 0.2, 0.2], threshold=0.9)
    {'steps_to_threshold': None, 'auc': 0.2}
    """
    steps, values = list(steps), [float(v) for v in values]
    if len(steps) != len(values) or len(steps) < 2:
        raise ValueError(f"steps and values must have the same length >= 2; got {len(steps)} and {len(values)}")
    if any(b <= a for a, b in zip(steps[:-1], steps[1:])):
        raise ValueError(f"steps must be strictly increasing; got {steps}")
    if not all(math.isfinite(v) for v in values) or not math.isfinite(threshold):
        raise ValueError(f"values and threshold must be finite; got values {values}, threshold {threshold}")
    area = sum((b - a) * (u + v) / 2 for a, b, u, v in zip(steps[:-1], steps[1:], values[:-1], values[1:]))
    hit = next((s for s, v in zip(steps, values) if v >= threshold), None)
    return {"steps_to_threshold": None if hit is None else int(hit), "auc": float(area / (steps[-1] - steps[0]))}


@dataclass(frozen=True, kw_only=True)
class FewShotConfig:
    """Few-shot LoRA adaptation: ``shots`` support samples per task, ``steps`` AdamW steps at ``lr`` on minibatches
    of ``batch_size`` (fewer when the support set is smaller), LoRA ``rank`` on the nn.Linear modules ``targets``,
    the query set (``n_query`` per task) scored every ``eval_every`` steps; ``threshold`` on the query IoU;
    ``loss`` a ``lib.synthetic.losses.task_loss`` kind; ``seed`` draws the sets, the adapters and the batches.

    >>> FewShotConfig(steps=5, eval_every=2).steps
    5
    """

    shots: int = 16
    steps: int = 60
    lr: float = 1e-2
    rank: int = 4
    targets: tuple = DEFAULT_LORA_TARGETS
    eval_every: int = 10
    threshold: float = 0.5
    n_query: int = 32
    batch_size: int = 32
    loss: str = "ce"
    seed: int = 0

    def __post_init__(self):
        for name in ("shots", "steps", "rank", "eval_every", "n_query", "batch_size"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a positive finite number; got {self.lr!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number (a query IoU, in [0, 1]); got {self.threshold!r}")
        if isinstance(self.targets, str) or not isinstance(self.targets, (tuple, list)) or not self.targets \
                or not all(isinstance(t, str) for t in self.targets):
            raise ValueError(f"targets must be a non-empty tuple of nn.Linear module names, e.g. "
                             f"{DEFAULT_LORA_TARGETS}; got {self.targets!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.loss not in TASK_LOSSES:
            raise ValueError(f"loss must be one of {TASK_LOSSES}; got {self.loss!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {self.seed!r}")


@dataclass(frozen=True)
class FewShotResult:
    """The query learning curve of a few-shot adaptation (``steps`` from 0, ``iou`` and ``accuracy`` at each) and
    its ``learning_curve_summary`` on the IoU at ``threshold``."""

    steps: tuple[int, ...]
    iou: tuple[float, ...]
    accuracy: tuple[float, ...]
    steps_to_threshold: int | None
    auc: float
    threshold: float

    def to_dict(self) -> dict:
        """A JSON-able dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def lora_copy(model: nn.Module, config: FewShotConfig) -> nn.Module:
    """A deep copy of ``model`` wrapped with LoRA adapters (``config.rank``, ``config.targets``, seed
    ``config.seed``); only the adapters require gradients. ``model`` is left as it was."""
    adapted = add_lora(copy.deepcopy(model), config.rank, config.targets, seed=config.seed)
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    if not trainable or any(".lora_A." not in n and ".lora_B." not in n for n in trainable):
        raise ValueError(f"after add_lora only LoRA adapters should train; trainable: {trainable}")
    return adapted


def eval_steps(steps: int, eval_every: int) -> list[int]:
    """The steps at which the query set is scored: 0, every ``eval_every``, and the last.

    >>> eval_steps(25, 10)
    [0, 10, 20, 25]
    """
    return sorted({*range(0, steps + 1, eval_every), steps})


def _minibatches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` index tensors into ``0..n-1``: consecutive chunks of ``min(batch_size, n)`` of one random
    permutation per epoch (an epoch's last chunk may be smaller)."""
    size, done = min(batch_size, n), 0
    while True:
        for chunk in torch.randperm(n, generator=generator).split(size):
            if done == steps:
                return
            done += 1
            yield chunk


def adapt(adapted: nn.Module, support: dict, query: dict, config: FewShotConfig) -> FewShotResult:
    """Train the trainable parameters of ``adapted`` (in place; from ``lora_copy``) on the ``support`` fixed set
    for ``config.steps`` AdamW steps, scoring ``query`` with ``evaluate_set`` at ``eval_steps``."""
    n = _check_fixed(support, ("input", "target", "program"))
    _check_fixed(query)
    params = [p for p in adapted.parameters() if p.requires_grad]
    if not params:
        raise ValueError("adapted has no trainable parameters; build it with lora_copy(model, config)")
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    device, checkpoints = _device(adapted), set(eval_steps(config.steps, config.eval_every))
    batches = _minibatches(n, config.batch_size, config.steps, torch.Generator().manual_seed(config.seed))
    curve = []
    for step in range(config.steps + 1):
        if step in checkpoints:
            scores = evaluate_set(adapted, query)
            curve.append((step, scores["iou"], scores["accuracy"]))
        if step == config.steps:
            break
        index = next(batches)
        adapted.train()
        out = adapted(support["input"][index].to(device), support["program"][index].to(device))
        loss = task_loss(out["logits"], support["target"][index].to(device), kind=config.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    steps, iou, accuracy = (tuple(column) for column in zip(*curve))
    summary = learning_curve_summary(steps, iou, config.threshold)
    return FewShotResult(steps=steps, iou=iou, accuracy=accuracy, threshold=float(config.threshold), **summary)


def few_shot(model: nn.Module, tasks, config: FewShotConfig, *, spec: GridSpec = GridSpec()) -> FewShotResult:
    """LoRA few-shot adaptation of a copy of ``model`` to the compositions ``tasks``: support set
    ``fixed_set(tasks, shots, seed)``, query set ``fixed_set(tasks, n_query, seed + QUERY_SEED_OFFSET)``; see
    ``adapt``. Deterministic for a given ``config.seed`` (on the CPU); ``model`` is left unchanged.

    >>> from lib.synthetic.models import GridModel, ModelConfig
    >>> model = GridModel(ModelConfig(n_primitives=6, d_model=8, n_layers=1, n_heads=2, d_bottleneck=4))
    >>> result = few_shot(model, [("rotate", "gravity")], FewShotConfig(shots=4, steps=3, eval_every=2, n_query=4))
    >>> result.steps, len(result.iou)
    ((0, 2, 3), 3)
    """
    if not isinstance(config, FewShotConfig):
        raise ValueError(f"config must be a FewShotConfig; got {type(config).__name__}")
    support = fixed_set(tasks, config.shots, config.seed, spec=spec)
    query = fixed_set(tasks, config.n_query, config.seed + QUERY_SEED_OFFSET, spec=spec)
    return adapt(lora_copy(model, config), support, query, config)
