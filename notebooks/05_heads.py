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
# change what the model represents and what it writes? Every effect reported here is measured on
# prompts that did not choose the heads.
#
# **Inputs.** Phase 02's stores (`activations_run`) to fit the readout probe and the direction at
# `probe_layer` (the last layer by default, so every head can affect them); authored prompts
# (`prompt_profiles`); the keyword lexicon in `data/lexicon/`. With `activations_run` empty (smoke
# runs) small stores are extracted here.
#
# **Split.** For each model and emotion, the emotion and neutral rows of the most common token length
# are split into a *selection half* and an *evaluation half* by text group (near-identical texts stay
# in one half), `n_prompts` (emotion, neutral) pairs per half; row i of each role is a pair for
# patching. Screening, the single-head sweeps and attribution patching rank heads on the selection
# half only; the top-k curve, the top-k set against random sets and generated text are measured on
# the evaluation half. The probe and the direction are fitted on the stored rows minus every row whose
# text group holds a prompt of any emotion. `summary.json` records each split (`splits`).
#
# **Outputs.** `screening.csv`, `sweeps.csv` (every head, exact), `attribution.csv`,
# `top_heads.csv`, `topk_curve.csv`, `top_vs_random.csv`, `generations.csv`,
# `generation_summary.csv`, `generation_vs_random.csv`, `prompts.csv` (with each row's half),
# `timings.csv`, and `head_set.csv` for the head set `heads`.
#
# **Definitions** (A = a head's attention pattern, z_h its output before the output projection W_O,
# d the unit mean-vs-neutral emotion direction; screening scores are emotion minus neutral prompts,
# means over prompts):
# - readout: the probe's *log-odds* of the emotion at the last token, log p - log(1 - p) (it does not
#   saturate near 0 or 1 as the probability does; the probability is kept beside it), and the
#   log-probability that the next token is one of the emotion's continuation words. Effects are
#   changes (intervened minus clean), means over prompts;
# - position rule (`positions`, "last" by default): heads are edited at the last position for the
#   ranking sweeps, the head sets, the random sets and generation alike (in generation, the prompt's
#   last position and every generated position, each the last when it predicts); with "all", at every
#   position. `all_positions` adds descriptive all-positions sweeps that rank nothing;
# - mean ablation is position-matched: z_h at position p is replaced by the head's mean z at position p
#   over the reference set, the **neutral prompts of the selection half** (same token length; a
#   generated position gets the mean at the last prompt position). Patching copies z_h from the paired
#   emotion prompt into the neutral one (and the reverse). Interventions edit `blocks.L.attn.hook_z`
#   (query heads under grouped-query attention);
# - attention shift, last position: sum over span tokens k of A[last, k]; all positions: the mean over
#   query positions q of sum over span tokens k <= q of A[q, k];
# - a head's contribution to the residual stream: z_h W_O^h; on Gemma 3, whose post-attention RMSNorm
#   rescales the attention output a before it joins the residual stream, its linearisation with the
#   norm's scale frozen at the clean run, (z_h W_O^h) * (1 + w) / rms(a) (the heads' contributions then
#   add up to the norm's output);
# - output shift: the norm of that contribution at the last position, and averaged over positions;
#   direct effect: the contribution at the last position projected on d;
# - attribution patching: (z_h(emotion) - z_h(neutral)) . dm/dz_h on the neutral prompt, m the
#   probe's log-odds, one forward and one backward pass for all heads;
# - top-k vs random: the k heads whose single mean ablation lowers the log-odds most on the selection
#   half, against `n_random_null` random sets of k heads, on the evaluation half. p = (1 + #random sets
#   at least as extreme) / (1 + `n_random_null`), Benjamini-Hochberg adjusted over every model,
#   emotion, intervention and metric. Generated text uses `n_random` of those sets and gets no p-value
#   (its floor would be 1 / (1 + `n_random`)): the top set's change and interval stand beside the
#   random sets' band.

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
n_random_null = 19
n_random = 3
n_gen_tokens = 8
positions = "last"
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
from lib.text.datasets import AUTHORED_PROFILES, load_profiles
from lib.phases.heads import REFERENCE, HeadsConfig, analyse_models
from lib.phases.heads_tables import (attribution_panels, direction_agreement, error_bars, findings,
                                     generation_band_table, generation_examples, generation_table, head_set_table,
                                     probe_sweeps, prompt_counts, save_tables, scaled_screening, spearman_pivot,
                                     summary_text, time_per_model, top_head_bars, versus_random_points,
                                     versus_random_table)
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
config = HeadsConfig(probe_layer=probe_layer, n_prompts=n_prompts, top_k=top_k, ks=tuple(ks), n_random_null=n_random_null,
                     n_random=n_random, n_gen_tokens=n_gen_tokens, positions=positions, all_positions=all_positions,
                     heads=heads, seed=seed)

