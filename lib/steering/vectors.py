"""Steering vectors read from the residual stream: contrast (CAA) vectors, their learning curve and controls
(saving them and exporting them to llama.cpp: ``lib.steering.vector_files``).

The read site is the output hidden state of decoder block ``layer`` (``blocks.{layer}.hook_resid_post``, the
site ``lib.steering.hooks`` edits; ``output_hidden_states[layer + 1]`` of the Hugging Face model). A text t is
tokenized as ``tokenizer(texts, padding=True)`` does (special tokens as the tokenizer adds them), with real
tokens j = 1..T_t (attention mask 1) and x_j [d_model] the block's output at token j:

- ``read="last"``: r(t) = x_{T_t}, the last real token;
- ``read="mean"``: r(t) = (1 / T_t) sum_j x_j;
- ``read="mean_after_first"``: r(t) = (1 / (T_t - 1)) sum_{j >= 2} x_j, leaving out the first real token (a BOS or
  the attention sink, whose massive activation, the same in every text, would enter a difference of two means
  weighted by 1 / T_p - 1 / T_n: a length effect, not an emotion; texts need two tokens or more).

Padding is left or right, as the tokenizer's ``padding_side`` says; padded positions are never read and position
ids count real tokens only, so a padded row reads what the text alone would (absolute-position models such as
GPT-2 need this). Reads are float32 [n, d_model] on the CPU.

For pairs (p_i, n_i), i = 1..N (positive text, negative text):

- difference d_i = r(p_i) - r(n_i) [d_model];
- contrast vector v = (1 / N) sum_i d_i (contrastive activation addition; steering-vectors' ``mean_aggregator``,
  positive minus negative);
- learning curve: v_n = the mean of d_i over the first n of a seeded permutation of the pairs (nested subsets),
  and cos(v_n, reference), reference = v by default;
- shuffled-label control: v_s = (1 / N) sum_i s_i d_i, s_i = -1 (the pair's texts swapped) with probability 1/2,
  seeded; E[v_s] = 0, so v_s is what labels carrying no information give;
- random control: a Gaussian direction scaled to ||v||, seeded.

>>> from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
>>> hf, tok = build_tiny_model("tiny-llama"), build_tiny_tokenizer()
>>> residual_reads(hf, tok, ["Thank you!", "Sorry I missed your call."], 1, read="mean").shape
torch.Size([2, 64])
>>> v = contrast_vector(hf, tok, [("Thank you!", "Why?"), ("Thanks a lot.", "This is ridiculous.")], 1)
>>> v.shape, bool(random_like(v, seed=0).norm().isclose(v.norm()))
(torch.Size([64]), True)
"""
from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import torch

from lib.activations.names import check_layers
from lib.models.archs import block_output, blocks_of
from lib.steering.hooks import real_positions

__all__ = ["READS", "residual_reads", "residual_reads_at", "pair_differences", "contrast_vector", "curve_from_differences",
           "learning_curve", "random_like", "swap_signs", "shuffled_label_mean", "shuffled_label_vector"]

READS = ("last", "mean", "mean_after_first")


class _Stop(Exception):
    """Raised by the read hook: nothing after the read block is computed."""


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
        raise ValueError(f"texts must be a non-empty list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise ValueError(f"texts[{i}] must be a non-empty string, got {text!r}")
    return list(texts)


def _check_pairs(pairs) -> list[tuple[str, str]]:
    if isinstance(pairs, str) or not isinstance(pairs, Sequence) or len(pairs) == 0:
        raise ValueError(f"pairs must be a non-empty list of (positive_text, negative_text), got "
                         f"{type(pairs).__name__}")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(t, str) and t for t in pair):
            raise ValueError(f"pairs[{i}] must be (positive_text, negative_text), two non-empty strings, got {pair!r}")
    return [(p, n) for p, n in pairs]


