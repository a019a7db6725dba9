"""What each phase parameter may hold: one declared ``Rule`` (type, range, allowed values, nullable) per key.

``rule_for(stem, key)`` is the rule of ``key`` in phase ``stem`` (a phase may narrow a shared key, e.g.
phase 02 stores only float16 or float32); ``problem(rule, value)`` says whether a value breaks it and
``describe(rule)`` says, in one line, what would be valid. Checks that need other keys, other phases or
the model registry live in ``lib.pipeline.checks``.

>>> describe(rule_for("03_emotion_vectors", "n_splits"))
'an integer >= 3'
>>> problem(rule_for("01_dataset", "near_duplicate_threshold"), 7.5)
''
>>> problem(rule_for("02_activations", "token_sites"), ["hook_resid_psot"])
"bad entry 'hook_resid_psot'; closest: ['hook_resid_post', 'hook_resid_pre', 'hook_resid_mid']"
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Rule", "RUN_NAME", "BLOCK_SITES", "HOOK_NAME", "rule_for", "problem", "describe", "show"]

# A run name is used as a file and folder name (params/<run>.yaml, results/<stem>/<run>/): no path parts.
RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"

# Every hook path inside a block (blocks.L.<site>) of the supported architectures (GPT-2, GPT-Neo, GPT-NeoX,
# Llama, Gemma 3) as TransformerBridge names them; tests/pipeline/test_checks.py compares it with the tiny models.
# Which of them a given model has is checked against its hook_dict when it loads (lib.activations.names).
BLOCK_SITES = (
    "hook_in", "hook_out", "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_in", "hook_attn_out",
    "hook_mlp_in", "hook_mlp_out", "hook_q_input", "hook_k_input", "hook_v_input",
    "attn.hook_in", "attn.hook_out", "attn.hook_attn_in", "attn.hook_hidden_states", "attn.hook_q", "attn.hook_k",
    "attn.hook_v", "attn.hook_q_input", "attn.hook_k_input", "attn.hook_v_input", "attn.hook_q_normed",
    "attn.hook_k_normed", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_cos", "attn.hook_sin",
    "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "attn.hook_result",
    *(f"attn.{m}.hook_{io}" for m in ("q", "k", "v", "o", "qkv") for io in ("in", "out")),
    *(f"{m}.hook_{h}" for m in ("ln1", "ln2", "ln1_post", "ln2_post", "attn.q_norm", "attn.k_norm")
      for h in ("in", "out", "normalized", "scale")),
    "mlp.hook_in", "mlp.hook_out", "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post",
    *(f"mlp.{m}.hook_{io}" for m in ("in", "out", "gate") for io in ("in", "out")),
)
HOOK_NAME = r"blocks\.(0|[1-9][0-9]*)\.(" + "|".join(re.escape(s) for s in BLOCK_SITES) + ")"


@dataclass(frozen=True)
class Rule:
    """What one parameter may hold. ``kind``: int, number, bool, str or list; bounds are inclusive unless
    ``low_open``; a list's entries follow ``item``; ``what`` replaces the generated description."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple | None = None
    pattern: str | None = None
    nullable: bool = False
    item: Rule | None = None
    min_len: int = 0
    max_len: int | None = None
    distinct: bool = True
    requires: tuple = ()
    what: str = ""


def integer(low=None, high=None, *, nullable=False, what="") -> Rule:
    """An integer from ``low`` to ``high`` (inclusive; None: unbounded)."""
    return Rule("int", low=low, high=high, nullable=nullable, what=what)


def text(*, choices=None, pattern=None, what="") -> Rule:
    """A string: one of ``choices``, or matching the regular expression ``pattern`` whole."""
    return Rule("str", choices=tuple(choices) if choices is not None else None, pattern=pattern, what=what)


def listof(item: Rule, min_len=0, max_len=None, *, requires=(), nullable=False, what="") -> Rule:
    """A list of distinct entries, each obeying ``item``, ``min_len`` to ``max_len`` long, holding ``requires``."""
    return Rule("list", item=item, min_len=min_len, max_len=max_len, requires=requires, nullable=nullable, what=what)


NONEMPTY = r"(?s).*\S.*"
FLAG = Rule("bool")
COUNT = integer(1)
CAP = integer(1, nullable=True, what="null (no cap) or an integer >= 1")
MODEL = text(pattern=NONEMPTY, what="a model name (see lib/models/registry.py), 'org/model', a folder or 'random:<name>'")
BLOCK_SITE = text(choices=BLOCK_SITES, what="a site inside a block, as stores name it, e.g. 'hook_resid_post'")


def _profiles(splits: bool) -> Rule:
    """A dataset profile; with ``splits``, also GoEmotions' train or dev split (as stores are made)."""
    from lib.text.datasets import PROFILES

    return text(choices=(*PROFILES, *(("goemotions:train", "goemotions:dev") if splits else ())))


