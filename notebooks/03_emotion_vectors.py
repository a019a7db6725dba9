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
# neutral text, and how well on rows that chose nothing; along which directions and in how many
# dimensions; and does what a probe learns on our authored sentences hold on real Reddit comments?
#
# **Inputs.** Phase 02's stores (`activations_run`) of the residual stream after every block
# (`hook_resid_post`) for `models` on the authored profiles (`fit_profiles`) and on GoEmotions
# (`transfer_profiles`: train to fit the reverse probe, dev to evaluate), and of `control_models`
# (the same architectures with random weights). With `activations_run` empty (smoke runs) small
# stores are extracted here.
#
# **Outputs.** `probe_curves.csv` (validation accuracy by layer), `probe_headline.csv` (held-out
# accuracy per model and control), `transfer.csv`, `transfer_per_class.csv`, `real_text.csv`,
# `real_text_choices.csv`, `real_text_gaps.csv` (GoEmotions dev against TF-IDF), `projections.csv`
# (held-out projections and gaps), `reading_rows.csv`, `stability.csv`, `subspace_dims.csv`,
# `best_layers.json`, and per model the directions `directions--<model>.npy` [layers, keys,
# d_model] with `directions--<model>.json` (layers, keys, reading), for phase 05. `summary.json`
# records the folds (`splits`) and the findings for the index page.
#
# **Every number is estimated on rows that did not choose or fit it.** The layer is chosen on
# validation folds and scored on test folds (nested cross-validation); projections are read on rows
# the directions were not fitted on. Beside each number stands a control that could have failed:
# labels permuted between whole text groups (`shuffled_repeats` times, a band), and the same
# architecture with random weights on the same rows and folds. Folds keep near-identical texts
# together, and intervals resample those text groups, not rows.

# %% tags=["parameters"]
models = ["tiny-gpt2", "tiny-llama"]
control_models = ["random:tiny-gpt2", "random:tiny-llama"]
fit_profiles = ["baseline", "extended"]
transfer_profiles = ["goemotions:train", "goemotions:dev"]
activations_run = ""
site = "hook_resid_post"
methods = ["mean_vs_neutral", "mean_vs_rest", "pca"]
readings = ["sentence_end", "span", "mean"]
real_text_readings = ["sentence_end", "mean"]
n_splits = 5
shuffled_repeats = 2
var_threshold = 0.5
max_k = 64
stability_splits = 5
n_jobs = 1
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
from lib.phases.emotion_probes import (FIGURE, best_layer_report, figure_frames, findings, modal_layers,
                                       probe_directions, probes_by_model, report_summary, transfer_by_model)
from lib.phases.emotion_projections import gap_summary, projections_by_model
from lib.phases.real_text import real_text_answer, real_text_findings, real_text_inputs
from lib.phases.emotion_vectors import (cosine_long, directions_array, directions_by_model, method_agreement,
                                        readings_by_model, save_directions, stability_by_model, stability_long,
                                        subspace_dims)
from lib.pipeline.provenance import save_summary
from lib.settings import step
from lib.pipeline.results import prepare_output_dir, provenance_markdown
from lib.report.plots import EMOTION_COLORS, setup_plotly

setup_plotly()
np.random.seed(seed)
out = prepare_output_dir(output_dir)
stores = obtain_stores(models, fit_profiles + transfer_profiles, activations_run, out,
                       max_per_emotion=max_per_emotion, seed=seed, site=site)
stores.update(obtain_stores(control_models, fit_profiles + transfer_profiles, activations_run, out,
                            max_per_emotion=max_per_emotion, seed=seed, site=site))
fit_data = {m: load_layers([stores[m, p] for p in fit_profiles], m, site) for m in models + control_models}
authored = {m: fit_data[m] for m in models}
display(Markdown(f"Rows for fitting: {len(fit_data[models[0]].labels)} "
                 f"({', '.join(fit_profiles)}); layers per model: "
                 + ", ".join(f"{m} {len(d.layers)}" for m, d in fit_data.items())))

