"""The emotion-label objective a fine-tune trains and every phase-06 measurement scores.

A GoEmotions comment becomes the prompt ``"Text: {text}\\nEmotion:"`` and its label the answer
``" gratitude"`` (leading space). Training minimises the mean cross-entropy over the answer's tokens;
the *scored* objective is ``-log p(first answer token | prompt)`` over the full vocabulary at the
prompt's last position, with accuracy the argmax over the labels' first tokens.

Logits are computed only where they are read: a pre-hook on the output embedding (``lm_head``) gathers
the hidden states of the wanted positions before the unembedding, so the model's own forward (final
soft-capping included) runs unchanged on fewer positions.

>>> from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
>>> tok = build_tiny_tokenizer()
>>> ex = encode_examples(tok, ["Thank you so much!", "I am furious."], ["gratitude", "anger"])
>>> tok.decode(ex.prompts[0]), tok.decode(ex.answers[1]), len(ex)
('Text: Thank you so much!\\nEmotion:', ' anger', 2)
>>> s = score(build_tiny_model("tiny-llama"), ex)
>>> s["loss"].shape, s["correct"].dtype
((2,), dtype('bool'))
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from lib.emotions import EMOTIONS
from lib.errors import UserError
from lib.stats.bootstrap import mean_ci

__all__ = ["PROMPT_TEMPLATE", "ObjectiveError", "Examples", "Batch", "label_tokens", "encode_examples",
           "batch_tensors", "prompt_tensors", "logits_at", "answer_loss", "score", "summarize_scores"]

PROMPT_TEMPLATE = "Text: {text}\nEmotion:"
IGNORE = -100  # label value of positions that carry no loss (Hugging Face's convention)


class ObjectiveError(UserError, ValueError):
    """Bad input to the objective: labels, texts or settings that cannot form examples."""


@dataclass(frozen=True, eq=False)
class Examples:
    """Tokenized prompts and answers; row i's first answer token ``targets[i]`` follows ``prompts[i]``."""

    prompts: list[list[int]]   # ids ending right after "Emotion:" (BOS first where the model uses one)
    answers: list[list[int]]   # ids of " <label>"
    labels: list[str]
    targets: list[int]         # first answer token id per row
    label_set: tuple[str, ...] = EMOTIONS
    label_ids: dict = field(default_factory=dict)  # label -> answer token ids, for every label of label_set
    texts: list[str] = field(default_factory=list)  # the comments as given (before truncation)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def prompt_lens(self) -> np.ndarray:
        """[n] prompt lengths in tokens."""
        return np.array([len(p) for p in self.prompts], dtype=np.int64)

    def subset(self, idx) -> "Examples":
        """The rows ``idx`` (in that order) as their own ``Examples``."""
        idx = [int(i) for i in np.asarray(idx).ravel()]
        pick = lambda xs: [xs[i] for i in idx] if xs else []  # noqa: E731
        return Examples(pick(self.prompts), pick(self.answers), pick(self.labels), pick(self.targets),
                        self.label_set, dict(self.label_ids), pick(self.texts))

    def sha256(self) -> str:
        """Digest of the token ids, labels and label set: what a checkpoint or manifest must match."""
        blob = json.dumps([self.prompts, self.answers, self.labels, list(self.label_set)], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


class Batch(NamedTuple):
    """Right-padded prompt + answer rows; ``labels`` is -100 except at the answer tokens."""

    input_ids: torch.Tensor       # [batch, pos]
    attention_mask: torch.Tensor  # [batch, pos]
    labels: torch.Tensor          # [batch, pos]: input_ids at answer positions, -100 elsewhere


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def label_tokens(tokenizer, labels: Sequence[str] = EMOTIONS) -> dict[str, list[int]]:
    """Each label's answer token ids (``" " + label``); an error unless the first tokens are distinct,
    because the scored objective reads only the first token.

    >>> from lib.models.tiny import build_tiny_tokenizer
    >>> len(label_tokens(build_tiny_tokenizer())["anger"])
    2
    """
    labels = list(labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ObjectiveError(f"labels must be at least two distinct strings, got {labels}")
    out = {lab: _ids(tokenizer, " " + lab) for lab in labels}
    empty = [lab for lab, ids in out.items() if not ids]
    if empty:
        raise ObjectiveError(f"label {empty[0]!r} tokenizes to nothing")
    first: dict[int, str] = {}
    for lab, ids in out.items():
        if ids[0] in first:
            raise ObjectiveError(
                f"labels {first[ids[0]]!r} and {lab!r} share their first token {ids[0]} "
                f"({tokenizer.decode([ids[0]])!r}); the scored objective reads the first answer token, so choose "
                f"labels whose first tokens differ")
        first[ids[0]] = lab
    return out


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    """``text`` cut after its first ``max_tokens`` tokens (as tokenized alone), at a character boundary."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids = enc["input_ids"]
    if len(ids) <= max_tokens:
        return text
    if tokenizer.is_fast:
        return text[:enc["offset_mapping"][max_tokens - 1][1]]
    return tokenizer.decode(ids[:max_tokens])


def encode_examples(tokenizer, texts: Sequence[str], labels: Sequence[str], *, max_text_tokens: int = 48,
                    prepend_bos: bool = False, label_set: Sequence[str] = EMOTIONS) -> Examples:
    """Prompt and answer ids for each (comment, label); the comment (newlines made spaces) is cut to
    ``max_text_tokens`` tokens. BOS starts the prompt when ``prepend_bos`` or the tokenizer adds one itself.

    >>> from lib.models.tiny import build_tiny_tokenizer
    >>> ex = encode_examples(build_tiny_tokenizer(), ["I am sorry for the delay"], ["apology"], max_text_tokens=3)
    >>> build_tiny_tokenizer().decode(ex.prompts[0])
    'Text: I am sorry\\nEmotion:'
    """
    texts, labels = list(texts), list(labels)
    if isinstance(max_text_tokens, bool) or not isinstance(max_text_tokens, int) or max_text_tokens < 1:
        raise ObjectiveError(f"max_text_tokens={max_text_tokens!r}; valid values are integers >= 1")
    if not texts or len(texts) != len(labels):
        raise ObjectiveError(f"need one label per text and at least one row; got {len(texts)} texts and "
                             f"{len(labels)} labels")
    answers = label_tokens(tokenizer, label_set)
    bos = [tokenizer.bos_token_id] if (prepend_bos or _adds_bos(tokenizer)) else []
    if bos == [None]:
        raise ObjectiveError("prepend_bos=True but the tokenizer has no BOS token")
    prompts, ans, targets = [], [], []
    for i, (text, lab) in enumerate(zip(texts, labels)):
        if lab not in answers:
            raise ObjectiveError(f"row {i}: label {lab!r} is not one of {list(answers)}")
        if not isinstance(text, str) or not text.strip():
            raise ObjectiveError(f"row {i}: text {text!r} is empty; every row needs a comment")
        clean = " ".join(text.split())
        prompts.append(bos + _ids(tokenizer, PROMPT_TEMPLATE.format(text=_truncate(tokenizer, clean,
                                                                                    max_text_tokens))))
        ans.append(list(answers[lab]))
        targets.append(answers[lab][0])
    return Examples(prompts, ans, labels, targets, tuple(label_set), answers, texts)


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def batch_tensors(examples: Examples, idx, pad_id: int) -> Batch:
    """Rows ``idx`` as right-padded prompt + answer tensors, with -100 labels except at answer tokens.

    >>> ex = Examples([[5, 6], [7]], [[9], [8, 3]], ["a", "b"], [9, 8])
    >>> b = batch_tensors(ex, [0, 1], pad_id=0); b.input_ids.tolist(), b.labels.tolist()
    ([[5, 6, 9], [7, 8, 3]], [[-100, -100, 9], [-100, 8, 3]])
    """
    idx = [int(i) for i in np.asarray(idx).ravel()]
    ids, mask = _pad([examples.prompts[i] + examples.answers[i] for i in idx], pad_id)
    labels = torch.full_like(ids, IGNORE)
    for row, i in enumerate(idx):
        p, a = len(examples.prompts[i]), len(examples.answers[i])
        labels[row, p:p + a] = ids[row, p:p + a]
    return Batch(ids, mask, labels)


def prompt_tensors(examples: Examples, idx, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``idx``'s prompts right-padded: (input_ids [b, pos], attention_mask [b, pos], last index [b])."""
    idx = [int(i) for i in np.asarray(idx).ravel()]
    ids, mask = _pad([examples.prompts[i] for i in idx], pad_id)
    return ids, mask, mask.sum(1) - 1


@contextmanager
def _gather_before_unembed(hf, positions: torch.Tensor):
    """Within the block, the output embedding sees only hidden[b, positions[b, k]]: [b, k, d_model]."""
    def pre_hook(_module, args):
        hidden = args[0]  # [batch, pos, d_model]
        index = positions.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
        return (hidden.gather(1, index), *args[1:])

    handle = hf.get_output_embeddings().register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def logits_at(hf, input_ids, attention_mask, positions: torch.Tensor) -> torch.Tensor:
    """Logits [batch, k, vocab] at ``positions`` [batch, k] of each row: one forward, unembedding only there."""
    dev = hf.get_input_embeddings().weight.device
    with _gather_before_unembed(hf, positions):
        out = hf(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev), use_cache=False)
    return out.logits


def answer_loss(hf, batch: Batch) -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over the batch's answer tokens, their count): the training loss, one forward.

    The logit at position p predicts token p + 1, so answer token p is read at p - 1.
    """
    want = batch.labels[:, 1:] != IGNORE  # [b, pos - 1]: positions whose next token is an answer token
    k = int(want.sum(1).max())
    order = torch.argsort((~want).to(torch.int8), dim=1, stable=True)[:, :k]  # answer-reading positions first
    valid = torch.gather(want, 1, order)
    targets = torch.where(valid, torch.gather(batch.labels[:, 1:], 1, order), IGNORE)
    logits = logits_at(hf, batch.input_ids, batch.attention_mask, order)
    n = int(valid.sum())
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             targets.reshape(-1).to(logits.device), ignore_index=IGNORE,
                                             reduction="sum") / n
    return loss, n


@torch.no_grad()
def score(hf, examples: Examples, *, batch_size: int = 32, pad_id: int = 0, progress=None) -> dict[str, np.ndarray]:
    """The scored objective per row, in row order: ``loss`` [n] = -log p(first answer token | prompt) (full
    vocabulary), ``correct`` [n] (argmax over the labels' first tokens is the row's label), ``pred`` [n] (that
    label) and ``label_logprob`` [n, labels] (log p of each label's first token, ``label_set`` order).

    Rows run in batches sorted by prompt length (less padding); one forward per batch; ``progress(k)``
    after each batch of k rows. The model is put in eval mode.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ObjectiveError(f"batch_size={batch_size!r}; valid values are integers >= 1")
    hf.eval()
    n = len(examples)
    label_set = list(examples.label_set)
    first = torch.tensor([examples.label_ids[lab][0] for lab in label_set])
    loss, lab_lp = np.empty(n, dtype=np.float64), np.empty((n, len(label_set)), dtype=np.float64)
    order = np.argsort(examples.prompt_lens, kind="stable")
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        ids, mask, last = prompt_tensors(examples, idx, pad_id)
        logp = torch.log_softmax(logits_at(hf, ids, mask, last[:, None])[:, 0].float(), dim=-1).cpu()
        tgt = torch.tensor([examples.targets[i] for i in idx])
        loss[idx] = (-logp.gather(1, tgt[:, None])[:, 0]).double().numpy()
        lab_lp[idx] = logp[:, first].double().numpy()
        if progress is not None:
            progress(len(idx))
    pred = np.asarray(label_set, dtype=object)[lab_lp.argmax(1)]
    correct = pred == np.asarray(examples.labels, dtype=object)
    return {"loss": loss, "correct": correct.astype(bool), "pred": pred.astype(str), "label_logprob": lab_lp}


def summarize_scores(scores: dict, *, n_boot: int = 2000, seed: int = 0, groups=None) -> dict:
    """Mean loss and accuracy of ``score``'s output with 95% percentile bootstrap intervals
    (``lib.stats.bootstrap.mean_ci``; ``groups`` resamples whole text groups).

    >>> summarize_scores({"loss": np.array([1.0, 3.0]), "correct": np.array([True, False])})["accuracy"]["mean"]
    0.5
    """
    return {"loss": mean_ci(scores["loss"], n_boot=n_boot, seed=seed, groups=groups),
            "accuracy": mean_ci(np.asarray(scores["correct"], dtype=np.float64), n_boot=n_boot, seed=seed,
                                groups=groups)}