def _run_name(empty: str) -> Rule:
    """A run another phase's results are read from, or '' (``empty`` says what that means)."""
    return text(pattern=f"|{RUN_NAME}", what=f"'' ({empty}) or a run name (letters, digits, '_', '-')")


def _early_rules() -> dict[str, Rule]:
    """Keys of phases 00 to 02, and those every phase shares."""
    from lib.activations.names import SITES

    specs = _profiles(splits=True)
    return {
        # every phase
        "models": listof(MODEL, 1), "control_models": listof(MODEL), "seed": integer(0, 2**32 - 1),
        "device": text(pattern=r"auto|cpu|mps|cuda(:[0-9]+)?", what="auto, cpu, cuda, cuda:N or mps"),
        "dtype": text(choices=("float32", "float16", "bfloat16")), "max_per_emotion": CAP,
        "profiles": listof(specs, 1), "fit_profiles": listof(specs, 1),
        # 00: identity, parity, a greedy continuation
        "prompt": text(pattern=NONEMPTY, what="a non-empty text"), "max_new_tokens": COUNT,
        # 01: dataset
        "near_duplicate_threshold": Rule("number", 0, 1), "examples_per_emotion": COUNT,
        # 02: extraction. Layers are checked against each model's layer count when it loads (lib.activations.plan):
        # the registry does not know a model's depth without its config and weights.
        "hooks": listof(text(pattern=HOOK_NAME, what="a full hook name blocks.L.<site>, e.g. "
                                                     "'blocks.3.hook_resid_post'")),
        "layers": listof(integer(0), 1, nullable=True,
                         what="null (every layer) or a non-empty list of distinct layer indices >= 0"),
        "per_head": FLAG, "batch_size": COUNT, "goemotions_max_per_emotion": CAP,
        "token_sites": listof(text(choices=(*BLOCK_SITES, "*"), what="a site inside a block, e.g. 'hook_resid_post'"
                                                                    ", or '*' (every site)")),
        "control_profiles": listof(specs),
        "control_sites": listof(text(choices=(*SITES, *BLOCK_SITES), what="a site inside a block, e.g. "
                                                                           "'hook_resid_post' or 'resid_post'")),
        "stores_dir": text(pattern=NONEMPTY, what="a folder (relative to the project root, or absolute); not '', "
                                                  "which would put stores inside the run folder, out of later phases' reach"),
        "mlflow": FLAG, "mlflow_dir": text(pattern=NONEMPTY, what="a folder for MLflow's file store, e.g. 'mlruns'"),
    }


def _analysis_rules() -> dict[str, Rule]:
    """Keys of phases 03 to 05, which read phase 02's stores."""
    from lib.activations.store import REDUCTIONS
    from lib.geometry.directions import METHODS
    from lib.geometry.grams import KINDS
    from lib.phases.emotion_vectors import READINGS

    return {
        "activations_run": _run_name("extract small stores in the run folder"), "site": BLOCK_SITE,
        # 03: probes, directions, subspaces
        "transfer_profiles": listof(_profiles(splits=True), 2, 2, what="two profiles: [train, evaluate], e.g. "
                                                                       "['goemotions:train', 'goemotions:dev']"),
        "methods": listof(text(choices=METHODS), 1, requires=("mean_vs_neutral",)),
        "readings": listof(text(choices=READINGS), 1, requires=("sentence_end",)),
        "n_splits": integer(3),  # nested folds: train, validation, test
        "shuffled_repeats": integer(2, what="an integer >= 2 (a band over label permutations)"),
        "var_threshold": Rule("number", 0, 1, low_open=True), "max_k": COUNT, "stability_splits": COUNT,
        "n_jobs": COUNT,
        "real_text_readings": listof(text(choices=("sentence_end", "mean")), 1),
        # 04: cross-model alignment
        "reduction": text(choices=REDUCTIONS), "kinds": listof(text(choices=KINDS), 1, requires=("linear",)),
        "n_texts": integer(1, nullable=True, what="null (every text) or an integer >= 1"),
        "n_perm": integer(0, what="an integer >= 0 (0: no permutation p-values)"), "subspace_k": COUNT,
        "n_boot": integer(2, what="an integer >= 2 (bootstrap resamples of the held-out CKA)"),
        # 05: heads. probe_layer indexes layers as Python does (-1: the last); a model's depth is known only once
        # it loads, so its range is not checked here.
        "vectors_run": _run_name("no check against phase 03"),
        "prompt_profiles": listof(_profiles(splits=False), 1),
        "probe_layer": integer(what="an integer (negative: from the last layer)"),
        "n_prompts": COUNT, "top_k": COUNT, "ks": listof(COUNT, 1), "n_random": COUNT, "n_gen_tokens": COUNT,
        "n_random_null": COUNT, "positions": text(choices=("last", "all")), "all_positions": FLAG,
        "heads": text(pattern=r"|\s*[0-9]+:([0-9]+|\*)\s*(,\s*[0-9]+:([0-9]+|\*)\s*)*",
                      what="'' (none) or a head set 'L:H,L:H' ('L:*': every head of layer L)"),
    }


