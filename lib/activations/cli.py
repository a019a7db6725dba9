"""Command line ``python -m lib.activations``: the same extraction as the notebook, for batch jobs, and
the store maintenance commands.

    python -m lib.activations --model M --profile P --out DIR [...]   extract (resumes, reuses)
    python -m lib.activations verify STORE [STORE ...]                 check every chunk's checksum
    python -m lib.activations gc [--stores-dir DIR] [--delete]         stores no run uses any more

Every failure a user can cause or meet prints one ``error: ...`` line and exits non-zero (2: a bad
input or a damaged store, 1: a fault of the machine such as a full disk, 130: interrupted).

>>> _parser().parse_args(["--model", "tiny-gpt2", "--profile", "baseline", "--out", "s"]).token_sites
['hook_resid_pre', 'hook_resid_post']
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lib.activations.plan import DEFAULT_SITES, ExtractConfig
from lib.errors import run_command
from lib.settings import apply_hub_policy

__all__ = ["main"]

_RESUME = "interrupted; rerun the same command to resume at the first unwritten batch (finished batches are kept)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.activations", description="Extract activations into a store "
                                "(subcommands: verify STORE..., gc).")
    p.add_argument("--model", required=True)
    p.add_argument("--profile", required=True, help="baseline, extended, goemotions or goemotions:dev")
    p.add_argument("--out", required=True, type=Path, help="a new or empty folder, or a store to resume or reuse")
    p.add_argument("--overwrite", action="store_true", help="replace a store at --out made with other settings "
                   "(a folder holding anything but a store is never touched)")
    p.add_argument("--hooks", nargs="*", default=[], help="full hook names (default: the default sites)")
    p.add_argument("--layers", nargs="*", type=int, default=None, help="layers of --sites (not with --hooks)")
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


def _extract(argv: list[str]) -> int:
    from lib.activations.extract import extract
    from lib.models.loading import load_model
    from lib.text.datasets import load_profile

    a = _parser().parse_args(argv)
    if a.max_per_emotion is not None and a.max_per_emotion < 1:
        raise ValueError(f"--max-per-emotion {a.max_per_emotion}: give a count >= 1, or leave it out for every row")
    cfg = ExtractConfig(hooks=tuple(a.hooks), layers=tuple(a.layers) if a.layers else None, sites=tuple(a.sites),
                        per_head=a.per_head, batch_size=a.batch_size, dtype=a.dtype, token_sites=tuple(a.token_sites))
    profile, _, split = a.profile.partition(":")
    df = load_profile(profile, split=split or None, emotions=a.emotions, max_per_emotion=a.max_per_emotion,
                      seed=a.seed)
    lm = load_model(a.model, device=a.device)
    manifest = extract(lm, df, a.out, cfg, overwrite=a.overwrite, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({k: manifest[k] for k in ("n_rows", "n_tokens", "bytes", "wall_s", "tokens_per_s")}))
    return 0


def _verify(argv: list[str]) -> int:
    from lib.activations.store import open_store

    p = argparse.ArgumentParser(prog="python -m lib.activations verify",
                                description="Check a store's files and every chunk's checksum.")
    p.add_argument("stores", nargs="+", type=Path)
    for path in p.parse_args(argv).stores:
        counts = open_store(path).verify()
        print(f"ok: {path} ({counts['chunks']} chunks, {counts['bytes'] / 1e6:.1f} MB, {counts['seconds']:.2f} s)")
    return 0


def _gc(argv: list[str]) -> int:
    from lib.activations.cleanup import remove_stores, unused_stores

    p = argparse.ArgumentParser(prog="python -m lib.activations gc",
                                description="List the stores no run's stores.json names; --delete removes the finished ones.")
    p.add_argument("--stores-dir", type=Path, default=Path("results/02_activations/stores"))
    p.add_argument("--delete", action="store_true")
    a = p.parse_args(argv)
    unused = unused_stores(a.stores_dir)
    for entry in unused:
        state = "finished" if entry.finished else "unfinished (kept: its run resumes it)"
        print(f"unused: {entry.path} ({entry.bytes / 1e6:.1f} MB, {state})")
    total = sum(e.bytes for e in unused if e.finished)
    if a.delete:
        print(f"freed {remove_stores(unused) / 1e6:.1f} MB")
    else:
        print(f"{len(unused)} unused store(s), {total / 1e6:.1f} MB deletable; rerun with --delete to delete them")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Extract one model on one profile into ``--out`` (or run ``verify`` / ``gc``); the exit code."""
    apply_hub_policy()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = {"verify": _verify, "gc": _gc}.get(argv[0] if argv else "", _extract)
    rest = argv[1:] if command is not _extract else argv
    return run_command(lambda: command(rest), interrupted=_RESUME)


if __name__ == "__main__":
    raise SystemExit(main())
