"""Command line ``python -m lib.head_strength``: per-head strength R_h of a pre-tuned and a fine-tuned model on the
same texts, compared.

    python -m lib.head_strength --pre_tuned_model A --fine_tuned_model B --data_path F --output_dir D
        [--sample_num N] [--batch_size 8] [--layers all] [--heads all] [--seed 0] [--device auto]
        [--max_length N] [--dtype float32]

Models: project names (``smollm2-135m``, ``tiny-llama``, ...), Hugging Face ids or local ``save_pretrained``
folders. ``--layers`` / ``--heads``: ``all`` or a list of indices and ranges, ``"0,1"``, ``"0-3"``, ``"0-2,5"``.
Writes into ``--output_dir``: ``pre_tuned_activations.json`` and ``fine_tuned_activations.json`` (each with its
per-sample arrays in ``*.samples.safetensors`` beside it), ``comparison.json``, ``comparison_heatmap.png``,
``comparison_heatmap.html`` and ``head_strength_manifest.json`` (the files it made and their sha256, the
arguments, timings). Everything is written into ``D/.head_strength.partial`` and renamed into place when complete:
a failed run changes nothing in ``D``, and a file this command did not make (or that changed since) is never
overwritten. Bad input is one ``error: ...`` line and exit status 2; a fault of the machine, 1; Ctrl-C, 130.

>>> parse_indices("0-2,5", "--layers"), parse_indices("all", "--heads")
([0, 1, 2, 5], None)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from lib.errors import UserError, run_command
from lib.files import write_json
from lib.settings import apply_hub_policy
from lib.models.weights import sha256_file

__all__ = ["main", "parse_indices", "compare_models", "OUTPUT_FILES", "MANIFEST"]

PRE, FINE = "pre_tuned_activations.json", "fine_tuned_activations.json"
OUTPUT_FILES = (PRE, "pre_tuned_activations.samples.safetensors", FINE, "fine_tuned_activations.samples.safetensors",
                "comparison.json", "comparison_heatmap.png", "comparison_heatmap.html")
MANIFEST = "head_strength_manifest.json"
PARTIAL, MARKER = ".head_strength.partial", ".made-by-head-strength"
_rename = os.replace  # one name for the swap's renames (a test cuts the swap short through it)


class OutputDirError(UserError, ValueError):
    """An output folder this command may not write into as asked."""


def parse_indices(text: str | None, flag: str) -> list[int] | None:
    """``None`` for ``all`` (or no value), else the sorted indices of ``"0,1"``, ``"0-3"``, ``"0-2,5"``."""
    if text is None or text.strip().lower() == "all":
        return None
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            values = range(int(lo), int(hi) + 1) if dash else [int(lo)]
        except ValueError:
            raise OutputDirError(f"{flag} {text!r}: {part.strip()!r} is not an index or a range; write e.g. "
                                 f"'0,1', '0-3' or 'all'") from None
        if dash and int(hi) < int(lo):
            raise OutputDirError(f"{flag} {text!r}: the range {part.strip()!r} runs backwards")
        out += list(values)
    if len(set(out)) != len(out):
        raise OutputDirError(f"{flag} {text!r} names an index more than once")
    return sorted(out)


def _ours(out: Path) -> dict[str, list[str]]:
    """{file: accepted sha256s} from a manifest this command left in ``out`` (empty when there is none)."""
    try:
        files = json.loads((out / MANIFEST).read_text()).get("files", {})
        return {k: list(v) for k, v in files.items()} if isinstance(files, dict) else {}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _check_output_dir(out: Path) -> None:
    """Fail, changing nothing, if ``out`` is a file or holds an output file this command did not make."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--output_dir {out} is a file, not a folder")
    if not out.is_dir():
        return
    ours = _ours(out)
    for name in (*OUTPUT_FILES, MANIFEST):
        target = out / name
        if name == MANIFEST:
            foreign = target.exists() and not ours
        else:
            foreign = (target.exists() or target.is_symlink()) and (
                target.is_symlink() or not target.is_file() or sha256_file(target) not in ours.get(name, []))
        if foreign:
            raise OutputDirError(f"{target} exists and was not written by this command (or changed since); nothing "
                                 f"was written: move it away or choose another --output_dir")
    partial = out / PARTIAL
    if partial.exists() and not (partial.is_dir() and (partial / MARKER).is_file()):
        raise OutputDirError(f"{partial} exists and was not made by this command; move it away")


def _fresh_partial(out: Path) -> Path:
    partial = out / PARTIAL
    if partial.exists():  # a leftover of a killed run (checked to be ours)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    (partial / MARKER).write_text("made by `python -m lib.head_strength`; removed when the run ends\n")
    return partial


def _swap_in(partial: Path, out: Path, manifest: dict) -> None:
    """Rename every file of ``partial`` into ``out``. While the renames run the manifest says ``complete: false``
    and accepts the old and the new sha256 of each file, so a kill between them leaves files that a rerun still
    knows as its own (and a manifest that says the set is mixed)."""
    old = _ours(out)
    new = {name: sha256_file(partial / name) for name in OUTPUT_FILES}
    write_json(out / MANIFEST, {**manifest, "complete": False,
                                "files": {n: sorted({new[n], *old.get(n, [])}) for n in OUTPUT_FILES}})
    for name in OUTPUT_FILES:
        _rename(partial / name, out / name)
    write_json(out / MANIFEST, {**manifest, "complete": True, "files": {n: [new[n]] for n in OUTPUT_FILES}})