def _strength_rules() -> dict[str, Rule]:
    """Keys of phase 06 (head strength before and after fine-tuning)."""
    return {
        "pre_model": MODEL, "fine_model": text(pattern=r"(?s)|.*\S.*", what="'' (fine-tune pre_model here) or a "
                                                                            "model name or folder"),
        "method": text(choices=("lora", "full")), "lora_rank": COUNT, "lora_alpha": Rule("number", 0, low_open=True),
        "target_modules": listof(text(pattern=r"[A-Za-z_][A-Za-z0-9_.]*", what="a module name, e.g. 'q_proj'"),
                                 what="[] (the architecture's attention projections) or module names"),
        "steps": COUNT, "learning_rate": Rule("number", 0, 1, low_open=True), "max_text_tokens": integer(4),
        "n_train_per_emotion": integer(2), "n_probe_per_emotion": integer(5, what="an integer >= 5 (the probe's layer is chosen by 5-fold CV)"), "n_reference": COUNT, "n_eval_per_emotion": integer(2),
        "fractions": listof(Rule("number", 0, 1), 2, requires=(0.0,),
                            what="a list of distinct fractions in [0, 1] of heads removed, holding 0.0"),
        "n_random_orders": COUNT, "top_frac": Rule("number", 0, 1, low_open=True), "n_perm": COUNT,
        "eval_batch_size": COUNT,
    }


def _shared_rules() -> dict[str, Rule]:
    """Keys of phase 07 (the shared-subspace experiment on synthetic grids)."""
    weight = Rule("number", 0)
    return {
        "seeds": integer(2, what="an integer >= 2 (intervals over seeds)"),
        "encoders": listof(text(choices=("transformer", "gru")), 1),
        "alpha": Rule("number", 0, low_open=True), "alpha_sweep": listof(weight), "matched_rank_control": FLAG,
        "train_steps": COUNT, "batch_size": integer(4), "groups_per_batch": COUNT, "samples_per_task": integer(2),
        "learning_rate": Rule("number", 0, 1, low_open=True), "sharing_k": COUNT, "analysis_k": COUNT, "beta": weight,
        "d_model": COUNT, "n_layers": COUNT, "d_bottleneck": integer(2), "decoder": text(choices=("mlp", "deconv")),
        "min_objects": COUNT, "max_objects": COUNT, "max_object_size": COUNT, "n_heldout_pairs": integer(0, 24),
        "n_test": COUNT, "n_fewshot": COUNT, "fewshot_shots": COUNT, "fewshot_steps": COUNT, "fewshot_rank": COUNT,
        "fewshot_threshold": Rule("number", 0, 1), "n_eval_per_task": COUNT, "n_analysis_per_task": integer(4),
        "n_shared": integer(4), "sae_k": COUNT, "sae_l1": weight,
        "sae_steps": COUNT, "baseline_k": COUNT, "n_null": COUNT,
        "n_boot": integer(2, what="an integer >= 2 (bootstrap resamples over seeds)"),
        "workers": COUNT, "ray_address": text(pattern=r"|auto|ray://\S+|[A-Za-z0-9_.-]+:[0-9]+",
                                              what="'' (no cluster: a loop, or a local Ray with workers > 1), "
                                                   "'auto', 'host:port' or 'ray://host:port'"),
    }


