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
# # 03 Emotion directions, subspaces and probes
#
# **Question.** Where, layer by layer, does each model separate gratitude, anger and apology from
# neutral text; along which directions and in how many dimensions; and does what a probe learns on
# our authored sentences hold on real Reddit comments?
#
# **Inputs.** Phase 02's stores (`activations_run`) of the residual stream after every block
# (`hook_resid_post`) for `models` on the authored profiles (`fit_profiles`) and on GoEmotions
# (`transfer_profiles`: train to fit the reverse probe, dev to evaluate), and of `control_models`
# (the same architectures with random weights). With `activations_run` empty (smoke runs) small
# stores are extracted here.
#
# **Outputs.** `probe_curves.csv`, `transfer.csv`, `transfer_per_class.csv`, `projections.csv`,
# `stability.csv`, `subspace_dims.csv`, `best_layers.json`, and per model the directions
# `directions--<model>.npy` [layers, keys, d_model] with `directions--<model>.json` (layers,
# keys, reading), for phase 05.
#
# **Controls beside every number.** Probe accuracy comes with a 95% bootstrap interval, the same
# probe on shuffled labels (chance), and the same architecture with random weights (what the
# architecture and token statistics alone give). Cross-validation folds keep near-identical texts
# together, so a probe cannot score by recognising a text it was trained on.

# %% tags=["parameters"]
models = ["tiny-gpt2", "tiny-llama"]
control_models = ["random:tiny-gpt2", "random:tiny-llama"]
fit_profiles = ["baseline", "extended"]
transfer_profiles = ["goemotions:train", "goemotions:dev"]
activations_run = ""
site = "hook_resid_post"
methods = ["mean_vs_neutral", "mean_vs_rest", "pca"]
readings = ["sentence_end", "span", "mean"]
n_splits = 5
shuffled_repeats = 1
var_threshold = 0.5
max_k = 64
stability_splits = 5
max_per_emotion = 20
seed = 0
output_dir = ""

# %%
import json

import numpy as np
import pandas as pd
import plotly.express as px
from IPython.display import Markdown, display

from lib.activations.layerwise import load_layers
from lib.activations.runs import obtain_stores
from lib.emotions import TARGET_EMOTIONS
from lib.phases.emotion_vectors import (at_best_layers, best_layer_report, best_layers, cosine_long, directions_array,
                                        directions_by_model, method_agreement, probe_curves, projection_table,
                                        report_summary, save_directions, stability_by_model, subspace_dims,
                                        transfer_by_model)
from lib.pipeline.provenance import save_summary
from lib.settings import step
from lib.pipeline.results import prepare_output_dir, provenance_markdown
from lib.report.plots import EMOTION_COLORS, setup_plotly

setup_plotly()
np.random.seed(seed)
out = prepare_output_dir(output_dir)
stores = obtain_stores(models, fit_profiles + transfer_profiles, activations_run, out,
                       max_per_emotion=max_per_emotion, seed=seed, site=site)
stores.update(obtain_stores(control_models, fit_profiles, activations_run, out, max_per_emotion=max_per_emotion,
                            seed=seed, site=site))
fit_data = {m: load_layers([stores[m, p] for p in fit_profiles], m, site) for m in models + control_models}
authored = {m: fit_data[m] for m in models}
display(Markdown(f"Rows for fitting: {len(fit_data[models[0]].labels)} "
                 f"({', '.join(fit_profiles)}); layers per model: "
                 + ", ".join(f"{m} {len(d.layers)}" for m, d in fit_data.items())))

# %% [markdown]
# ## Probes by layer, with their controls
# A multinomial logistic regression (standardised features, L2, C = 1) on the sentence-end
# residual stream of each layer, 5-fold cross-validated with folds that keep near-identical texts
# in one fold. Error bars are 95% bootstrap intervals over the out-of-fold predictions; the
# shuffled-label bars are the mean +- 2 sd over label permutations. Chance is 0.25 for four balanced classes.

# %%
step('probes by layer, with their controls', 1, 4)
curves = pd.concat([probe_curves(fit_data[m], fit_data[c], shuffled_repeats=shuffled_repeats, n_splits=n_splits,
                                 seed=seed).assign(model=m) for m, c in zip(models, control_models)],
                   ignore_index=True)
