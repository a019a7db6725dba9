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
# # 05 Attention heads: screening, exact ablation and patching, generated text
#
# **Question.** Which attention heads carry gratitude, anger and apology: which ones attend to the
# emotion-bearing words, write along the emotion direction, and, when removed or transplanted,
# change what the model represents and what it writes?
#
# **Inputs.** Phase 02's stores (`activations_run`) to fit the phase-03 probe and direction at
# `probe_layer` (the last layer by default, so every head can affect them); authored prompts
# (`prompt_profiles`), for each emotion `n_prompts` emotion prompts and as many neutral prompts of
# the same token length (row i of each is a pair for patching); the keyword lexicon in
# `data/lexicon/`. With `activations_run` empty (smoke runs) small stores are extracted here.
#
# **Outputs.** `screening.csv`, `sweeps.csv` (every head, exact), `attribution.csv`,
# `top_heads.csv`, `topk_curve.csv`, `generations.csv`, `generation_summary.csv`,
# `permutation.csv`, `prompts.csv`, `timings.csv`, and `head_set.csv` for the head set `heads`.
#
# **Definitions** (emotion minus neutral, means over prompts; A = the head's attention pattern,
# z_h its output before the output projection W_O, d the unit mean-vs-neutral emotion direction):
# - attention shift, last position: sum over span tokens k of A[last, k]; all positions: the mean
#   over query positions q of sum over span tokens k <= q of A[q, k];
# - output shift: ||z_h W_O^h|| at the last position, and averaged over positions;
# - direct effect: (z_h W_O^h) . d at the last position, the head's own push along d;
# - attribution patching: (z_h(emotion) - z_h(neutral)) . dP/dz_h on the neutral prompt, one
#   forward and one backward pass for all heads, where P is the probe's emotion probability;
# - exact ablation and patching replace z_h (`blocks.L.attn.hook_z`, query heads under grouped-query
#   attention): mean ablation uses the head's mean z over all prompts and positions; patching copies
#   z_h from the paired emotion prompt into the neutral one (and the reverse), at the last position
#   or at all positions. Effects are changes in P at the last token and in the log-probability that
#   the next token is one of the emotion's continuation words.

# %% tags=["parameters"]
models = ["tiny-gpt2", "tiny-llama"]
fit_profiles = ["baseline", "extended"]
prompt_profiles = ["baseline", "extended"]
emotions = ["gratitude", "anger", "apology"]
activations_run = ""
vectors_run = ""
probe_layer = -1
n_prompts = 4
top_k = 2
ks = [1, 2, 4]
n_random = 3
n_gen_tokens = 8
all_positions = True
heads = "0:0"
max_per_emotion = 20
seed = 0
output_dir = ""

# %%
import numpy as np
import plotly.express as px
import torch
from IPython.display import Markdown, display

from lib.settings import show_progress
from lib.activations.runs import obtain_stores
from lib.text.datasets import load_profiles
from lib.phases.heads import (HeadsConfig, analyse_models, attribution_panels, direction_agreement, error_bars,
                              generation_examples, generation_table, head_set_table, permutation_pivot,
                              probe_sweeps, prompt_counts, save_tables, scaled_screening, spearman_pivot,
                              summary_text, time_per_model, top_head_bars)
from lib.report.plots import EMOTION_COLORS, setup_plotly
from lib.pipeline.provenance import save_summary
from lib.pipeline.results import prepare_output_dir, provenance_markdown
from lib.text.generated import load_lexicon

setup_plotly()
np.random.seed(seed)
torch.manual_seed(seed)
out = prepare_output_dir(output_dir)
stores = obtain_stores(models, fit_profiles, activations_run, out, max_per_emotion=max_per_emotion, seed=seed)
lexicon = load_lexicon()
prompt_rows = load_profiles(prompt_profiles)
config = HeadsConfig(probe_layer=probe_layer, n_prompts=n_prompts, top_k=top_k, ks=tuple(ks), n_random=n_random,
                     n_gen_tokens=n_gen_tokens, all_positions=all_positions, heads=heads, seed=seed)

# %% [markdown]
# ## Per model and emotion: every head, every score
# The probe (StandardScaler + logistic regression, as in phase 03) and the direction are fitted on
# the sentence-end `hook_resid_post` of `probe_layer` over every authored row. A chosen head set
# (`heads`) is measured first, so a bad set fails in seconds, not after the sweeps.

# %%
run = analyse_models(models, emotions, stores, fit_profiles, prompt_rows, lexicon, config,
                     progress=print if show_progress() else None)
tables = run.tables
display(prompt_counts(tables["prompts"]))
display(time_per_model(tables["timings"]))

# %% [markdown]
# ## Screening heatmaps
# Each score per layer (rows) and head (columns), scaled by its largest absolute value per model,
# emotion and score so the five fit one colour scale (hover shows the raw value).

# %%
screen = scaled_screening(tables["screening"])
for m in models:
    sub = screen[screen["model"] == m]
    px.density_heatmap(sub, x="head", y="layer", z="scaled", facet_col="score", facet_row="emotion", histfunc="sum",
                       nbinsx=int(sub["head"].max()) + 1, nbinsy=int(sub["layer"].max()) + 1,
                       color_continuous_scale="RdBu_r", range_color=[-1, 1], hover_data=["value"],
                       title=f"{m}: screening scores, emotion minus neutral (scaled)", height=250 * len(emotions)
                       ).update_layout(coloraxis_colorbar_title="scaled").for_each_annotation(
        lambda an: an.update(text=an.text.split("=", 1)[-1])).show()

