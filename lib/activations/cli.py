"""Command line ``python -m lib.activations``: the same extraction as the notebook, for batch jobs.

>>> _parser().parse_args(["--model", "tiny-gpt2", "--profile", "baseline", "--out", "s"]).token_sites
['hook_resid_pre', 'hook_resid_post']
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lib.activations.plan import DEFAULT_SITES, ExtractConfig
from lib.settings import apply_hub_policy

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.activations", description="Extract activations into a store.")
    p.add_argument("--model", required=True)
    p.add_argument("--profile", required=True, help="baseline, extended, goemotions or goemotions:dev")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--hooks", nargs="*", default=[], help="full hook names (default: the default sites)")
    p.add_argument("--layers", nargs="*", type=int, default=None)
    p.add_argument("--sites", nargs="*", default=list(DEFAULT_SITES), help="sites inside a block, used without --hooks")
    p.add_argument("--per-head", action="store_true", help="also store attn.hook_z")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--device", default="auto")
    p.add_argument("--max-per-emotion", type=int, default=None)
    p.add_argument("--emotions", nargs="*", default=None)
    p.add_argument("--token-sites", nargs="*", default=["hook_resid_pre", "hook_resid_post"],
                   help="sites whose every token is stored ('*' for all; none: only reductions)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Extract one model on one profile into ``--out``; prints a JSON summary, returns 2 on a bad input."""
    apply_hub_policy()
    from lib.activations.extract import extract
    from lib.models.loading import load_model
    from lib.text.datasets import load_profile

    a = _parser().parse_args(argv)
    profile, _, split = a.profile.partition(":")
    try:
        df = load_profile(profile, split=split or None, emotions=a.emotions, max_per_emotion=a.max_per_emotion,
                          seed=a.seed)
        lm = load_model(a.model, device=a.device)
        cfg = ExtractConfig(hooks=tuple(a.hooks), layers=tuple(a.layers) if a.layers else None, sites=tuple(a.sites),
                            per_head=a.per_head, batch_size=a.batch_size, dtype=a.dtype,
                            token_sites=tuple(a.token_sites))
        manifest = extract(lm, df, a.out, cfg)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("n_rows", "n_tokens", "bytes", "wall_s", "tokens_per_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
