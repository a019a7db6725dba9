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
import json

import numpy as np
import pandas as pd
import plotly.express as px
import torch
from IPython.display import Markdown, display

from lib.settings import show_progress
from lib.activations.runs import obtain_stores
from lib.text.datasets import load_profiles
from lib.geometry.directions import diff_of_means
from lib.phases.heads import analyse_emotion, choose_prompts, head_set_effects
from lib.interventions.sweep import continuation_ids, readout_from_probe
from lib.activations.layerwise import load_layers
from lib.models.loading import load_model
from lib.paths import RESULTS
from lib.report.plots import EMOTION_COLORS, setup_plotly
from lib.geometry.probes import fit_probe
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

# %% [markdown]
# ## Per model and emotion: every head, every score
# The probe (StandardScaler + logistic regression, as in phase 03) and the direction are fitted on
# the sentence-end `hook_resid_post` of `probe_layer` over every authored row.

# %%
parts, identities, readouts, chosen = {}, [], {}, []
for m in models:
    lm = load_model(m, device="cpu")
    identities.append(lm.identity())
    layer = probe_layer % lm.cfg.n_layers
    ld = load_layers([stores[m, p] for p in fit_profiles], m, "hook_resid_post", layers=[layer])
    probe = fit_probe(ld.xs[0], ld.labels["emotion"].to_numpy(), seed=seed)
    words = {e: lexicon[e]["continuations"] for e in emotions}
    readouts[m] = readout_from_probe(probe, layer, continuation_ids(lm.tokenizer, words))
    for e in emotions:
        direction = diff_of_means(ld.xs[0], ld.labels, e)
        prompts = choose_prompts(lm.encoder, prompt_rows, e, n_prompts, seed)
        if heads:  # first: a bad head set fails in seconds, not after the sweeps
            chosen.append(head_set_effects(lm, readouts[m], prompts, heads, lexicon, n_gen_tokens=n_gen_tokens, seed=seed))
        parts[m, e] = analyse_emotion(lm, readouts[m], direction, prompts, lexicon, top_k=top_k, ks=ks,
                                      n_random=n_random, n_gen_tokens=n_gen_tokens, all_positions=all_positions,
                                      seed=seed, progress=print if show_progress() else None)
    del lm
tables = {k: pd.concat([p[k] for p in parts.values()], ignore_index=True) for k in next(iter(parts.values()))}
display(tables["prompts"].groupby(["model", "prompt_emotion", "role"]).agg(rows=("id", "size"), tokens=("T", "first")))
display(tables["timings"].groupby("model")["seconds"].sum().rename("seconds in all").to_frame())

# %% [markdown]
# ## Screening heatmaps
# Each score per layer (rows) and head (columns), scaled by its largest absolute value per model,
# emotion and score so the five fit one colour scale (hover shows the raw value).

# %%
screen = tables["screening"].copy()
screen["scaled"] = screen["value"] / screen.groupby(["model", "emotion", "score"])["value"].transform(
    lambda v: v.abs().max() or 1.0)
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
sw = sweeps[sweeps["metric"] == "probe_prob"].assign(what=lambda d: d["intervention"] + ", " + d["positions"])
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
top = tables["top_heads"].assign(head_label=lambda d: d["layer"].astype(str) + ":" + d["head"].astype(str),
                                 ci=lambda d: 1.96 * d["se"])
px.bar(top, x="rank", y="drop", error_y="ci", color="emotion", facet_col="emotion", facet_row="model",
       text="head_label", color_discrete_map=EMOTION_COLORS,
       title="Top heads per emotion (bar labels layer:head): drop in the probe's emotion probability when ablated"
       ).for_each_annotation(lambda an: an.update(text=an.text.split("=", 1)[-1])).show()
perm = tables["permutation"]
display(Markdown("**Top-k heads vs k random heads** (effect signed so that larger = more emotion removed by "
                 "ablation, or added by patching; p = (1 + #random >= top) / (1 + random sets)):"))
display(perm.pivot_table(index=["model", "emotion", "intervention", "heads"], columns="metric",
                         values=["top_effect", "random_mean", "p_value"]).round(4))

# %% [markdown]
# ## A chosen head set
# `heads` (e.g. `"0:0"`, the seed's head, or `"3:1,5:*"`) zero- and mean-ablated on the emotion
# prompts: changes against the clean run with 95% bootstrap intervals over prompts.

# %%
if heads:
    chosen_table = pd.concat(chosen, ignore_index=True)
    display(chosen_table.set_index(["model", "emotion", "heads", "ablation"])[
        ["probe_prob", "probe_prob_change", "probe_prob_change_lo", "probe_prob_change_hi", "logprob_change",
         "vader_change", "keywords_change"]].round(4))

# %% [markdown]
# ## Ablating top-k heads together

