"""Each head's importance for a scored objective: the loss increase when it is mean-ablated alone, and the
gradient score of Michel et al. 2019 ("Are Sixteen Heads Really Better than One?").

Rows are prompts (token id lists ending right before the answer, any lengths) with a target token (the
correct answer's first token); row i's loss is -log p(target_i | prompt_i) over the full vocabulary at the
prompt's last position.

- ``ablation_importance``: per head and row, the loss with the head's z at the last position replaced by
  its mean over a reference set (z at the reference prompts' last positions), minus the clean loss. Exact,
  through ``lib.interventions.sweep`` (clean state + last-token reruns from the head's layer on).
- ``gradient_importance``: a gate xi_h = 1 multiplies each head's z at every position before the output
  projection; per row |dL_i / dxi_h| from one forward and one backward per batch. Michel et al.'s importance
  is the expectation over rows of that absolute value, ``per_row.mean(-1)`` (optionally divided by each
  layer's l2 norm, as in their section 4.1).

>>> from lib.models.tiny import build_tiny_model
>>> hf = build_tiny_model("tiny-llama")
>>> prompts, targets = [[5, 6, 7], [8, 9, 10, 11]], [12, 13]
>>> res = ablation_importance(hf, prompts, targets, reference_prompts=[[3, 4], [7, 8, 9]])
>>> res["delta"].shape, res["clean_loss"].shape
((2, 4, 2), (2,))
>>> gradient_importance(hf, prompts, targets)["per_row"].shape
(2, 4, 2)
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from lib.errors import UserError
from lib.interventions.head_outputs import head_outputs
from lib.interventions.readout import Readout, final_logits
from lib.interventions.sweep import clean_state, sweep_fast
from lib.models.archs import model_dims

__all__ = ["ImportanceInputError", "model_device", "check_rows", "check_positions", "length_groups",
           "reference_mean_z", "expand_mean", "target_readout", "eval_mode", "ablation_importance",
           "gradient_importance", "layer_normalised"]


class ImportanceInputError(UserError, ValueError):
    """Rows, targets or reference prompts that cannot be scored (the message names the input at fault)."""


def model_device(hf) -> torch.device:
    """The device of the model's parameters."""
    return next(hf.parameters()).device


def _as_ids(prompt, name: str, i: int, vocab: int, min_len: int) -> torch.Tensor:
    try:
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ImportanceInputError(f"{name}[{i}] is not a list of token ids: {str(prompt)[:60]!r}") from None
    if ids.numel() < min_len:
        raise ImportanceInputError(f"{name}[{i}] has {ids.numel()} tokens; at least {min_len} are needed "
                                   f"(a prompt ending right before the answer)")
    if ids.min() < 0 or ids.max() >= vocab:
        raise ImportanceInputError(f"{name}[{i}] holds token id {int(ids.max() if ids.max() >= vocab else ids.min())}"
                                   f" outside the model's vocabulary 0..{vocab - 1}")
    return ids


@contextlib.contextmanager
def eval_mode(hf):
    """The model in eval mode (no dropout) while open, then back in the mode it was in."""
    was = hf.training
    hf.eval()
    try:
        yield
    finally:
        hf.train(was)


def check_rows(hf, prompts, targets=None, *, name: str = "prompts", min_len: int = 2):
    """Prompts as 1-D LongTensors (each >= ``min_len`` tokens, ids in the vocabulary) and, if given, targets
    as a LongTensor [n] (one per prompt); an ImportanceInputError names the bad row."""
    vocab = hf.get_input_embeddings().weight.shape[0]
    prompts = list(prompts)
    if not prompts:
        raise ImportanceInputError(f"{name} is empty; give at least one prompt (a list of token ids)")
    rows = [_as_ids(p, name, i, vocab, min_len) for i, p in enumerate(prompts)]
    if targets is None:
        return rows, None
    tg = torch.as_tensor(list(targets), dtype=torch.long).reshape(-1)
    if tg.numel() != len(rows):
        raise ImportanceInputError(f"{len(rows)} {name} but {tg.numel()} targets; give one target token per prompt")
    bad = torch.nonzero((tg < 0) | (tg >= vocab)).flatten()
    if bad.numel():
        raise ImportanceInputError(f"targets[{int(bad[0])}] = {int(tg[bad[0]])} is outside the model's "
                                   f"vocabulary 0..{vocab - 1}")
    return rows, tg


def length_groups(lengths, max_rows: int) -> list[np.ndarray]:
    """Row indices grouped by length (shortest first, input order within a length), in chunks of at most
    ``max_rows``.

    >>> [g.tolist() for g in length_groups([3, 5, 3, 3], 2)]
    [[0, 2], [3], [1]]
    """
    lengths = np.asarray(lengths)
    out = []
    for T in np.unique(lengths):
        idx = np.flatnonzero(lengths == T)
        out += [idx[c:c + max(1, int(max_rows))] for c in range(0, idx.size, max(1, int(max_rows)))]
    return out


