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
# # 06 Head strength before and after fine-tuning
#
# **Question.** Do the attention heads that are strong in a model before fine-tuning become the ones
# that matter after it? For every head h we measure its activation strength R_h before and after a
# short fine-tune, and its importance for the fine-tuned objective, and ask whether strength before
# predicts importance after.
#
# **Inputs.** `pre_model` (the default model, SmolLM2-135M) and either `fine_model` (any checkpoint of
# the same architecture) or, when that is empty, a fine-tune made here: GoEmotions *train* comments
# as "Text: <comment>\nEmotion:" -> " gratitude" / " anger" / " apology" / " neutral", through LoRA
# (`peft`; `method: full` trains every weight), seeded, resumable from checkpoints. The merged weights
# are saved as safetensors with a manifest under `results/06_head_strength/finetunes/` and reused by
# later runs.
#
# **Split.** Fine-tuning uses `n_train_per_emotion` train comments per label; the mean-ablation
# reference set is `n_reference` other train comments. Balanced GoEmotions *dev* comments are halved
# by text group: the *measure* half gives R_h, importance, their correlations, and the orders in which
# heads are pruned; the *prune* half gives the pruning curves. The objective before and after is
# scored on all dev rows, which chose nothing. `summary.json` records the splits.
#
# **Definitions.** z_h is head h's output before the output projection (`blocks.L.attn.hook_z`,
# query heads under grouped-query attention); y_h = z_h W_O^h its contribution to the attention output
# (no bias; on Gemma 3 before the post-attention norm). Weights are raw (no folding), the same for both
# models.
# - R_h: per prompt, the mean of ||y_h||_2 over its real tokens (padding masked), then the mean over
#   prompts. Also at the last token, and ||z_h||, because a fine-tune that changes W_O changes R_h
#   mechanically.
# - the objective: -log p(first token of the right label | prompt) over the full vocabulary at the
#   prompt's last position; accuracy: the right label's first token scores highest among the four.
# - ablation importance: the loss increase when h alone is mean-ablated at the answer position (its z
#   replaced by its mean there over the reference set), exact, with the project's fast sweep;
# - gradient importance (Michel et al. 2019): E_x |dL/d xi_h| for a gate xi_h = 1 on z_h at every
#   position, one forward and one backward pass;
# - agreement: Spearman rho over heads, a 95% bootstrap interval over the measure half's prompts and a
#   permutation p over heads, Benjamini-Hochberg adjusted over the table; top 10% overlap against its
#   chance value k^2 / N with a hypergeometric p;
# - pruning: heads removed (mean-ablated at the answer position, together) in order of increasing R_h
#   or importance (the signed ablation loss increase, its size, Michel's gradient score), and in
#   `n_random_orders` random orders.
#
# **Outputs.** `heads.csv` (every head: strength and importance before and after), `agreement.csv`,
# `pruning.csv`, `objective.csv`, `training.csv`, `timings.csv`, `finetune.json`, and the command
# line's files `pre_tuned_activations.json`, `fine_tuned_activations.json`, `comparison.json`,
# `comparison_heatmap.png` / `.html`.

# %% tags=["parameters"]
pre_model = "tiny-llama"
fine_model = ""
emotions = ["gratitude", "anger", "apology", "neutral"]
method = "lora"
lora_rank = 4
lora_alpha = 8.0
target_modules = []
steps = 6
batch_size = 4
learning_rate = 0.001
max_text_tokens = 16
n_train_per_emotion = 8
n_probe_per_emotion = 6
n_reference = 8
n_eval_per_emotion = 6
fractions = [0.0, 0.25, 0.5]
n_random_orders = 3
top_frac = 0.1
n_boot = 200
n_perm = 200
eval_batch_size = 8
device = "cpu"
dtype = "float32"
seed = 0
output_dir = ""

# %%
import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import torch
from IPython.display import Markdown, display

from lib.paths import RESULTS
from lib.phases.head_strength import StrengthConfig, run_phase
from lib.phases.head_strength_tables import (agreement_table, external_outputs, findings, head_grid, loss_at,
                                             named_curves, objective_table, pruning_band, save_tables,
                                             summary_text)
from lib.pipeline.provenance import save_summary
from lib.pipeline.results import prepare_output_dir, provenance_markdown
from lib.report.plots import setup_plotly

setup_plotly()
np.random.seed(seed)
torch.manual_seed(seed)
out = prepare_output_dir(output_dir)
config = StrengthConfig(pre_model=pre_model, fine_model=fine_model, emotions=tuple(emotions), method=method,
                        lora_rank=lora_rank, lora_alpha=lora_alpha, target_modules=tuple(target_modules), steps=steps,
                        batch_size=batch_size, learning_rate=learning_rate, max_text_tokens=max_text_tokens,
                        n_train_per_emotion=n_train_per_emotion, n_probe_per_emotion=n_probe_per_emotion,
                        n_reference=n_reference,
                        n_eval_per_emotion=n_eval_per_emotion, fractions=tuple(fractions),
                        n_random_orders=n_random_orders, top_frac=top_frac, n_boot=n_boot, n_perm=n_perm,
                        eval_batch_size=eval_batch_size, device=device, dtype=dtype, seed=seed)

