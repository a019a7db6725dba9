"""Metrics of generated continuations and of steering's side effects: plain functions, arrays in, floats out.

- ``distinct_n(texts, n)``: distinct n-grams / total n-grams, over the whitespace tokens of each text (n-grams
  never cross texts), pooled over all texts; 0 when there are none.
- ``continuation_nll(model, tokenizer, prompts, continuations)`` -> [n pairs]: for pair i with prompt tokens
  p [P] and continuation tokens c [C], -1/C * sum_t log softmax(model(p + c))[P + t - 1, c_t], i.e. the mean
  negative log-likelihood per continuation token conditioned on the prompt. The prompt is tokenized with the
  tokenizer's special tokens, the continuation without, each on its own (as generate() produced it). Batches
  are padded on the tokenizer's ``padding_side``; position ids count real tokens only (cumsum(mask) - 1), so
  a padded row scores as it would alone.
- ``perplexity_ratio(nll_steered, nll_unsteered)`` = exp(mean nll_steered) / exp(mean nll_unsteered).
- ``next_token_kl(logits_p, logits_q, mask)``: logits [batch, pos, vocab], mask [batch, pos] (1 = real); the
  mean over real positions of KL(softmax p || softmax q) = sum_v p_v (log p_v - log q_v), in nats.
- ``anti_steerable(before, after)``: changes d = after - before [n] of a per-input target score; the fraction
  of inputs with d < 0 (steering moved them the wrong way) with a percentile bootstrap interval
  (``lib.stats.bootstrap.mean_ci`` of the indicator), and quantiles of d.

>>> distinct_n(["a b a b"], 2)  # bigrams (a b), (b a), (a b): 2 distinct of 3
0.6666666666666666
>>> round(perplexity_ratio([1.0, 3.0], [2.0, 2.0]), 6)
1.0
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from lib.stats.bootstrap import finite_1d, mean_ci
from lib.steering.hooks import real_positions

__all__ = ["continuation_nll_ids", "distinct_n", "continuation_nll", "perplexity_ratio", "next_token_kl", "anti_steerable"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / total n-grams over the whitespace tokens of all ``texts``; 0.0 when there are none."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r}; valid values are integers >= 1")
    seen, total = set(), 0
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__} {t!r}; distinct_n needs a list of strings")
        tokens = t.split()
        grams = [tuple(tokens[j:j + n]) for j in range(len(tokens) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def _pair_ids(tokenizer, prompts: list[str], continuations: list[str]) -> list[tuple[list[int], list[int]]]:
    if len(prompts) != len(continuations):
        raise ValueError(f"prompts has {len(prompts)} items but continuations has {len(continuations)}; "
                         "they must match")
    pairs = []
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        if not isinstance(p, str) or not isinstance(c, str):
            raise ValueError(f"pair {i} is ({p!r}, {c!r}); prompts and continuations must be strings")
        p_ids = list(tokenizer(p)["input_ids"])
        c_ids = list(tokenizer(c, add_special_tokens=False)["input_ids"])
        if not p_ids or not c_ids:
            raise ValueError(f"pair {i}: prompt {p!r} gives {len(p_ids)} tokens and continuation {c!r} gives "
                             f"{len(c_ids)}; both need at least one token")
        pairs.append((p_ids, c_ids))
    return pairs


def continuation_nll(model, tokenizer, prompts: list[str], continuations: list[str], *,
                     batch_size: int = 8) -> np.ndarray:
    """Mean NLL per continuation token given the prompt, per pair: float64 [n pairs] (nats)."""
    pairs = _pair_ids(tokenizer, list(prompts), list(continuations))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither pad_token_id nor eos_token_id; set tokenizer.pad_token")
    return continuation_nll_ids(model, pairs, pad_id=pad, batch_size=batch_size)


@torch.no_grad()
def continuation_nll_ids(model, pairs, *, pad_id: int, batch_size: int = 8) -> np.ndarray:
    """``continuation_nll`` on token ids: ``pairs`` [(prompt ids, continuation ids)], both non-empty lists of
    ints (e.g. ``generate_grid``'s ``token_ids``, so a continuation that is one end-of-sequence token scores
    -log p(eos)). float64 [n pairs] (nats).

    Pairs that share a prompt share its forward pass: the prompt runs once (its last logits score each
    continuation's first token, its KV cache is repeated for up to ``batch_size`` continuations), then only the
    continuations run, right-padded with ``pad_id`` (padding is never read: it comes after every real token)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; valid values are integers >= 1")
    pairs = [(tuple(map(int, p)), list(map(int, c))) for p, c in pairs]
    for i, (p, c) in enumerate(pairs):
        if not p or not c:
            raise ValueError(f"pair {i}: {len(p)} prompt and {len(c)} continuation tokens; both need at least one")
    device = next(model.parameters()).device
    by_prompt: dict[tuple, list[int]] = {}
    for i, (p, _) in enumerate(pairs):
        by_prompt.setdefault(p, []).append(i)
    out = np.empty(len(pairs), dtype=np.float64)
    for prompt, rows in by_prompt.items():
        ids = torch.tensor([prompt], device=device)
        first = model(input_ids=ids, use_cache=True)
        first_logp = torch.log_softmax(first.logits[0, -1].double(), dim=-1)  # [vocab]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            conts = [pairs[i][1] for i in chunk]
            width = max(len(c) for c in conts)
            logp_rest = None
            if width > 1:
                cont = torch.full((len(chunk), width - 1), int(pad_id), dtype=torch.long)
                mask = torch.zeros((len(chunk), len(prompt) + width - 1), dtype=torch.long)
                mask[:, :len(prompt)] = 1
                for r, c in enumerate(conts):
                    cont[r, :len(c) - 1], mask[r, len(prompt):len(prompt) + len(c) - 1] = torch.tensor(c[:-1]), 1
                cache = copy.deepcopy(first.past_key_values)
                cache.batch_repeat_interleave(len(chunk))
                positions = torch.arange(len(prompt), len(prompt) + width - 1)[None].expand(len(chunk), -1)
                logits = model(input_ids=cont.to(device), attention_mask=mask.to(device),
                               position_ids=positions.to(device), past_key_values=cache, use_cache=True).logits
                logp_rest = torch.log_softmax(logits.double(), dim=-1)  # [b, width - 1, vocab]: predicts c_2 ..
            for r, (i, c) in enumerate(zip(chunk, conts)):
                total = -first_logp[c[0]]
                if len(c) > 1:
                    target = torch.tensor(c[1:], dtype=torch.long, device=logp_rest.device)
                    total = total - logp_rest[r, torch.arange(len(c) - 1, device=logp_rest.device), target].sum()
                out[i] = float(total) / len(c)
    return out


def perplexity_ratio(nll_steered, nll_unsteered) -> float:
    """exp(mean ``nll_steered``) / exp(mean ``nll_unsteered``): > 1 when steered text is less likely."""
    a, b = finite_1d(nll_steered, "nll_steered"), finite_1d(nll_unsteered, "nll_unsteered")
    return float(np.exp(a.mean() - b.mean()))


def next_token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over real positions (``mask`` [batch, pos] == 1) of KL(softmax p || softmax q), logits
    [batch, pos, vocab]; computed in float64."""
    logits_p, logits_q, mask = torch.as_tensor(logits_p), torch.as_tensor(logits_q), torch.as_tensor(mask)
    if logits_p.shape != logits_q.shape or logits_p.ndim != 3:
        raise ValueError(f"logits_p {tuple(logits_p.shape)} and logits_q {tuple(logits_q.shape)} must share one "
                         "shape [batch, pos, vocab]")
    if tuple(mask.shape) != tuple(logits_p.shape[:2]):
        raise ValueError(f"mask shape {tuple(mask.shape)}; valid: [batch, pos] = {tuple(logits_p.shape[:2])}")
    real = mask.to(logits_p.device).bool()
    if not real.any():
        raise ValueError("mask has no real positions (all 0); KL is undefined")
    lp = torch.log_softmax(logits_p.double(), dim=-1)
    lq = torch.log_softmax(logits_q.double(), dim=-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)  # [batch, pos]
    return float(kl[real].mean())


def anti_steerable(before, after, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Per-input change d = after - before [n] of the target score:
    {fraction_negative, ci_low, ci_high (bootstrap, ``level``), n, n_negative, mean_change,
    quantiles: {q: quantile of d}}."""
    b, a = finite_1d(before, "before"), finite_1d(after, "after")
    if a.shape != b.shape:
        raise ValueError(f"before has {b.size} values but after has {a.size}; they must pair one to one")
    d = a - b
    negative = (d < 0).astype(np.float64)
    ci = mean_ci(negative, n_boot=n_boot, seed=seed, level=level)
    return {"fraction_negative": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "n": int(d.size),
            "n_negative": int(negative.sum()), "mean_change": float(d.mean()), "level": float(level),
            "quantiles": {q: float(v) for q, v in zip(QUANTILES, np.quantile(d, QUANTILES))}}
