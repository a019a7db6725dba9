"""What head interventions measure at the last position: a linear probe on the residual stream (each
class's probability and its log-odds, log p - log(1 - p)) and the log-probability of each emotion's
continuation tokens.

Effects are read on the log-odds: a probability near 0 or 1 hides a large change in the probe's logit
(and shrinks the gradients attribution patching uses); the log-odds does not saturate.

>>> ro = Readout(0, torch.zeros(2, 3), torch.tensor([0.0, 1.0]), ["a", "b"])
>>> m = readout_metrics(torch.zeros(1, 3), None, ro)
>>> m["probs"].round(decimals=3), m["logodds"].round(decimals=3)
(tensor([[0.2690, 0.7310]]), tensor([[-1.,  1.]]))
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lib.geometry.probes import class_weights

__all__ = ["Readout", "class_index", "readout_from_probe", "continuation_ids", "readout_metrics", "class_logodds", "METRICS", "metric_changes",
           "final_logits"]


@dataclass
class Readout:
    """What a sweep measures at the last position: a linear probe on ``blocks.{layer}.hook_resid_post``
    (softmax over ``classes``) and, if ``continuations`` is given, the log-probability that the next
    token is any of each emotion's continuation tokens (logsumexp of their log-softmax)."""

    layer: int
    weight: torch.Tensor  # [classes, d_model], the scaler folded in
    bias: torch.Tensor  # [classes]
    classes: list[str]
    continuations: dict[str, torch.Tensor] = field(default_factory=dict)  # emotion -> token ids

    @property
    def needs_logits(self) -> bool:
        return bool(self.continuations)


def class_index(readout: Readout, cls: str) -> int:
    """The probe's index of class ``cls`` (an error lists the probe's classes)."""
    if cls not in readout.classes:
        raise ValueError(f"the probe has no class {cls!r}; classes: {readout.classes}")
    return readout.classes.index(cls)


def readout_from_probe(pipeline, layer: int, continuations: dict[str, torch.Tensor] | None = None) -> Readout:
    """A ``Readout`` from a fitted ``lib.geometry.probes`` pipeline (StandardScaler + LogisticRegression, no PCA)."""
    steps = dict(pipeline.steps)
    if set(steps) != {"scale", "logreg"}:
        raise ValueError(f"readout needs a scale+logreg probe, got steps {list(steps)}")
    sc, lr = steps["scale"], steps["logreg"]
    coef, icpt = class_weights(lr)
    coef, icpt = np.asarray(coef, dtype=np.float64), np.asarray(icpt, dtype=np.float64)
    w = coef / sc.scale_[None, :]
    b = icpt - w @ sc.mean_
    return Readout(layer=int(layer), weight=torch.tensor(w, dtype=torch.float32),
                   bias=torch.tensor(b, dtype=torch.float32), classes=[str(c) for c in lr.classes_],
                   continuations=dict(continuations or {}))


def continuation_ids(tokenizer, words: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Per emotion, the unique first token ids of its continuation words (written with their leading space)."""
    out = {}
    for emotion, ws in words.items():
        ids = sorted({tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ws})
        out[emotion] = torch.tensor(ids, dtype=torch.long)
    return out


def readout_metrics(resid: torch.Tensor, logits: torch.Tensor | None, readout: Readout) -> dict[str, torch.Tensor]:
    """``probs`` and ``logodds`` [rows, classes] of the probe on ``resid`` [rows, d] (log-odds of class c:
    its logit minus the logsumexp of the other classes' logits, = log p_c - log(1 - p_c) without
    rounding p_c first); ``logprob`` [rows, emotions] from ``logits``."""
    z = resid.float() @ readout.weight.to(resid.device).T + readout.bias.to(resid.device)
    out = {"probs": torch.softmax(z, -1), "logodds": class_logodds(z)}
    if readout.needs_logits:
        lp = torch.log_softmax(logits.float(), -1)
        out["logprob"] = torch.stack([torch.logsumexp(lp[:, ids.to(lp.device)], -1)
                                      for ids in readout.continuations.values()], -1)
    return out


METRICS = ("probe_logodds", "probe_prob", "logprob")


def metric_changes(res: dict, clean: dict, readout: Readout, cls: str) -> dict[str, np.ndarray]:
    """Per ``METRICS`` name, intervened minus clean for class / emotion ``cls``: ``res`` holds readout metrics
    [..., n, classes or emotions] (e.g. per head or set), ``clean`` the clean run's [n, ...]; returns [..., n].
    ``logprob`` only when both have it.

    >>> ro = Readout(0, torch.zeros(2, 1), torch.zeros(2), ["a", "b"])
    >>> clean = readout_metrics(torch.zeros(1, 1), None, ro)
    >>> res = {k: v.numpy()[None] + 1 for k, v in clean.items()}
    >>> {k: v.tolist() for k, v in metric_changes(res, clean, ro, "b").items()}
    {'probe_logodds': [[1.0]], 'probe_prob': [[1.0]]}
    """
    ci = class_index(readout, cls)
    pairs = {"probe_logodds": ("logodds", ci), "probe_prob": ("probs", ci)}
    if "logprob" in res and "logprob" in clean:
        pairs["logprob"] = ("logprob", list(readout.continuations).index(cls))
    return {name: np.asarray(res[key])[..., i] - np.asarray(clean[key])[:, i] for name, (key, i) in pairs.items()}


def class_logodds(logits: torch.Tensor) -> torch.Tensor:
    """[rows, classes]: log p_c - log(1 - p_c) of softmax(``logits``), as logit_c - logsumexp_{j != c} logit_j.

    >>> class_logodds(torch.tensor([[0.0, 0.0, 0.0]])).round(decimals=4)  # p = 1/3: log(1/2)
    tensor([[-0.6931, -0.6931, -0.6931]])
    """
    n = logits.shape[-1]
    if n < 2:
        raise ValueError(f"log-odds need at least 2 classes, got logits of shape {tuple(logits.shape)}")
    others = logits.unsqueeze(-2).expand(*logits.shape[:-1], n, n)
    mask = torch.eye(n, dtype=torch.bool, device=logits.device)
    return logits - torch.logsumexp(others.masked_fill(mask, float("-inf")), -1)


def final_logits(hf, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final (post-norm) hidden states [rows, d_model], with the model's logit soft-capping."""
    logits = hf.get_output_embeddings()(hidden)
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