# %% [markdown]
# ## Per model and emotion: every head, every score
# The probe (StandardScaler + logistic regression, as in phase 03) and the direction are fitted on
# the sentence-end `hook_resid_post` of `probe_layer`, on the stored rows outside the prompts' text
# groups. A chosen head set (`heads`) is measured first, so a bad set fails in seconds, not after the
# sweeps. The table gives the pairs per half and their token length.

# %%
run = analyse_models(models, emotions, stores, fit_profiles, prompt_rows, lexicon, config,
                     authored=load_profiles(list(AUTHORED_PROFILES)), progress=print if show_progress() else None)
tables = run.tables
display(prompt_counts(tables["prompts"]))
display(time_per_model(tables["timings"]))

# %% [markdown]
# ## Screening heatmaps
# Selection half. Each score per layer (rows) and head (columns), scaled by its largest absolute
# value per model, emotion and score so the five fit one colour scale (hover shows the raw value).

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
# Selection half. The change in the probe's log-odds of the emotion when each head alone is
# mean-ablated on the emotion prompts, or patched emotion -> neutral (and back), at the positions of
# the rule (and at all positions when `all_positions` adds the descriptive sweeps).

# %%
sweeps = tables["sweeps"]
sw = probe_sweeps(sweeps)
for m in models:
    sub = sw[sw["model"] == m]
    lim = float(sub["effect"].abs().max()) or 1.0
    px.density_heatmap(sub, x="head", y="layer", z="effect", facet_col="what", facet_row="emotion", histfunc="sum",
                       nbinsx=int(sub["head"].max()) + 1, nbinsy=int(sub["layer"].max()) + 1,
                       color_continuous_scale="RdBu_r", range_color=[-lim, lim],
                       title=f"{m}: change in the probe's log-odds of the emotion, one head at a time",
                       height=250 * len(emotions)).update_layout(coloraxis_colorbar_title="change").for_each_annotation(
        lambda an: an.update(text=an.text.split("=", 1)[-1])).show()

# %% [markdown]
# ## Top heads, chosen on one half and measured on the other
# Heads ranked by the drop in the emotion's log-odds when mean-ablated alone on the selection half;
# beside each, the same drop on the evaluation half. 95% intervals: 1.96 standard errors over prompts.
# The selection drops are the winners of a search over every head, so they are biased upward; the
# evaluation drops are not.

# %%
px.bar(top_head_bars(tables["top_heads"]), x="rank", y="drop", error_y="ci", color="half", barmode="group",
       facet_col="emotion", facet_row="model", hover_data=["head_label"],
       title="Top heads per emotion: drop in the probe's log-odds when ablated, selection vs evaluation half"
       ).for_each_annotation(lambda an: an.update(text=an.text.split("=", 1)[-1])).show()

# %% [markdown]
# ## Top-k heads against random heads, on held-out prompts
# On the evaluation half: the change when the top-k heads are intervened on together (mean-ablated on
# the emotion prompts, patched emotion -> neutral into the neutral prompts), with its 95% bootstrap
# interval over prompts, beside the mean and 95% band of `n_random_null` random sets of k heads.
# Ablation is expected to lower the emotion (p counts random sets lowering it at least as much),
# patching to raise it. Raw p and Benjamini-Hochberg adjusted p over the whole table.

# %%
tvr = tables["top_vs_random"]
px.scatter(versus_random_points(tvr), x="emotion", y="y", color="what", error_y="hi", error_y_minus="lo",
           facet_col="intervention", facet_row="model", labels={"y": "change in log-odds"},
           title="Top-k heads vs random sets of k heads, evaluation half: change in the probe's log-odds"
           ).for_each_annotation(lambda an: an.update(text=an.text.split("=", 1)[-1])).show()
display(versus_random_table(tvr))