def compare_models(pre_model: str, fine_model: str, texts: list[str], output_dir, *, layers=None, heads=None,
                   batch_size: int = 8, device: str = "auto", dtype: str = "float32", max_length: int | None = None,
                   seed: int = 0, progress_factory=None, args: dict | None = None) -> dict:
    """Extract both models on ``texts``, compare them, and write the outputs (see the module's docstring) into
    ``output_dir``; returns the manifest. ``progress_factory(total, desc)`` -> a bar with ``update(n)`` and
    ``close()`` (None: no progress)."""
    from lib.head_strength.comparator import ActivationComparator, json_safe
    from lib.head_strength.extractor import ActivationExtractor
    from lib.head_strength.inputs import TextBatches
    from lib.head_strength.results import HeadStrengthError

    out = Path(output_dir)
    _check_output_dir(out)
    batches = TextBatches(texts, batch_size)
    extractors = {}
    for which, name in (("pre", pre_model), ("fine", fine_model)):
        ex = ActivationExtractor(name, device=device, dtype=dtype, seed=seed, max_length=max_length)
        ex.register_hooks(layers, heads)
        extractors[which] = ex
    pre, fine = extractors["pre"], extractors["fine"]
    if (pre.n_layers, pre.n_heads) != (fine.n_layers, fine.n_heads):
        raise HeadStrengthError(f"the models differ in structure: --pre_tuned_model {pre_model!r} has {pre.n_layers} "
                                f"layers x {pre.n_heads} heads, --fine_tuned_model {fine_model!r} has {fine.n_layers} "
                                f"x {fine.n_heads}; compare two checkpoints of one architecture")
    timings = {}
    for which, ex in extractors.items():
        bar = progress_factory(len(batches), f"{which}-tuned") if progress_factory else None
        t0 = time.perf_counter()
        try:
            ex.extract_activations(batches, progress=None if bar is None else bar.update)
        finally:
            if bar is not None:
                bar.close()
        wall = time.perf_counter() - t0
        n_tok = int(ex.per_sample()["n_tokens"].sum())
        timings[which] = {"wall_s": round(wall, 3), "tokens": n_tok, "tokens_per_s": round(n_tok / max(wall, 1e-9), 1)}
        ex.remove_hooks()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    partial = _fresh_partial(out)
    done = False
    try:
        pre.save_results(partial / PRE)
        fine.save_results(partial / FINE)
        comparator = ActivationComparator(pre, fine)
        comparator.save_comparison(partial / "comparison.json")
        comparator.visualize_comparison(partial / "comparison_heatmap.png")
        manifest = {"format": "head_strength_run/1", "command": "python -m lib.head_strength", "args": args or {},
                    "n_texts": len(texts), "timings": timings, "summary": json_safe(comparator.summary())}
        _swap_in(partial, out, manifest)
        done = True
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if created and not done and not any(out.iterdir()):
            out.rmdir()
    return json.loads((out / MANIFEST).read_text())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.head_strength",
                                description="Per-head activation strength R_h = E||y_h|| of a pre-tuned and a "
                                            "fine-tuned model on the same texts, compared.")
    p.add_argument("--pre_tuned_model", required=True, help="project model name, Hugging Face id or local folder")
    p.add_argument("--fine_tuned_model", required=True, help="project model name, Hugging Face id or local folder")
    p.add_argument("--data_path", required=True, type=Path,
                   help="JSON list (or .jsonl) of strings or objects with 'input', 'text' or 'question'")
    p.add_argument("--sample_num", type=int, default=None, help="a seeded random subsample of this many items "
                   "(in file order; default: every item)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--output_dir", required=True, type=Path)
    p.add_argument("--layers", default="all", help="'all', or indices and ranges: '0,1', '0-3'")
    p.add_argument("--heads", default="all", help="'all', or indices and ranges: '0,1', '0-3'")
    p.add_argument("--seed", type=int, default=0, help="subsampling (and random-weights models)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--max_length", type=int, default=None, help="cut each text to this many tokens")
    return p


def _main(argv: list[str]) -> int:
    from lib.head_strength.inputs import load_texts
    from lib.settings import progress_bar

    a = _parser().parse_args(argv)
    layers, heads = parse_indices(a.layers, "--layers"), parse_indices(a.heads, "--heads")
    if a.max_length is not None and a.max_length < 1:
        raise OutputDirError(f"--max_length {a.max_length}: give a token count >= 1, or leave it out")
    texts = load_texts(a.data_path, a.sample_num, a.seed)
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    manifest = compare_models(a.pre_tuned_model, a.fine_tuned_model, texts, a.output_dir, layers=layers, heads=heads,
                              batch_size=a.batch_size, device=a.device, dtype=a.dtype, max_length=a.max_length,
                              seed=a.seed, args=args,
                              progress_factory=lambda total, desc: progress_bar(total=total, desc=desc, unit="batch",
                                                                                file=sys.stderr))
    s = manifest["summary"]
    print(json.dumps({"output_dir": str(a.output_dir), "n_texts": manifest["n_texts"], "spearman": s["spearman"],
                      "mean_ratio": s["mean_ratio"], "same_inputs": s["same_inputs"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); the exit code."""
    apply_hub_policy()
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command(lambda: _main(argv))