# %% [markdown]
# ## Probes by layer, with their controls
# A multinomial logistic regression (standardised features, L2, C = 1) on the sentence-end
# residual stream of each layer, by nested cross-validation over `n_splits` folds that keep
# near-identical texts together. In outer fold i a probe is fitted at every layer on the training
# folds and scored on validation fold i + 1; the layer with the best validation accuracy is refitted
# on training + validation and scored on test fold i, which no fit or choice has seen.
#
# - **Lines**: validation accuracy by layer, pooled over the outer folds (every row is a validation
#   row once), with 95% intervals from a bootstrap over text groups. The top of this curve is a
#   chosen number, not an estimate.
# - **Large markers**: the headline, the pooled test accuracy of "choose on validation, refit,
#   predict", drawn at the layer chosen most often (the per-fold choices are in the table), for the
#   probe and for the random-weights model run through the same procedure.
# - **Dotted lines**: the 2.5-97.5 percentile band of the same procedure on labels permuted
#   between whole text groups (`shuffled_repeats` permutations). To keep the cost countable, those
#   repeats choose among one layer, the real probe's modal layer (k refits per repeat): on a test
#   fold that no fit or choice has seen, choosing among more layers could not raise the null's
#   mean, only widen it a little.
#
# Chance is 0.25 for four balanced classes.

# %%
step('probes by layer, with their controls', 1, 5)
curves, headline, runs = probes_by_model(fit_data, models, control_models, shuffled_repeats=shuffled_repeats,
                                         n_splits=n_splits, seed=seed, n_jobs=n_jobs)
best = modal_layers(runs)
points, band = figure_frames(curves, headline)
colors = {"probe": "#1f77b4", "random weights": "#ff7f0e", "probe, held out": "#1f77b4",
          "random weights, held out": "#ff7f0e", "shuffled labels, 95% band": "#7f7f7f"}
order = {"model": models}
fig = px.line(curves, x="layer", y="accuracy", color="variant", facet_col="model", markers=True,
              error_y=curves["acc_hi"] - curves["accuracy"], error_y_minus=curves["accuracy"] - curves["acc_lo"],
              category_orders=order, color_discrete_map=colors,
              title="Validation accuracy by layer (lines, 95% CI); held-out headline (diamonds); shuffled-label band")
fig.add_traces(px.scatter(points, x="layer", y="accuracy", color="variant", facet_col="model", error_y="up",
                          error_y_minus="down", category_orders=order, color_discrete_map=colors).update_traces(
    marker_symbol="diamond", marker_size=13).data)
fig.add_traces(px.line(band, x="layer", y="accuracy", color="variant", line_group="edge", facet_col="model",
                       category_orders=order, color_discrete_map=colors).update_traces(line_dash="dot").data)
fig.add_hline(y=0.25, line_dash="dot", annotation_text="chance").update_yaxes(range=[0, 1.02]).update_xaxes(
    matches=None).show()
headline.set_index(["model", "variant"]).round(3)

# %% [markdown]
# ## Transfer to real text
# Probes fitted on every authored row at each layer, scored on GoEmotions dev (Reddit comments;
# remorse read as apology), and the reverse: probes fitted on GoEmotions train, scored on the
# authored rows. Both are scored on rows the probe never saw. Macro-F1 averages the four classes
# equally; GoEmotions is capped per emotion in phase 02, so its classes are closer to balanced than
# the raw split. The per-class table is at each model's modal chosen layer from the nested
# procedure above (not the best of these transfer numbers).

# %%
step('transfer to real text', 2, 5)
train_prof, dev_prof = transfer_profiles
transfer, per_class, fits = transfer_by_model(
    authored, {m: load_layers([stores[m, train_prof]], m, site) for m in models},
    {m: load_layers([stores[m, dev_prof]], m, site) for m in models}, best, train_name=train_prof,
    dev_name=dev_prof, seed=seed)
px.line(transfer, x="layer", y="macro_f1", color="direction", facet_col="model", markers=True,
        title="Transfer between authored text and GoEmotions: macro-F1 by layer").add_hline(
    y=0.25, line_dash="dot").update_yaxes(range=[0, 1.02]).update_xaxes(matches=None).show()
display(Markdown("Per class, at each model's modal chosen layer (authored -> GoEmotions dev):"))
per_class.round(3)

# %% [markdown]
# ## Real text: GoEmotions against a bag-of-words baseline
# Can the models' activations tell the four classes apart in real Reddit comments better than the
# words alone? Each reader is chosen and fitted on GoEmotions train only and scored once on
# GoEmotions dev: for every model and its random-weights twin, the probe's reading
# (`real_text_readings`) and layer with the best 3-fold grouped cross-validated macro-F1 on train,
# refitted on all of train; and a TF-IDF (word unigrams and bigrams) + logistic-regression baseline
# whose regularisation is chosen the same way. Bars: F1 per class and the macro average on dev, with
# 95% intervals from a bootstrap over dev text groups; the table gives each model minus TF-IDF on the
# same dev rows (paired bootstrap). Dev classes are unbalanced (apology is remorse, the rarest), so
# read the macro-F1.