# %% [markdown]
# ## A chosen head set
# `heads` (e.g. `"0:0"`, the seed's head, or `"3:1,5:*"`) zero- and mean-ablated on the evaluation
# half's emotion prompts under the position rule: changes against the clean run with 95% bootstrap
# intervals over prompts.

# %%
if heads:
    display(head_set_table(run.head_set))

# %% [markdown]
# ## Ablating top-k heads together
# Evaluation half: the change in the emotion's log-odds as the first k heads of the selection half's
# ranking are mean-ablated together, with 95% bootstrap intervals.

# %%
curve = tables["topk_curve"].assign(lo=lambda d: d["probe_logodds_change"] - d["logodds_lo"],
                                    hi=lambda d: d["logodds_hi"] - d["probe_logodds_change"])
px.line(curve, x="k", y="probe_logodds_change", error_y="hi", error_y_minus="lo", color="emotion",
        facet_col="model", markers=True, log_x=True, color_discrete_map=EMOTION_COLORS, hover_data=["heads"],
        title="Change in the probe's log-odds, top-k heads mean-ablated together (evaluation half)").update_xaxes(
    tickvals=ks).for_each_annotation(lambda an: an.update(text=an.text.split("=", 1)[-1])).show()

# %% [markdown]
# ## Generated text
# Evaluation half. `n_gen_tokens` sampled tokens (top-50, temperature 1, the same seed in every
# condition) from each prompt: baseline, the top-k heads, and each of `n_random` random sets of k
# heads, under the position rule. Ablation runs on the emotion prompts; patching copies the heads'
# outputs from the emotion prompts into the neutral ones. Bars: means with 95% bootstrap intervals over
# prompts. The table sets the top set's change beside the random sets' band; with `n_random` random
# sets a p-value could not go below 1 / (1 + `n_random`), so none is given.

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
display(generation_band_table(tables["generation_vs_random"]))
display(generation_table(gs))
display(generation_examples(tables["generations"]))

# %% [markdown]
# ## Attribution patching against exact patching
# Selection half. Each point is one head (patching emotion -> neutral, on the log-odds); the title
# gives Spearman's rank correlation.

# %%
rho = tables["attribution_spearman"]
display(spearman_pivot(rho))
attr = attribution_panels(tables["attribution"], rho)
px.scatter(attr, x="exact", y="attribution", color="positions", facet_col="panel", facet_col_wrap=3,
           hover_data=["layer", "head"], height=300 * -(-attr["panel"].nunique() // 3),
           title="Attribution estimate vs exact patching effect on the probe's log-odds (Spearman rho per panel)"
           ).update_xaxes(matches=None).update_yaxes(matches=None).for_each_annotation(
    lambda an: an.update(text=an.text.split("=", 1)[-1])).show()

# %% [markdown]
# ## Save
# With `vectors_run` set, the directions used here are compared with phase 03's (same function; here
# without the prompts' rows, so close to but not exactly 1).

# %%
save_tables(out, run)
if vectors_run:
    agree = direction_agreement(run, vectors_run)
    display(Markdown(f"Cosine of our directions with phase 03's: min {min(agree.values()):.6f}"))
summary = summary_text(run)
save_summary(out, summary=summary, models=run.identities, splits=run.splits, findings=findings(run),
             top_vs_random=tvr.to_dict("records"), positions=positions, readout="probe log-odds of the emotion",
             mean_ablation_reference=f"{REFERENCE}, position-matched")
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
assert screen.groupby(["model", "emotion", "score"])["value"].nunique().gt(1).all()  # not degenerate
assert sweeps["effect"].notna().all() and tvr["p_value"].between(1 / (1 + n_random_null), 1).all()
assert (tvr["p_adjusted"] >= tvr["p_value"]).all() and (tvr["n_random"] == n_random_null).all()
assert (tvr["change_lo"] <= tvr["change"]).all() and (tvr["change"] <= tvr["change_hi"]).all()
assert all(not set(g.loc[g["half"] == "selection", "group"]) & set(g.loc[g["half"] == "evaluation", "group"])
           for _, g in tables["prompts"].groupby(["model", "prompt_emotion"]))  # per model and emotion, no shared text group
assert tables["generations"]["vader"].between(-1, 1).all() and "p_value" not in tables["generation_vs_random"]
assert sw.groupby(["model", "emotion", "what"]).size().groupby("model").nunique().eq(1).all()  # every head, every sweep
if vectors_run:
    assert min(agree.values()) > 0.95
