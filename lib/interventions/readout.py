"""What head interventions measure at the last position: a linear probe on the residual stream and the
log-probability of each emotion's continuation tokens.

>>> ro = Readout(0, torch.zeros(2, 3), torch.tensor([0.0, 1.0]), ["a", "b"])
>>> readout_metrics(torch.zeros(1, 3), None, ro)["probs"].round(decimals=3)
tensor([[0.2690, 0.7310]])
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lib.geometry.probes import class_weights

__all__ = ["Readout", "class_index", "readout_from_probe", "continuation_ids", "readout_metrics", "final_logits"]


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
    """``probs`` [rows, classes] of the probe on ``resid`` [rows, d]; ``logprob`` [rows, emotions] from ``logits``."""
    out = {"probs": torch.softmax(resid.float() @ readout.weight.to(resid.device).T + readout.bias.to(resid.device), -1)}
    if readout.needs_logits:
        lp = torch.log_softmax(logits.float(), -1)
        out["logprob"] = torch.stack([torch.logsumexp(lp[:, ids.to(lp.device)], -1)
                                      for ids in readout.continuations.values()], -1)
    return out


def final_logits(hf, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final (post-norm) hidden states [rows, d_model], with the model's logit soft-capping."""
    logits = hf.get_output_embeddings()(hidden)
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