def _steering_rules() -> dict[str, Rule]:
    """Keys of phase 08 (steering generation with emotion vectors)."""
    from lib.emotions import TARGET_EMOTIONS

    fraction = Rule("number", 0, 1)
    return {
        "together": listof(text(choices=TARGET_EMOTIONS), 0, 2,
                           what="[] or two distinct emotions steered at once (their interference is measured)"),
        "layer_fractions": listof(fraction, 1, what="a list of distinct fractions in [0, 1] of the model's depth"),
        "strengths": listof(Rule("number", 0, low_open=True), 1,
                            what="a list of distinct strengths > 0 (multiples of the layer's typical residual norm)"),
        "operator": text(choices=("add", "ablate", "clamp")),
        "positions": text(choices=("prompt", "generated", "both")), "norm_preserving": FLAG,
        "n_prompts": integer(4, what="an integer >= 4 (halved into selection and report prompts)"),
        "n_pairs": integer(4, what="an integer >= 4 (contrast pairs per emotion; the learning curve halves them)"),
        "curve_sizes": listof(COUNT, 1), "max_new_tokens": COUNT, "batch_rows": COUNT, "n_kl_texts": COUNT,
        "judge_max_per_label": integer(1, nullable=True, what="null (every GoEmotions train row) or an integer >= 1"),
        "max_ppl_ratio": Rule("number", 1), "min_distinct_ratio": Rule("number", 0, 1),
        "prompt_template": text(pattern=r"(?s)(?=.*\{emotion\})(?=.*\{prompt\}).*",
                                what="a text holding {emotion} and {prompt}"),
        "n_perm": COUNT, "prompt_format": text(choices=("chat", "plain")),
        "pair_read": text(choices=("last", "mean", "mean_after_first")),
    }


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, Rule], dict[str, dict[str, Rule]]]:
    """(rules shared by every phase, each phase's own narrower rules); built on first use (lazy imports)."""
    by_stem = {
        "01_dataset": {"profiles": listof(_profiles(splits=False), 1)},  # load_profiles reads whole profiles
        "02_activations": {"dtype": text(choices=("float16", "float32"))},  # the store's dtype
        "03_emotion_vectors": {"fit_profiles": listof(_profiles(splits=True), 2, what="a list of at least 2 distinct "
                                                      "profiles (stability compares the first two)")},
        "06_head_strength": _strength_rules(),
        "07_shared_subspace": _shared_rules(),
        "08_steering": _steering_rules(),
    }
    return {**_early_rules(), **_analysis_rules()}, by_stem


def rule_for(stem: str, key: str) -> Rule | None:
    """The rule of ``key`` in phase ``stem``, or None if none is declared."""
    if key == "emotions":
        from lib.phases import emotion_choices

        nullable = stem == "02_activations"  # there a filter over the dataset's rows; null keeps them all
        return listof(text(choices=emotion_choices(stem)), 1, nullable=nullable)
    shared, by_stem = _table()
    return by_stem.get(stem, {}).get(key, shared.get(key))


def problem(rule: Rule, value) -> str | None:
    """None if ``value`` obeys ``rule``; else a hint on what is wrong ('' when the value says it all)."""
    if value is None:
        return None if rule.nullable else ""
    if rule.kind == "list":
        return _list_problem(rule, value)
    if rule.kind == "bool":
        return None if isinstance(value, bool) else ""
    if rule.kind in ("int", "number"):
        ok = isinstance(value, int) if rule.kind == "int" else isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or isinstance(value, bool):
            return ""
        low_ok = rule.low is None or (value > rule.low if rule.low_open else value >= rule.low)
        return None if low_ok and (rule.high is None or value <= rule.high) else ""
    if not isinstance(value, str):
        return ""
    if rule.choices is not None and value not in rule.choices:
        return f"closest: {difflib.get_close_matches(value, rule.choices, n=3, cutoff=0.6)}"
    if rule.pattern is not None and not re.fullmatch(rule.pattern, value):
        return ""
    return None


def _list_problem(rule: Rule, value) -> str | None:
    if not isinstance(value, list) or len(value) < rule.min_len or (rule.max_len and len(value) > rule.max_len):
        return ""
    for entry in value:
        hint = problem(rule.item, entry)
        if hint is not None:
            return f"bad entry {entry!r}" + (f"; {hint}" if hint else "")
    repeated = [v for i, v in enumerate(value) if v in value[:i]]
    if rule.distinct and repeated:
        return f"repeated: {repeated}"
    missing = [r for r in rule.requires if r not in value]
    return f"missing {missing}" if missing else None


def describe(rule: Rule) -> str:
    """What ``rule`` allows, in words."""
    if rule.what:
        return rule.what
    out = "null or " if rule.nullable else ""
    if rule.kind == "list":
        if rule.min_len > 1:
            size = f"a list of {'exactly' if rule.min_len == rule.max_len else 'at least'} {rule.min_len}"
        else:
            size = "a non-empty list" if rule.min_len else "a list"
        out += f"{size} of {'distinct ' if rule.distinct else ''}entries, each {describe(rule.item)}"
        return out + (f", including {list(rule.requires)}" if rule.requires else "")
    if rule.kind == "bool":
        return out + "true or false"
    if rule.kind == "str":
        return out + (f"one of {list(rule.choices)}" if rule.choices is not None else "a text")
    noun = "an integer" if rule.kind == "int" else "a number"
    if rule.low is not None and rule.high is not None and not rule.low_open:
        return f"{out}{noun} from {rule.low} to {rule.high}"
    bounds = [f"{'>' if rule.low_open else '>='} {rule.low}" if rule.low is not None else "",
              f"<= {rule.high}" if rule.high is not None else ""]
    return f"{out}{noun} " + " and ".join(b for b in bounds if b) if any(bounds) else out + noun


def show(value) -> str:
    """A value as a params file writes it: null, true, false, else Python's repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