# %%
step('real text: GoEmotions against a bag-of-words baseline', 3, 5)
real = real_text_answer(real_text_inputs(stores, models + control_models, train_prof, site=site,
                                         readings=real_text_readings),
                        real_text_inputs(stores, models + control_models, dev_prof, site=site,
                                         readings=real_text_readings), seed=seed)
scores = real["scores"]
px.bar(scores, x="class", y="f1", color="reader", barmode="group", error_y=scores["f1_hi"] - scores["f1"],
       error_y_minus=scores["f1"] - scores["f1_lo"],
       title="GoEmotions dev: F1 per class and macro, readers chosen on train (95% CI over text groups)"
       ).add_hline(y=0.25, line_dash="dot").update_yaxes(range=[0, 1.02]).show()
display(real["choices"].groupby("reader").head(1).set_index("reader").round(3))
real["gaps"].set_index("reader").round(3)

# %% [markdown]
# ## Emotion directions
# For each emotion, layer and reading: difference of class means against neutral
# (`mean_vs_neutral`) and against the mean of the other classes' means (`mean_vs_rest`), the top
# principal component of the emotion's and neutral rows (`pca`), and the probe's weight for the
# class mapped back to activation space (`probe`, sentence end only). Each is a unit vector oriented
# so that its emotion projects higher than the baseline. The span reading averages the tokens of
# the emotion-bearing span; authored neutral rows have spans too, so it compares span with span. A
# row without a span is dropped from that reading and counted below, never replaced by its token
# mean. The directions fitted here on all rows are the ones saved for phase 05 and compared across
# layers; projections are read on held-out rows further down.

# %%
step('emotion directions', 4, 5)
data, reading_rows = readings_by_model(authored, stores, profiles=fit_profiles, readings=readings)
dirs = directions_by_model(data, {m: probe_directions(fits[m]) for m in models}, methods=methods)
reading_rows.pivot_table(index=["model", "reading"], columns="emotion", values=["rows", "dropped"])

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
# ### Projections onto each direction, on held-out rows
# Each row is projected onto directions fitted without it: the directions are refitted on the rows
# outside each of the probe's outer test folds and read on that fold's rows (the probe direction is
# the inner fit of that outer fold), relative to the training rows' neutral mean. The gap between an
# emotion's rows and neutral rows is in pooled standard deviations, with a 95% interval from a
# bootstrap over text groups. Its controls: the same held-out gap on labels permuted between whole
# text groups (`shuffled_repeats` permutations; difference-of-means methods) should sit at 0, and the
# old in-sample gap (directions fitted and read on the same rows, oriented to make it positive),
# which is positive even on noise (about 1.3 sd on isotropic noise of this size). A direction specific
# to its emotion lifts that emotion alone.

# %%
proj, projection_splits = projections_by_model(dirs, runs, methods=methods, n_splits=n_splits,
                                               repeats=shuffled_repeats, seed=seed)
sub = proj[(proj["method"] == "mean_vs_neutral") & (proj["reading"] == "sentence_end")]
px.line(sub, x="layer", y="gap", color="emotion", facet_col="direction_emotion", facet_row="model", markers=True,
        error_y=sub["gap_hi"] - sub["gap"], error_y_minus=sub["gap"] - sub["gap_lo"],
        color_discrete_map=EMOTION_COLORS, height=320 * len(models),
        title="Held-out gap to neutral (pooled sd) along each emotion's direction (sentence end, mean_vs_neutral)"
        ).update_yaxes(matches=None).update_xaxes(matches=None).show()
own = gap_summary(proj)
own[own.apply(lambda r: r["layer"] == best[r["model"]], axis=1)].set_index(["model", "reading", "emotion"]).round(3)

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
# Two subspaces per emotion, kept apart. The **offset** is the emotion's mean minus the neutral
# mean (its norm is `offset_norm`); the **between** kind is its direction, and for all three
# emotions together the span of their three offsets. The **within** kind is the top principal axes
# of the emotion's rows centred on their own mean (joint: each emotion's rows centred on its own
# mean, stacked): how the emotion's sentences vary among themselves, without the offset. For the
# within kind, `k` counts the fewest dimensions reaching `var_threshold` of the within-class
# variance (at most `max_k`); for the joint between kind, of the offsets' squared norm (at most 3).
# `within_rms` is the typical distance of a row to its class mean, to set against `offset_norm`.
# Curves at each model's modal chosen layer:

# %%
step('subspaces', 5, 5)
dims = pd.concat([subspace_dims(fit_data[m], best[m], var_threshold, max_k).assign(model=m) for m in models],
                 ignore_index=True)