# %%
curve = tables["topk_curve"]
px.line(curve, x="k", y="drop", color="emotion", facet_col="model", markers=True, log_x=True,
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
abl = gs[gs["intervention"] == "ablate"].assign(lo=lambda d: d["vader"] - d["vader_lo"], hi=lambda d: d["vader_hi"] - d["vader"])
px.bar(abl, x="condition", y="vader", error_y="hi", error_y_minus="lo", color="kind", facet_col="emotion",
       facet_row="model", title="Ablation: VADER compound sentiment of continuations of emotion prompts"
       ).for_each_annotation(lambda an: an.update(text=an.text.split("=", 1)[-1])).show()
pat = gs[gs["intervention"] == "patch"].assign(lo=lambda d: d["keywords"] - d["keywords_lo"],
                                               hi=lambda d: d["keywords_hi"] - d["keywords"])
px.bar(pat, x="condition", y="keywords", error_y="hi", error_y_minus="lo", color="kind", facet_col="emotion",
       facet_row="model", title="Patching emotion -> neutral: emotion keywords per continuation of neutral prompts"
       ).for_each_annotation(lambda an: an.update(text=an.text.split("=", 1)[-1])).show()
display(gs[gs["kind"] != "random"][["model", "emotion", "intervention", "condition", "vader", "vader_lo", "vader_hi",
                                    "keywords", "keywords_lo", "keywords_hi", "probe_prob"]].round(3))
ex = tables["generations"]
display(ex[ex["kind"] != "random"].groupby(["model", "emotion", "intervention", "condition"]).head(1)[
    ["model", "emotion", "intervention", "condition", "prompt", "continuation"]])

# %% [markdown]
# ## Attribution patching against exact patching
# Each point is one head (patching emotion -> neutral); the title gives Spearman's rank correlation.

# %%
attr = tables["attribution"]
rho = tables["attribution_spearman"]
display(rho.pivot_table(index=["model", "emotion"], columns="positions", values="spearman").round(3))
labels = rho.groupby(["model", "emotion"]).apply(
    lambda g: ", ".join(f"rho {p} {s:.2f}" for p, s in zip(g["positions"], g["spearman"])), include_groups=False)
attr = attr.assign(panel=[f"{m} {e} ({labels[m, e]})" for m, e in zip(attr["model"], attr["emotion"])])
px.scatter(attr, x="exact", y="attribution", color="positions", facet_col="panel", facet_col_wrap=3,
           hover_data=["layer", "head"], height=300 * -(-attr["panel"].nunique() // 3),
           title="Attribution estimate vs exact patching effect on the probe probability (Spearman rho per panel)"
           ).update_xaxes(matches=None).update_yaxes(matches=None).for_each_annotation(
    lambda an: an.update(text=an.text.split("=", 1)[-1])).show()

# %% [markdown]
# ## Save

# %%
for name in ["screening", "sweeps", "attribution", "attribution_spearman", "top_heads", "topk_curve", "generations",
             "generation_summary", "permutation", "prompts", "timings"]:
    tables[name].to_csv(out / f"{name}.csv", index=False)
if heads:
    chosen_table.to_csv(out / "head_set.csv", index=False)
if vectors_run:  # the direction used here is phase 03's (same function, same rows): check it
    agree = {}
    for m in models:
        info = json.loads((RESULTS / "03_emotion_vectors" / vectors_run / f"directions--{m}.json").read_text())
        arr = np.load(RESULTS / "03_emotion_vectors" / vectors_run / f"directions--{m}.npy")
        ld = load_layers([stores[m, p] for p in fit_profiles], m, "hook_resid_post", layers=[readouts[m].layer])
        for e in emotions:
            k = [list(x) for x in info["keys"]].index([e, "mean_vs_neutral"])
            agree[m, e] = float(arr[info["layers"].index(readouts[m].layer), k] @ diff_of_means(ld.xs[0], ld.labels, e))
    display(Markdown(f"Cosine of our directions with phase 03's: min {min(agree.values()):.6f}"))
lines = []
for (m, e), p in parts.items():
    t = p["top_heads"].iloc[0]
    pv = p["permutation"].set_index(["intervention", "metric"])["p_value"]
    lines.append(f"{m} {e}: top head {int(t['layer'])}:{int(t['head'])} (drop {t['drop']:.3f}); "
                 f"top-{top_k} vs random p = {pv['ablate', 'probe_prob']:.3f} (probe), {pv['ablate', 'keywords']:.3f} (keywords)")
summary = "; ".join(lines)
save_summary(out, summary=summary, models=identities)
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
assert screen.groupby(["model", "emotion", "score"])["value"].nunique().gt(1).all()  # not degenerate
assert sweeps["effect"].notna().all() and perm["p_value"].between(0, 1).all()
assert tables["generations"]["vader"].between(-1, 1).all()
assert sw.groupby(["model", "emotion", "what"]).size().groupby("model").nunique().eq(1).all()  # every head, every sweep
if vectors_run:
    assert min(agree.values()) > 0.9999