# %% [markdown]
# ## Fine-tune and measure
# Under `make reproduce` the fine-tune is kept in `results/06_head_strength/finetunes/` (named by the base
# model's weights hash and every setting it depends on) and reused; a killed fine-tune resumes from its last checkpoint.
# Smoke and interactive runs fine-tune into a temporary folder.

# %%
run = run_phase(config, out, RESULTS / "06_head_strength" / "finetunes" if output_dir else None)
tables = run.tables
display(tables["timings"])

# %% [markdown]
# ## The objective before and after
# Accuracy and loss on every dev row, means with 95% bootstrap intervals over rows, beside a logistic
# probe on the base model's residual stream at the prompt's last token (its layer chosen by grouped
# cross-validation on train rows, scored once on dev) and chance.

# %%
display(objective_table(tables["objective"]))
acc = tables["objective"].query("metric == 'accuracy'")
px.bar(acc, x="model", y="mean", error_y=acc["ci_high"] - acc["mean"], error_y_minus=acc["mean"] - acc["ci_low"],
       title="Label accuracy on GoEmotions dev (95% bootstrap intervals)").show()
if len(tables["training"]):
    px.line(tables["training"], x="step", y="loss", title="Fine-tuning loss per step (train batches)").show()

# %% [markdown]
# ## Strength before and after
# R_h per layer (rows) and head (columns) before and after fine-tuning, and their ratio; the ratio of
# ||z_h|| beside it tells a change in what the head computes from a change in its output projection.

# %%
grid = head_grid(tables["heads"], ["R_pre", "R_fine"])
px.imshow(grid, facet_col=0, labels={"x": "head", "y": "layer", "color": "R_h"}, aspect="auto",
          title="R_h before (left) and after (right) fine-tuning").show()
ratios = head_grid(tables["heads"], ["R_ratio", "z_ratio"])
px.imshow(ratios, facet_col=0, labels={"x": "head", "y": "layer", "color": "after / before"}, aspect="auto",
          color_continuous_scale="RdBu_r", color_continuous_midpoint=1.0,
          title="Ratios after / before: R_h (left) and ||z_h|| (right)").show()

# %% [markdown]
# ## Strength before against importance after
# Each point is one head (measure half). The table gives Spearman rho with its interval, the
# permutation p over heads (raw and BH-adjusted over the table) and the top 10% overlap.

# %%
display(agreement_table(tables["agreement"]))
px.scatter(tables["heads"], x="R_pre", y="ablation_fine", color="layer", hover_data=["head"], log_x=True,
           title="R_h before fine-tuning vs ablation importance after (loss increase)").show()
ag = tables["agreement"]
px.scatter(ag, x="rho", y="label", color="importance", error_x=ag["ci_high"] - ag["rho"],
           error_x_minus=ag["rho"] - ag["ci_low"],
           title="Spearman rho with the importance after fine-tuning (95% bootstrap intervals)").show()

# %% [markdown]
# ## Pruning curves
# The prune half's loss as heads are removed together, weakest or least important first (orders chosen
# on the measure half), against the random orders' median and 95% band. Michel et al. (2019) removed
# 20-40% of heads with little loss.

# %%
band, named = pruning_band(tables["pruning"]), named_curves(tables["pruning"])
fig = px.line(named, x="fraction", y="loss", color="order", markers=True,
              title="Loss on the prune half as heads are removed")
fig.add_trace(go.Scatter(x=list(band["fraction"]) + list(band["fraction"])[::-1],
                         y=list(band["high"]) + list(band["low"])[::-1], fill="toself", opacity=0.25,
                         line={"width": 0}, name=f"random orders, 95% band"))
fig.show()
display(loss_at(tables["pruning"], 0.3))

# %% [markdown]
# ## Save

# %%
save_tables(out, run)
summary = summary_text(run)
save_summary(out, summary=summary, models=run.identities, splits=run.splits, findings=findings(run),
             external_outputs=external_outputs(run) if output_dir else [])
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
h = tables["heads"]
assert len(h) == h[["layer", "head"]].drop_duplicates().shape[0] and (h["R_pre"] > 0).all() and (h["R_fine"] > 0).all()
assert ((ag["ci_low"] <= ag["rho"]) & (ag["rho"] <= ag["ci_high"])).all() and (ag["p_adjusted"] >= ag["p_value"]).all()
assert tables["pruning"].groupby("order")["fraction"].nunique().eq(len(fractions)).all()
assert set(run.splits) >= {"dev_halves"}