fig = px.line(curves, x="layer", y="accuracy", color="variant", facet_col="model", markers=True,
              error_y=curves["acc_hi"] - curves["accuracy"], error_y_minus=curves["accuracy"] - curves["acc_lo"],
              title="Probe accuracy by layer (95% CI), with shuffled-label and random-weight controls",
              color_discrete_map={"probe": "#1f77b4", "shuffled labels": "#7f7f7f", "random weights": "#ff7f0e"})
fig.add_hline(y=0.25, line_dash="dot", annotation_text="chance").update_yaxes(range=[0, 1.02]).update_xaxes(
    matches=None).show()

best = best_layers(curves, models)
at_best = at_best_layers(curves, best)
at_best.pivot_table(index="model", columns="variant", values=["accuracy", "acc_lo", "acc_hi", "macro_f1"]).round(3)

# %% [markdown]
# ## Transfer to real text
# Probes fitted on every authored row at each layer, scored on GoEmotions dev (Reddit comments;
# remorse read as apology), and the reverse: probes fitted on GoEmotions train, scored on the
# authored rows. Macro-F1 averages the four classes equally; GoEmotions is capped per emotion in
# phase 02, so its classes are closer to balanced than the raw split.

# %%
step('transfer to real text', 2, 4)
train_prof, dev_prof = transfer_profiles
transfer, per_class, fits = transfer_by_model(
    authored, {m: load_layers([stores[m, train_prof]], m, site) for m in models},
    {m: load_layers([stores[m, dev_prof]], m, site) for m in models}, best, train_name=train_prof,
    dev_name=dev_prof, seed=seed)
px.line(transfer, x="layer", y="macro_f1", color="direction", facet_col="model", markers=True,
        title="Transfer between authored text and GoEmotions: macro-F1 by layer").add_hline(
    y=0.25, line_dash="dot").update_yaxes(range=[0, 1.02]).update_xaxes(matches=None).show()
display(Markdown("Per class, at each model's best cross-validated layer (authored -> GoEmotions dev):"))
per_class.round(3)

# %% [markdown]
# ## Emotion directions
# For each emotion, layer and reading: difference of class means against neutral
# (`mean_vs_neutral`) and against the mean of the other classes' means (`mean_vs_rest`), the top
# principal component of the emotion's and neutral rows (`pca`), and the probe's weight for the
# class mapped back to activation space (`probe`). Each is a unit vector oriented so that its
# emotion projects higher than the baseline.

# %%
step('emotion directions', 3, 4)
dirs = directions_by_model(authored, stores, fits, profiles=fit_profiles, readings=readings, methods=methods,
                           site=site)

# %% [markdown]
# ### How directions change across layers
# Cosine similarity of each emotion's `mean_vs_neutral` direction (sentence-end reading) between
# every pair of layers: blocks of high similarity are layers that share one direction.

# %%
cos = pd.concat([cosine_long(dirs[m, "sentence_end"][1], "mean_vs_neutral").assign(model=m) for m in models],
                ignore_index=True)
for m in models:
    sub = cos[cos["model"] == m]
    mats = np.stack([sub[sub["emotion"] == e].pivot(index="layer_a", columns="layer_b", values="cosine").to_numpy()
                     for e in TARGET_EMOTIONS])
    px.imshow(mats, facet_col=0, zmin=-1, zmax=1, color_continuous_scale="RdBu_r", origin="lower",
              labels={"x": "layer", "y": "layer", "color": "cosine"},
              title=f"{m}: cosine of mean_vs_neutral directions across layers").for_each_annotation(
        lambda a: a.update(text=TARGET_EMOTIONS[int(a.text.split("=")[1])])).show()

# %% [markdown]
# ### Projections onto each direction
# Mean projection (95% t-interval) of each emotion's rows onto each emotion's `mean_vs_neutral`
# direction, by layer. A direction that is specific to its emotion lifts that emotion alone.

# %%
proj = pd.concat([projection_table(*dirs[m, reading]).assign(model=m, reading=reading)
                  for m in models for reading in readings], ignore_index=True)