px.line(dims, x="dims", y="explained", color="subspace", line_dash="kind", facet_col="model", markers=True,
        title=f"Explained share by subspace dimension at the modal layer (threshold {var_threshold})").add_hline(
    y=var_threshold, line_dash="dot").show()
dims.groupby(["model", "subspace", "kind"])[["k", "offset_norm", "within_rms"]].first().unstack("kind").round(3)

# %% [markdown]
# ### Stability
# Principal angles between subspaces fit on `baseline` and on `extended` (different sentences,
# same emotions), and between subspaces fit on random halves of all rows, each with the `k` of
# the fit on all rows. The null is not uniform random subspaces, which any two subspaces of an
# anisotropic residual stream beat: it is random subspaces of the same size drawn from the data's
# own covariance (the span of X^T g, g Gaussian, X the within-class-centred rows of the same classes,
# one draw from each half). A subspace counts as stable where its mean angle lies below the null's
# 5th percentile (dotted); `uniform_mean_angle` in `stability.csv` shows the old, easier reference.

# %%
stab = stability_by_model(authored, fit_profiles, var_threshold=var_threshold, max_k=max_k,
                          n_splits=stability_splits, seed=seed)
px.line(stability_long(stab), x="layer", y="angle", color="subspace", line_dash="series", facet_col="model",
        facet_row="kind", markers=True, height=600,
        title="Mean principal angle (degrees) between subspace fits; dotted: the data-covariance null's 5th percentile"
        ).update_yaxes(range=[0, 90]).update_xaxes(matches=None).show()
stab.groupby(["model", "kind", "subspace", "comparison"])["beats_null"].mean().unstack("comparison").round(2)

# %% [markdown]
# ## Save

# %%
curves.to_csv(out / "probe_curves.csv", index=False)
headline.to_csv(out / "probe_headline.csv", index=False)
transfer.to_csv(out / "transfer.csv", index=False)
per_class.to_csv(out / "transfer_per_class.csv", index=False)
real["scores"].to_csv(out / "real_text.csv", index=False)
real["choices"].to_csv(out / "real_text_choices.csv", index=False)
real["gaps"].to_csv(out / "real_text_gaps.csv", index=False)
proj.to_csv(out / "projections.csv", index=False)
reading_rows.to_csv(out / "reading_rows.csv", index=False)
stab.to_csv(out / "stability.csv", index=False)
dims.to_csv(out / "subspace_dims.csv", index=False)
save_directions(out, dirs, models, site)
report = best_layer_report(headline, transfer, runs)
(out / "best_layers.json").write_text(json.dumps(report, indent=2))
summary = report_summary(report)
splits = {f"probe_folds--{m}": r["split"] for m, r in runs.items()}
splits["goemotions"] = real["split"]
splits.update({f"projection_folds--{m}--{rd}": s for (m, rd), s in projection_splits.items() if s is not None})
found = findings(report, FIGURE) + real_text_findings(real, models, control_models,
                                                     "Real text: GoEmotions against a bag-of-words baseline")
save_summary(out, summary=summary, best_layers=report, splits=splits, findings=found,
             models=[stores[m, fit_profiles[0]].manifest["identity"] for m in models + control_models])
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
assert set(curves["variant"]) == {"probe", "random weights"}
assert set(real["scores"]["reader"]) == set(models + control_models) | {"tf-idf"}
assert (real["scores"]["f1_lo"] <= real["scores"]["f1"] + 1e-9).all() and (real["scores"]["f1"] <= real["scores"]["f1_hi"] + 1e-9).all()
assert set(headline["variant"]) == {"probe", "random weights", "shuffled labels"}
assert headline[["accuracy", "macro_f1"]].apply(lambda s: s.between(0, 1)).all().all()
assert (headline["acc_lo"] <= headline["accuracy"] + 1e-9).all() and (headline["accuracy"] <= headline["acc_hi"] + 1e-9).all()
assert (headline.loc[headline["variant"] == "shuffled labels", "acc_hi"]
        > headline.loc[headline["variant"] == "shuffled labels", "acc_lo"]).all()  # a band, not a point
assert all(r["layer"] in r["chosen_layers"] for r in report.values())
assert all(np.allclose(np.linalg.norm(directions_array(d)[0], axis=-1), 1, atol=1e-4) for _, d in dirs.values())
assert (proj.loc[proj["emotion"] == "neutral", "gap"] == 0).all()
assert (stab["mean_angle"].between(0, 90)).all() and (stab["null_mean_angle_p05"].between(0, 90)).all()
