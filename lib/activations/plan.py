"""What an extraction stores: its config, the hook names it asks of a model, and which of them are aliases.

>>> default_hook_names(2)[:3]
['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post', 'blocks.0.hook_mlp_out']
>>> plan_aliases(["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"])
(['blocks.0.hook_resid_post'], {'blocks.1.hook_resid_pre': 'blocks.0.hook_resid_post'})
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from lib.activations.names import act_name, check_hook_names, check_layers
from lib.activations.store import REDUCTIONS

__all__ = ["DEFAULT_SITES", "ExtractConfig", "default_hook_names", "hook_names_for", "dataset_sha256",
           "layer_of", "plan_aliases", "sites_by_layer", "keeps_tokens"]

DEFAULT_SITES = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out")


def default_hook_names(n_layers: int, layers=None, sites=DEFAULT_SITES, per_head: bool = False) -> list[str]:
    """Full hook names for ``sites`` (names inside a block) at ``layers`` (default all), layer by layer.

    >>> default_hook_names(3, layers=[2], sites=["hook_mlp_out"], per_head=True)
    ['blocks.2.hook_mlp_out', 'blocks.2.attn.hook_z']
    """
    layers = range(n_layers) if layers is None else layers
    sites = [*sites, "attn.hook_z"] if per_head else list(sites)
    return list(dict.fromkeys(act_name(site, layer) for layer in layers for site in sites))


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract. ``hooks`` empty means ``sites`` (default: the four default sites) at
    ``layers`` (None: all).

    Every site gets the sentence-end, mean and span reductions; the sites in ``token_sites``
    also keep every token (the residual stream by default: per-token MLP and attention outputs
    of every layer triple the store and are rarely needed; ask with ``("*",)``).
    """

    hooks: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None
    sites: tuple[str, ...] = DEFAULT_SITES  # used when ``hooks`` is empty
    per_head: bool = False
    batch_size: int = 32
    dtype: str = "float16"
    # sites whose every token is stored (reductions are stored for all); ("*",) = every site
    token_sites: tuple[str, ...] = ("hook_resid_pre", "hook_resid_post")
    reductions: tuple[str, ...] = REDUCTIONS
    checksum: bool = True  # a CRC32C per chunk (off only to measure what it costs)

    def __post_init__(self):
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"store dtype {self.dtype!r} must be 'float16' or 'float32'")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        bad = [r for r in self.reductions if r not in REDUCTIONS]
        if bad:
            raise ValueError(f"unknown reduction(s) {bad}; valid: {list(REDUCTIONS)}")
        if self.hooks and self.layers is not None:
            raise ValueError("give either hooks (full names, each with its layer) or layers (with sites), not both: "
                             "layers would be ignored")
        if self.layers is not None and len(set(self.layers)) != len(self.layers):
            twice = sorted({layer for layer in self.layers if list(self.layers).count(layer) > 1})
            raise ValueError(f"layer(s) {twice} given more than once; give each layer once")


def hook_names_for(lm, config: ExtractConfig) -> list[str]:
    """The validated hook names ``config`` asks of ``lm`` (fails before any work, naming valid ones)."""
    n_layers = int(lm.cfg.n_layers)
    if config.layers is not None:
        check_layers(list(config.layers), n_layers, lm.name)
    names = list(config.hooks) or default_hook_names(n_layers, config.layers, sites=config.sites,
                                                     per_head=config.per_head)
    names = check_hook_names(names, lm.bridge.hook_dict, lm.name)
    block = sorted({v.split(".", 2)[2] for v in lm.bridge.hook_dict if v.startswith("blocks.0.")})
    stray = [s for s in config.token_sites if s != "*" and s not in block]
    if stray:
        import difflib

        close = sorted({c for s in stray for c in difflib.get_close_matches(s, block, n=3, cutoff=0.6)})
        raise ValueError(f"token site(s) {stray} are not sites of {lm.name}'s blocks; closest: {close}; give sites "
                         f"inside a block such as 'hook_resid_post', '*' for all, or none")
    return names


def dataset_sha256(df: pd.DataFrame) -> str:
    """Hash of the rows an extraction reads (ids, texts, labels, spans), in order."""
    cols = ["id", "text", "emotion", "profile", "split", "span_start", "span_end"]
    payload = df[cols].astype(str).to_csv(index=False).encode()
    return hashlib.sha256(payload).hexdigest()


def layer_of(name: str) -> int:
    """The block index of a full hook name: ``layer_of("blocks.6.attn.hook_z") == 6``."""
    return int(name.split(".")[1])


def plan_aliases(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Stored hooks, and aliases: resid_pre of layer l > 0 is resid_post of layer l - 1 (exactly)."""
    aliases = {}
    for name in names:
        layer = layer_of(name)
        before = act_name("hook_resid_post", layer - 1) if layer > 0 else None
        if name.endswith(".hook_resid_pre") and before in names:
            aliases[name] = before
    return [n for n in names if n not in aliases], aliases


def sites_by_layer(stored: list[str]) -> dict[str, list[int]]:
    """Stored hooks grouped by site (the name inside the block) -> layers, in order.

    >>> sites_by_layer(["blocks.0.hook_resid_post", "blocks.0.attn.hook_z", "blocks.2.hook_resid_post"])
    {'hook_resid_post': [0, 2], 'attn.hook_z': [0]}
    """
    sites: dict[str, list[int]] = {}
    for name in stored:
        sites.setdefault(name.split(".", 2)[2], []).append(layer_of(name))
    return sites


def keeps_tokens(site: str, config: ExtractConfig) -> bool:
    """Whether ``config`` stores every token of ``site`` (not only its reductions)."""
    return "*" in config.token_sites or site in config.token_sites
