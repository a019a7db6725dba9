"""Seeded generation with sets of heads ablated or patched, many sets in one batch.

Generation intervenes on the heads' slices of the Hugging Face model's attention output projection
input (``lib.interventions.head_outputs``, the same z as TransformerLens' ``attn.hook_z``), under the
position rule of the forward metrics:

- ``positions="last"``: ablations edit the prompt's last position and every generated position (each is
  the last position when it predicts the next token); patches edit the prompt's last position;
- ``positions="all"``: ablations edit every prompt position and every generated position; patches every
  prompt position.

Mean ablation is position-matched (``mean_z`` per layer [T, heads, d_head], T the prompt length): prompt
position p gets the reference mean at p; a generated position, which no reference prompt has, gets the
mean at the last prompt position. Patches have no source beyond the prompt, so generated positions are
left as computed. Every condition draws the same Gumbel noise per prompt and step, so conditions differ
only through the intervention.
"""
from __future__ import annotations

import torch

from lib.interventions.head_outputs import head_outputs
from lib.interventions.readout import final_logits

__all__ = ["sample_top_k", "generate_sets", "generate"]


def _set_edit(head_sets: list, mode: str, n: int, prompt_len: int, positions: str, mean_z=None, source_z=None):
    """A ``head_outputs`` callback for rows in set-major order (row s * n + i = prompt i under set s): set s
    has its heads zeroed, mean-replaced or patched at the positions the rule ``positions`` names."""
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for s, heads in enumerate(head_sets):
        for layer, head in heads or []:
            by_layer.setdefault(layer, []).append((s, head))
    if mode == "mean":
        bad = [layer for layer in by_layer if mean_z[layer].ndim != 3 or mean_z[layer].shape[0] != prompt_len]
        if bad:
            raise ValueError(f"mean_z[{bad[0]}] has shape {tuple(mean_z[bad[0]].shape)}; position-matched means "
                             f"need [{prompt_len}, heads, d_head] (a reference set of the prompts' token length)")

    def edit(z, layer):  # z [S * n, P, head, d_head]: the prompt (P = T) or one generated token (P = 1)
        prompt = z.shape[1] == prompt_len
        if mode == "patch" and not prompt:
            return None  # generated positions have no source: left as computed
        where = slice(None) if positions == "all" or not prompt else slice(-1, None)
        z = z.clone()
        zv = z.view(len(head_sets), n, *z.shape[1:])
        for s, h in by_layer[layer]:
            if mode == "zero":
                zv[s, :, where, h] = 0
            elif mode == "mean":
                zv[s, :, where, h] = (mean_z[layer][where, h] if prompt else mean_z[layer][-1:, h]).to(z)
            else:
                zv[s, :, where, h] = source_z[layer][:, where, h].to(z)
        return z
    return sorted(by_layer), edit


def sample_top_k(logits: torch.Tensor, gumbel: torch.Tensor, top_k: int) -> torch.Tensor:
    """Token ids [rows]: a draw from softmax(logits) over each row's ``top_k`` largest logits, by the
    Gumbel-max trick; row r reads the noise row ``gumbel[r % len(gumbel)]`` [vocab], so the same noise
    gives the same draw wherever the logits agree (common random numbers across conditions).

    >>> sample_top_k(torch.tensor([[0.0, 5.0, 1.0]]), torch.zeros(1, 3), top_k=2)
    tensor([1])
    """
    vals, idx = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # [rows, k]
    noise_rows = torch.arange(logits.shape[0], device=logits.device) % gumbel.shape[0]
    noise = gumbel.to(logits.device)[noise_rows[:, None], idx]
    return idx.gather(-1, (vals + noise).argmax(-1, keepdim=True)).squeeze(-1)


@torch.inference_mode()
def generate_sets(lm, input_ids: torch.Tensor, head_sets: list, *, n_tokens: int, seed: int, mode: str | None = None,
                  positions: str = "all", mean_z=None, source_z=None, top_k: int = 50,
                  temperature: float = 1.0) -> list[list[str]]:
    """Sampled continuations of prompts of one length [n, T] under each head set, in one batch: per set a
    list of ``n`` texts of ``n_tokens`` new tokens (top-k sampling at ``temperature``). Sets are zero- or
    mean-ablated (``mean_z`` per layer [T, head, d_head]) or patched from ``source_z`` [n, T, head, d_head]
    at the positions of the rule ``positions`` (module docstring; ``mode=None`` or an empty set: no
    intervention). Prompt i draws the same Gumbel noise at each step
    under every set (seeded), so conditions differ only through the intervention."""
    if mode is not None and mode not in ("zero", "mean", "patch"):
        raise ValueError(f"unknown mode {mode!r}; valid: zero, mean, patch")
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    hf = lm.bridge.original_model
    n, T = input_ids.shape
    S = len(head_sets)
    layers, edit = _set_edit(head_sets, mode, n, T, positions, mean_z, source_z) if mode is not None else ([], None)
    gen = torch.Generator().manual_seed(int(seed))
    cur, past, out = input_ids.repeat(S, 1), None, []
    with head_outputs(hf, layers, edit):
        for _ in range(n_tokens):
            o = hf.base_model(input_ids=cur, past_key_values=past, use_cache=True)
            logits = final_logits(hf, o.last_hidden_state[:, -1]).float() / temperature
            u = torch.rand((n, logits.shape[-1]), generator=gen).clamp_(min=1e-20)
            gumbel = -torch.log(-torch.log(u)).to(logits.device)
            nxt = sample_top_k(logits, gumbel, top_k)
            out.append(nxt)
            cur, past = nxt[:, None], o.past_key_values
    tokens = torch.stack(out, 1).cpu().view(S, n, n_tokens)
    return [lm.tokenizer.batch_decode(t, skip_special_tokens=True) for t in tokens]


def generate(lm, input_ids: torch.Tensor, *, n_tokens: int, seed: int, heads=None, mode: str | None = None,
             positions: str = "all", mean_z=None, source_z=None, top_k: int = 50, temperature: float = 1.0) -> list[str]:
    """``generate_sets`` for one head set (``heads=None`` or ``mode=None``: the clean model)."""
    return generate_sets(lm, input_ids, [heads or []], n_tokens=n_tokens, seed=seed, mode=mode if heads else None,
                         positions=positions, mean_z=mean_z, source_z=source_z, top_k=top_k,
                         temperature=temperature)[0]