def _check_vector(vector, name: str = "vector") -> torch.Tensor:
    if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or not vector.is_floating_point():
        what = f"shape {tuple(vector.shape)}, dtype {vector.dtype}" if isinstance(vector, torch.Tensor) else \
            type(vector).__name__
        raise ValueError(f"{name} must be a float tensor [d_model], got {what}")
    if not bool(torch.isfinite(vector).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf entries")
    return vector


def residual_reads(model, tokenizer, texts: Sequence[str], layer: int, *, read: str = "last",
                   batch_size: int = 16) -> torch.Tensor:
    """float32 [n, d_model]: block ``layer``'s output read at each text's last real token (``read="last"``) or
    averaged over its real tokens (``read="mean"``); one forward per ``batch_size`` texts, stopped after the block.

    >>> from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
    >>> residual_reads(build_tiny_model("tiny-gpt2"), build_tiny_tokenizer(), ["Hi.", "Thank you!"], 0).shape
    torch.Size([2, 64])
    """
    _check_int(layer, "layer", 0)
    return residual_reads_at(model, tokenizer, texts, [layer], read=read, batch_size=batch_size)[layer]


@torch.no_grad()
def residual_reads_at(model, tokenizer, texts: Sequence[str], layers: Sequence[int], *, read: str = "last",
                      batch_size: int = 16) -> dict[int, torch.Tensor]:
    """``residual_reads`` at several blocks from one pass over the texts (stopped after the deepest):
    {layer: float32 [n, d_model]}."""
    texts = _check_texts(texts)
    blocks = blocks_of(model)
    layers = sorted({_check_int(x, "layer", 0) for x in layers})
    if not layers:
        raise ValueError("layers is empty; give at least one block index")
    check_layers(layers, len(blocks), type(model).__name__)
    if read not in READS:
        raise ValueError(f"read must be one of {READS}, got {read!r}")
    _check_int(batch_size, "batch_size", 1)
    if len(texts) > 1 and batch_size > 1 and tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token, so texts cannot be batched; set tokenizer.pad_token "
                         "(e.g. to its eos token) or pass batch_size=1")
    device = model.get_input_embeddings().weight.device
    box: dict[int, torch.Tensor] = {}

    def keep(module, args, output, layer: int):
        box[layer] = block_output(output)  # [batch, pos, d_model]
        if layer == layers[-1]:
            raise _Stop

    reads: dict[int, list] = {layer: [] for layer in layers}
    handles = [blocks[layer].register_forward_hook(partial(keep, layer=layer)) for layer in layers]
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True)
            mask = enc["attention_mask"]  # [batch, pos]
            empty = (mask.sum(1) == 0).nonzero().flatten().tolist()
            if empty:
                i = start + empty[0]
                raise ValueError(f"texts[{i}] = {texts[i]!r} has no tokens; every text needs at least one")
            try:
                model(input_ids=enc["input_ids"].to(device), attention_mask=mask.to(device),
                      position_ids=real_positions(mask).to(device), use_cache=False)
            except _Stop:
                pass
            for layer in layers:
                x = box.pop(layer).float()
                m = mask.to(x.device, torch.float32)
                if read == "mean_after_first":
                    m = m * (mask.cumsum(1) > 1).to(x.device, torch.float32)
                    if bool((m.sum(1) == 0).any()):
                        i = start + int((m.sum(1) == 0).nonzero()[0])
                        raise ValueError(f"texts[{i}] = {texts[i]!r} has one token; read='mean_after_first' needs two")
                if read == "last":
                    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # [batch]: the last position whose mask is 1
                    r = x[torch.arange(x.shape[0], device=x.device), last.to(x.device)]
                else:
                    r = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)
                reads[layer].append(r.cpu())
    finally:
        for h in handles:
            h.remove()
    return {layer: torch.cat(r) for layer, r in reads.items()}


def pair_differences(model, tokenizer, pairs: Sequence[tuple[str, str]], layer: int, *, read: str = "last",
                     batch_size: int = 16) -> torch.Tensor:
    """float32 [N, d_model]: d_i = r(positive_i) - r(negative_i) for each pair (module docstring)."""
    pairs = _check_pairs(pairs)
    reads = residual_reads(model, tokenizer, [p for p, _ in pairs] + [n for _, n in pairs], layer, read=read,
                           batch_size=batch_size)
    return reads[:len(pairs)] - reads[len(pairs):]


