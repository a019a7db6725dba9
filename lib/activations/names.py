"""Hook names: one builder from (site, layer), one check against a model before any long run.

>>> act_name("resid_post", 6)
'blocks.6.hook_resid_post'
>>> act_name("z", 3)
'blocks.3.attn.hook_z'
>>> act_name("hook_resid_post", 6)  # the path inside a block, as stores name their sites
'blocks.6.hook_resid_post'
"""
from __future__ import annotations

__all__ = ["SITES", "act_name", "check_hook_names", "check_layers"]

# Short site name -> hook path inside a block.
SITES = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "z": "attn.hook_z", "pattern": "attn.hook_pattern", "attn_scores": "attn.hook_attn_scores",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "result": "attn.hook_result",
}


def act_name(site: str, layer: int) -> str:
    """Full TransformerLens hook name of ``site`` in block ``layer``: a short site name (``resid_post``) or
    a hook path inside a block (``hook_resid_post``, ``attn.hook_z``, ``hook_mlp_out``)."""
    if site in SITES:
        site = SITES[site]
    elif "hook_" not in site:
        raise ValueError(f"unknown site {site!r}; known: {sorted(SITES)}, or a hook path inside a block such as "
                         f"'hook_resid_post'")
    return f"blocks.{int(layer)}.{site}"


def check_layers(layers: list[int], n_layers: int, model_name: str = "the model") -> list[int]:
    """``layers`` unchanged if every one is in ``range(n_layers)``; else an error naming the bad ones."""
    bad = [layer for layer in layers if not 0 <= int(layer) < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range for {model_name}, which has {n_layers} layers (0..{n_layers - 1})")
    return list(layers)


def check_hook_names(names: list[str], hook_dict, model_name: str = "the model") -> list[str]:
    """``names`` unchanged if all are hooks of the model; else an error with close valid names."""
    import difflib

    valid = sorted(hook_dict)
    for name in names:
        if name not in hook_dict:
            close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
            per_block = sorted({v.split(".", 2)[2] for v in valid if v.startswith("blocks.0.")})
            raise ValueError(f"{name!r} is not a hook of {model_name}. Closest: {close}. "
                             f"Hooks in each block (blocks.L.<name>): {per_block}")
    return list(names)