@torch.inference_mode()
def reference_mean_z(hf, reference_prompts, *, positions: str = "last",
                     batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Per layer, each head's mean z over ``reference_prompts``: at their last positions, [heads, d_head]
    (``positions="last"``, any lengths), or at each position, [T, heads, d_head] (``"all"``: the prompts must
    share one length T). One forward per prompt, in batches of one length (no padding)."""
    check_positions(positions)
    rows, _ = check_rows(hf, reference_prompts, name="reference_prompts", min_len=1)
    if positions == "all" and len({r.numel() for r in rows}) != 1:
        raise ImportanceInputError(f"positions='all' needs reference prompts of one token length (position-matched "
                                   f"means); got lengths {sorted({r.numel() for r in rows})}; use positions='last'")
    n_layers = model_dims(hf)[0]
    sums: dict[int, torch.Tensor] = {}
    take = (lambda z: z[:, -1]) if positions == "last" else (lambda z: z)

    def add(z, layer):
        s = take(z).double().sum(0)
        sums[layer] = s if layer not in sums else sums[layer] + s

    with eval_mode(hf), head_outputs(hf, range(n_layers), add):
        for idx in length_groups([r.numel() for r in rows], batch_size):
            hf.base_model(input_ids=torch.stack([rows[i] for i in idx]).to(model_device(hf)))
    return {layer: (s / len(rows)).float() for layer, s in sums.items()}


def expand_mean(mean_z: dict[int, torch.Tensor], T: int, positions: str) -> dict[int, torch.Tensor]:
    """``mean_z`` in the [T, heads, d_head] layout ``lib.interventions.sweep`` reads for prompts of length T:
    a last-position mean [heads, d_head] repeated (only the last row is read at ``positions="last"``)."""
    out = {}
    for layer, m in mean_z.items():
        if m.ndim == 2:
            if positions == "all":
                raise ImportanceInputError("positions='all' needs position-matched means [T, heads, d_head] "
                                           "(reference_mean_z(..., positions='all'))")
            out[layer] = m[None].expand(T, *m.shape)
        elif m.shape[0] != T:
            raise ImportanceInputError(f"the reference means cover {m.shape[0]} positions but the prompts have {T} "
                                       f"tokens; positions='all' needs prompts and reference prompts of one length")
        else:
            out[layer] = m
    return out


def target_readout(hf, token_ids) -> Readout:
    """A ``Readout`` whose continuations are ``token_ids`` (one each, key ``str(id)``, sorted): its ``logprob``
    column j is log p(token j). The probe part is a placeholder (zero weights, 2 classes, last layer)."""
    n_layers = model_dims(hf)[0]
    d_model = hf.get_input_embeddings().weight.shape[1]
    ids = sorted({int(t) for t in token_ids})
    return Readout(layer=n_layers - 1, weight=torch.zeros(2, d_model), bias=torch.zeros(2), classes=["_a", "_b"],
                   continuations={str(t): torch.tensor([t]) for t in ids})


def check_positions(positions: str, rows=None) -> None:
    """``positions`` must be ``"last"`` or ``"all"``, and ``"all"`` needs ``rows`` (1-D tensors) of one length."""
    if positions not in ("last", "all"):
        raise ImportanceInputError(f"positions={positions!r}; valid: 'last' (the answer position) or 'all'")
    if rows is not None and positions == "all" and len({r.numel() for r in rows}) != 1:
        raise ImportanceInputError(f"positions='all' needs prompts of one token length; got lengths "
                                   f"{sorted({r.numel() for r in rows})}; use positions='last'")


def ablation_importance(hf, prompts, targets, *, reference_prompts=None, reference_mean=None, positions: str = "last",
                        batch_rows: int = 256, progress=None) -> dict[str, np.ndarray]:
    """Loss increase per head and row when the head alone is mean-ablated: ``clean_loss`` [n] and ``delta``
    [L, H, n] (ablated loss - clean loss), in the input order of the rows.

    The mean is ``reference_mean_z(hf, reference_prompts, positions=positions)`` (or ``reference_mean``, the same
    thing computed once). In eval mode, rows run in groups of one length (``clean_state``), then ``sweep_fast``
    reruns the last token of every row once per head from the head's layer on. ``batch_rows``: the most rows (heads x
    prompts) in one rerun, so at most ``batch_rows // H`` prompts per clean state. ``progress(k)``: k more rows
    done.

    Cost: 2 forwards per row (the clean state: one full, one for the key-value cache), then L*H last-token
    forwards per row, each from its head's layer on (about L*H/2 full-depth token forwards); ``"all"``: the
    reruns cover every position.
    """
    check_positions(positions)
    rows, tg = check_rows(hf, prompts, targets)
    check_positions(positions, rows)
    if reference_mean is None:
        if reference_prompts is None:
            raise ImportanceInputError("mean ablation needs reference_prompts (or reference_mean)")
        reference_mean = reference_mean_z(hf, reference_prompts, positions=positions)
    n_layers, n_heads, _ = model_dims(hf)
    ro = target_readout(hf, tg.tolist())
    col = {int(t): j for j, t in enumerate(ro.continuations)}
    cols = torch.tensor([col[int(t)] for t in tg])
    clean = np.empty(len(rows), dtype=np.float64)
    delta = np.empty((n_layers, n_heads, len(rows)), dtype=np.float64)
    for idx in length_groups([r.numel() for r in rows], max(1, int(batch_rows) // n_heads)):
        ids = torch.stack([rows[i] for i in idx]).to(model_device(hf))
        with eval_mode(hf):
            state = clean_state(hf, ids, ro)
            res = sweep_fast(hf, state, ro, "mean", positions, mean_z=expand_mean(reference_mean, state.T, positions))
        c = cols[torch.as_tensor(idx)]
        lp_clean = state.metrics["logprob"].double().cpu()[torch.arange(len(idx)), c].numpy()  # [n]
        lp = np.take_along_axis(res["logprob"].astype(np.float64), c.numpy()[None, None, :, None], -1)[..., 0]
        clean[idx] = -lp_clean
        delta[:, :, idx] = lp_clean[None, None] - lp
        if progress is not None:
            progress(len(idx))
    return {"clean_loss": clean, "delta": delta}


def _pad_right(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [b, T_max] and attention mask (1 on real tokens). In a causal model real tokens never
    see the padding after them, so their outputs are those of the unpadded row."""
    T = max(r.numel() for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :r.numel()] = r
        mask[i, :r.numel()] = 1
    return ids, mask