# %% [markdown]
# ## Exact single-head sweeps
# The change in the probe's emotion probability when each head alone is mean-ablated on the emotion
# prompts, or patched emotion -> neutral (and back), at the last position or at all positions.

# %%
sweeps = tables["sweeps"]
sw = probe_sweeps(sweeps)
for m in models:
    sub = sw[sw["model"] == m]
    lim = float(sub["effect"].abs().max()) or 1.0
    px.density_heatmap(sub, x="head", y="layer", z="effect", facet_col="what", facet_row="emotion", histfunc="sum",
                       nbinsx=int(sub["head"].max()) + 1, nbinsy=int(sub["layer"].max()) + 1,
                       color_continuous_scale="RdBu_r", range_color=[-lim, lim],
                       title=f"{m}: change in the probe's emotion probability, one head at a time",
                       height=250 * len(emotions)).update_layout(coloraxis_colorbar_title="change").for_each_annotation(
        lambda an: an.update(text=an.text.split("=", 1)[-1])).show()

# %% [markdown]
# ## Top heads
# Ranked by the drop in the emotion's probe probability when mean-ablated (all positions), with
# 95% intervals (1.96 standard errors over prompts).

# %%
px.bar(top_head_bars(tables["top_heads"]), x="rank", y="drop", error_y="ci", color="emotion", facet_col="emotion",
       facet_row="model", text="head_label", color_discrete_map=EMOTION_COLORS,
       title="Top heads per emotion (bar labels layer:head): drop in the probe's emotion probability when ablated"
       ).for_each_annotation(lambda an: an.update(text=an.text.split("=", 1)[-1])).show()
perm = tables["permutation"]
display(Markdown("**Top-k heads vs k random heads** (effect signed so that larger = more emotion removed by "
                 "ablation, or added by patching; p = (1 + #random >= top) / (1 + random sets)):"))
display(permutation_pivot(perm))

# %% [markdown]
# ## A chosen head set
# `heads` (e.g. `"0:0"`, the seed's head, or `"3:1,5:*"`) zero- and mean-ablated on the emotion
# prompts: changes against the clean run with 95% bootstrap intervals over prompts.

# %%
if heads:
    display(head_set_table(run.head_set))

# %% [markdown]
# ## Ablating top-k heads together

# %%
px.line(tables["topk_curve"], x="k", y="drop", color="emotion", facet_col="model", markers=True, log_x=True,
        color_discrete_map=EMOTION_COLORS, hover_data=["heads"],
        title="Drop in the probe's emotion probability, top-k heads mean-ablated together").update_xaxes(
    tickvals=ks).for_each_annotation(lambda an: an.update(text=an.text.split("=", 1)[-1])).show()

# %% [markdown]
# ## Generated text
# `n_gen_tokens` sampled tokens (top-50, temperature 1, the same seed in every condition) from each
# prompt: baseline, the top-k heads, and each of `n_random` random sets of k heads. Ablation runs on
# the emotion prompts; patching copies the heads' outputs from the emotion prompts into the neutral
# ones over the prompt. Bars: means with 95% bootstrap intervals over prompts.

# %%
gs = tables["generation_summary"]
px.bar(error_bars(gs, "ablate", "vader"), x="condition", y="vader", error_y="hi", error_y_minus="lo", color="kind",
       facet_col="emotion", facet_row="model",
       title="Ablation: VADER compound sentiment of continuations of emotion prompts"
       ).for_each_annotation(lambda an: an.update(text=an.text.split("=", 1)[-1])).show()
px.bar(error_bars(gs, "patch", "keywords"), x="condition", y="keywords", error_y="hi", error_y_minus="lo",
       color="kind", facet_col="emotion", facet_row="model",
       title="Patching emotion -> neutral: emotion keywords per continuation of neutral prompts"
       ).for_each_annotation(lambda an: an.update(text=an.text.split("=", 1)[-1])).show()
display(generation_table(gs))
display(generation_examples(tables["generations"]))

# %% [markdown]
# ## Attribution patching against exact patching
# Each point is one head (patching emotion -> neutral); the title gives Spearman's rank correlation.

# %%
rho = tables["attribution_spearman"]
display(spearman_pivot(rho))
attr = attribution_panels(tables["attribution"], rho)
px.scatter(attr, x="exact", y="attribution", color="positions", facet_col="panel", facet_col_wrap=3,
           hover_data=["layer", "head"], height=300 * -(-attr["panel"].nunique() // 3),
           title="Attribution estimate vs exact patching effect on the probe probability (Spearman rho per panel)"
           ).update_xaxes(matches=None).update_yaxes(matches=None).for_each_annotation(
    lambda an: an.update(text=an.text.split("=", 1)[-1])).show()

# %% [markdown]
# ## Save
# With `vectors_run` set, the directions used here are checked against phase 03's (same function, same rows).

# %%
save_tables(out, run)
if vectors_run:
    agree = direction_agreement(run, vectors_run)
    display(Markdown(f"Cosine of our directions with phase 03's: min {min(agree.values()):.6f}"))
summary = summary_text(run, top_k)
save_summary(out, summary=summary, models=run.identities)
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
assert screen.groupby(["model", "emotion", "score"])["value"].nunique().gt(1).all()  # not degenerate
assert sweeps["effect"].notna().all() and perm["p_value"].between(0, 1).all()
assert tables["generations"]["vader"].between(-1, 1).all()
assert sw.groupby(["model", "emotion", "what"]).size().groupby("model").nunique().eq(1).all()  # every head, every sweep
if vectors_run:
    assert min(agree.values()) > 0.9999