sub = proj[(proj["method"] == "mean_vs_neutral") & (proj["reading"] == "sentence_end")]
px.line(sub, x="layer", y="mean", color="emotion", facet_col="direction_emotion", facet_row="model", markers=True,
        error_y=sub["ci_high"] - sub["mean"], color_discrete_map=EMOTION_COLORS, height=320 * len(models),
        title="Projection of each emotion onto each emotion's direction (sentence end, mean_vs_neutral)").update_yaxes(
    matches=None).update_xaxes(matches=None).show()

# %% [markdown]
# ### Agreement between methods and readings
# Cosine between each method's direction and `mean_vs_neutral` at every layer, per reading.

# %%
agree = method_agreement(dirs, "mean_vs_neutral")
px.line(agree[agree["method"] != "mean_vs_neutral"].groupby(["model", "reading", "layer", "method"], as_index=False)[
    "cosine"].mean(), x="layer", y="cosine", color="method", line_dash="reading", facet_col="model",
        title="Cosine with mean_vs_neutral, averaged over emotions").update_xaxes(matches=None).show()

# %% [markdown]
# ## Subspaces
# Per emotion: the top principal components of that emotion's rows centred on the neutral mean
# (so the offset from neutral is inside); joint: the same for all three emotions' rows. `k` is the
# fewest dimensions reaching `var_threshold` of the squared norm (at most `max_k`). Curves at each
# model's best layer:

# %%
step('subspaces', 4, 4)
dims = pd.concat([subspace_dims(fit_data[m], best[m], var_threshold, max_k).assign(model=m) for m in models],
                 ignore_index=True)
px.line(dims, x="dims", y="explained", color="subspace", facet_col="model", markers=True,
        title=f"Explained share by subspace dimension at the best layer (threshold {var_threshold})").add_hline(
    y=var_threshold, line_dash="dot").show()
dims.groupby(["model", "subspace"])["k"].first().unstack()

# %% [markdown]
# ### Stability
# Principal angles between subspaces fit on `baseline` and on `extended` (different sentences,
# same emotions), and between subspaces fit on random halves of all rows, against the angles
# between random subspaces of the same size (dotted). Small angles mean a stable subspace.

# %%
stab = stability_by_model(authored, fit_profiles, var_threshold=var_threshold, max_k=max_k,
                          n_splits=stability_splits, seed=seed)
fig = px.line(stab, x="layer", y="mean_angle", color="subspace", line_dash="comparison", facet_col="model",
              markers=True, title="Mean principal angle (degrees) between subspace fits; dotted: random subspaces")
for i, m in enumerate(models):
    null = stab[(stab["model"] == m) & (stab["subspace"] == "joint")].groupby("layer")["null_mean_angle"].mean()
    fig.add_scatter(x=null.index, y=null.values, mode="lines", line_dash="dot", line_color="grey",
                    name="random subspaces", showlegend=i == 0, row=1, col=i + 1)
fig.update_yaxes(range=[0, 90]).update_xaxes(matches=None).show()

# %% [markdown]
# ## Save

# %%
curves.to_csv(out / "probe_curves.csv", index=False)
transfer.to_csv(out / "transfer.csv", index=False)
per_class.to_csv(out / "transfer_per_class.csv", index=False)
proj.to_csv(out / "projections.csv", index=False)
stab.to_csv(out / "stability.csv", index=False)
dims.to_csv(out / "subspace_dims.csv", index=False)
save_directions(out, dirs, models, site)
report = best_layer_report(at_best, transfer, best)
(out / "best_layers.json").write_text(json.dumps(report, indent=2))
summary = report_summary(report)
save_summary(out, summary=summary, best_layers=report,
             models=[stores[m, fit_profiles[0]].manifest["identity"] for m in models + control_models])
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
assert set(curves["variant"]) == {"probe", "shuffled labels", "random weights"}
assert curves[["accuracy", "macro_f1"]].apply(lambda s: s.between(0, 1)).all().all()
assert (curves["acc_lo"] <= curves["accuracy"] + 1e-9).all() and (curves["accuracy"] <= curves["acc_hi"] + 1e-9).all()
assert all(np.allclose(np.linalg.norm(directions_array(d)[0], axis=-1), 1, atol=1e-4) for _, d in dirs.values())
assert (stab["mean_angle"].between(0, 90)).all()