def gradient_importance(hf, prompts, targets, *, batch_size: int = 32, normalise_layers: bool = False,
                        progress=None) -> dict[str, np.ndarray]:
    """Michel et al. 2019's head importance: ``per_row`` [L, H, n] = |dL_i / dxi_h| at xi = 1, where the gate
    xi_h multiplies head h's z at every position before the output projection and L_i is row i's loss;
    ``importance`` [L, H] = ``per_row.mean(-1)`` (their expectation of the absolute value over rows), divided
    by each layer's l2 norm when ``normalise_layers`` (their section 4.1; ``per_row`` stays unnormalised, so
    a bootstrap takes the mean first and normalises after).

    Each batch is right-padded (attention mask on), sorted by length to pad little; the gates are [batch, H]
    per layer and the batch's losses are summed, so every row's gates get that row's gradient alone.
    Cost: 1 forward + 1 backward per batch of ``batch_size`` rows (gradients for the gates only, none for the
    weights). The model is put in eval mode for the call (no dropout) and left as it was.
    """
    rows, tg = check_rows(hf, prompts, targets, min_len=1)
    n_layers, n_heads, _ = model_dims(hf)
    dev = model_device(hf)
    dtype = hf.get_input_embeddings().weight.dtype
    per_row = np.empty((n_layers, n_heads, len(rows)), dtype=np.float64)
    order = np.argsort([r.numel() for r in rows], kind="stable")
    with eval_mode(hf), torch.inference_mode(False), torch.enable_grad():
        for c in range(0, len(rows), max(1, int(batch_size))):
            idx = order[c:c + max(1, int(batch_size))]
            ids, mask = _pad_right([rows[i] for i in idx])
            ids, mask = ids.to(dev), mask.to(dev)
            gates = [torch.ones(len(idx), n_heads, dtype=dtype, device=dev, requires_grad=True)
                     for _ in range(n_layers)]
            with head_outputs(hf, range(n_layers), lambda z, layer: z * gates[layer][:, None, :, None]):
                hidden = hf.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.sum(1) - 1
            logits = final_logits(hf, hidden[torch.arange(len(idx), device=dev), last])
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least
            loss = -torch.log_softmax(logits, -1).gather(1, tg[torch.as_tensor(idx)].to(dev)[:, None]).sum()
            grads = torch.autograd.grad(loss, gates)
            per_row[:, :, idx] = torch.stack(grads).abs().double().cpu().numpy().transpose(0, 2, 1)
            if progress is not None:
                progress(len(idx))
    importance = per_row.mean(-1)
    return {"per_row": per_row, "importance": layer_normalised(importance) if normalise_layers else importance}


def layer_normalised(importance: np.ndarray) -> np.ndarray:
    """[L, H] divided by each layer's l2 norm over its heads (Michel et al. 2019, section 4.1); a layer of
    zeros stays zero.

    >>> layer_normalised(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    imp = np.asarray(importance, dtype=np.float64)
    norm = np.linalg.norm(imp, axis=-1, keepdims=True)
    return np.divide(imp, norm, out=np.zeros_like(imp), where=norm > 0)