def contrast_vector(model, tokenizer, pairs: Sequence[tuple[str, str]], layer: int, *, read: str = "last",
                    batch_size: int = 16) -> torch.Tensor:
    """float32 [d_model]: the mean over pairs of r(positive) - r(negative) at block ``layer``'s output."""
    return pair_differences(model, tokenizer, pairs, layer, read=read, batch_size=batch_size).mean(0)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) in float64; NaN when either is zero."""
    a, b = a.double(), b.double()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else math.nan


def curve_from_differences(differences: torch.Tensor, sizes: Sequence[int], *, seed: int = 0,
                           reference: torch.Tensor | None = None) -> list[dict]:
    """For each n in ``sizes``: the mean of ``differences`` [N, d_model] over the first n rows of one permutation
    drawn with a generator seeded by ``seed`` (so subsets are nested), and its cosine with ``reference``
    [d_model] (default: the mean of all rows). Rows: {"n", "cosine", "norm", "vector"}.

    >>> d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> [round(r["cosine"], 6) for r in curve_from_differences(d, [3])]
    [1.0]
    """
    if not isinstance(differences, torch.Tensor) or differences.ndim != 2 or len(differences) == 0:
        raise ValueError(f"differences must be a tensor [N >= 1, d_model], got "
                         f"{tuple(differences.shape) if isinstance(differences, torch.Tensor) else differences!r}")
    n_pairs = len(differences)
    sizes = list(sizes)
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= n_pairs:
            raise ValueError(f"sizes must be ints in 1..{n_pairs} (the number of pairs), got {n!r}")
    if reference is None:
        reference = differences.mean(0)
    _check_vector(reference, "reference")
    if reference.shape[0] != differences.shape[1]:
        raise ValueError(f"reference has {reference.shape[0]} entries but the vectors have d_model "
                         f"{differences.shape[1]}")
    _check_int(seed, "seed", 0)
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))
    rows = []
    for n in sizes:
        vector = differences[order[:n].to(differences.device)].mean(0)
        rows.append({"n": n, "cosine": _cosine(vector, reference.to(vector.device)), "norm": float(vector.norm()),
                     "vector": vector})
    return rows


def learning_curve(model, tokenizer, pairs: Sequence[tuple[str, str]], layer: int, sizes: Sequence[int], *,
                   seed: int = 0, reference: torch.Tensor | None = None, read: str = "last",
                   batch_size: int = 16) -> list[dict]:
    """``curve_from_differences`` of the pairs' differences (each text read once): for each n in ``sizes``, the
    contrast vector of n pairs drawn with a seeded generator and its cosine with ``reference`` (default: the
    vector from all pairs). Rows: {"n", "cosine", "norm", "vector"}."""
    diffs = pair_differences(model, tokenizer, pairs, layer, read=read, batch_size=batch_size)
    return curve_from_differences(diffs, sizes, seed=seed, reference=reference)


def random_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A direction drawn uniformly on the sphere (a seeded Gaussian, normalised), scaled to ``vector``'s norm;
    same shape, dtype and device as ``vector`` [d_model].

    >>> v = torch.tensor([3.0, 4.0])
    >>> float(random_like(v, seed=1).norm()), torch.equal(random_like(v, 1), random_like(v, 1))
    (5.0, True)
    """
    _check_vector(vector)
    _check_int(seed, "seed", 0)
    z = torch.randn(vector.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z / z.norm() * vector.double().norm()).to(dtype=vector.dtype, device=vector.device)


def swap_signs(n: int, seed: int) -> torch.Tensor:
    """float32 [n] of +1 (pair kept) and -1 (pair's texts swapped), each with probability 1/2, seeded.

    >>> sorted(set(swap_signs(50, seed=0).tolist()))
    [-1.0, 1.0]
    """
    _check_int(n, "n", 1)
    _check_int(seed, "seed", 0)
    flips = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    return 1.0 - 2.0 * flips.float()


def shuffled_label_mean(differences: torch.Tensor, seed: int) -> torch.Tensor:
    """[d_model]: (1 / N) sum_i s_i d_i for ``differences`` [N, d_model] and s = ``swap_signs(N, seed)``: the
    contrast vector of the same pairs with each pair's labels swapped with probability 1/2 (expectation 0)."""
    if not isinstance(differences, torch.Tensor) or differences.ndim != 2 or len(differences) == 0:
        raise ValueError("differences must be a tensor [N >= 1, d_model]")
    signs = swap_signs(len(differences), seed).to(device=differences.device, dtype=differences.dtype)
    return (signs[:, None] * differences).mean(0)


def shuffled_label_vector(model, tokenizer, pairs: Sequence[tuple[str, str]], layer: int, seed: int, *,
                          read: str = "last", batch_size: int = 16) -> torch.Tensor:
    """float32 [d_model]: the contrast vector after swapping each pair's two texts with probability 1/2 (seeded):
    a vector from labels that carry no information, the control beside ``contrast_vector``."""
    diffs = pair_differences(model, tokenizer, pairs, layer, read=read, batch_size=batch_size)
    return shuffled_label_mean(diffs, seed)
