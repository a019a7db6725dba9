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
# # 04 Cross-model alignment
#
# **Question.** Do two models with different tokenizers, widths and depths represent our emotion
# sentences alike, and which of their layers correspond?
#
# **Inputs.** Phase 02's stores (`activations_run`) of the sentence-end residual stream after every
# block for each model in `models` and `control_models` (random weights) on `profiles`; rows are
# paired by text id (each model tokenises the text its own way, so comparison is per sentence).
# With `activations_run` empty (smoke runs) small stores are extracted here.
#
# **Outputs.** `cka.csv` (every layer pair, kind and model pair, with permutation nulls),
# `best_matches.csv`, `procrustes.csv`, `aligned_angles.csv`, `layer_matching.csv`.
#
# **Measures.** Linear CKA (Kornblith et al. 2019); debiased CKA (unbiased HSIC; near 0 for
# unrelated data, where plain CKA is biased upwards at small n); RBF CKA (bandwidth 0.8 x median
# distance). Each linear and debiased value gets a permutation null (texts shuffled on one side)
# and a p-value. Orthogonal Procrustes distance: 0 when one representation is a rotation of the
# other (after centring and scaling), up to 2.

# %% tags=["parameters"]
models = ["tiny-gpt2", "tiny-llama"]
control_models = ["random:tiny-gpt2"]
profiles = ["baseline", "extended"]
activations_run = ""
site = "hook_resid_post"
reduction = "sentence_end"
kinds = ["linear", "debiased", "rbf"]
n_texts = 2000
n_perm = 200
subspace_k = 4
max_per_emotion = 20
seed = 0
output_dir = ""

# %%
import itertools

import numpy as np
import plotly.express as px
from IPython.display import Markdown, display

from lib.activations.layerwise import load_layers
from lib.activations.runs import obtain_stores
from lib.phases.cross_model_alignment import (aligned_angles_by_pair, alignment_summary, best_matches_by_pair,
                                              best_vs_null, cka_by_pair, layer_matching_table, paired_sample,
                                              procrustes_by_pair)
from lib.pipeline.provenance import save_summary
from lib.settings import step
from lib.pipeline.results import prepare_output_dir, provenance_markdown
from lib.report.plots import setup_plotly

setup_plotly()
out = prepare_output_dir(output_dir)
everyone = models + control_models
stores = obtain_stores(everyone, profiles, activations_run, out, max_per_emotion=max_per_emotion, seed=seed,
                       site=site)
data = {m: load_layers([stores[m, p] for p in profiles], m, site, reduction) for m in everyone}
pairs = list(itertools.combinations(models, 2)) + [(m, c) for m in models for c in control_models
                                                   if c == f"random:{m}"]
paired = {(a, b): paired_sample(data[a], data[b], n_texts, seed) for a, b in pairs}  # same texts, same order
display(Markdown("Model pairs: " + "; ".join(f"{a} vs {b}" for a, b in pairs)))

# %% [markdown]
# ## CKA for every pair of layers
# Texts: up to `n_texts` rows both models hold, stratified by emotion. Heatmaps show CKA;
# pairs whose permutation p-value exceeds 0.05 are marked with a cross.

# %%
step('cka for every pair of layers', 1, 4)
cka, timings = cka_by_pair(paired, kinds, n_perm=n_perm, seed=seed)
display(timings)
for a, b in pairs:
    sub = cka[(cka["model_a"] == a) & (cka["model_b"] == b)]
    mats = np.stack([sub[sub["kind"] == k].pivot(index="layer_a", columns="layer_b", values="cka").to_numpy()
                     for k in kinds])
    fig = px.imshow(mats, facet_col=0, origin="lower", zmin=0, zmax=1, color_continuous_scale="Viridis",
                    labels={"x": f"{b} layer", "y": f"{a} layer", "color": "CKA"}, aspect="auto",
                    title=f"CKA, {a} vs {b} ({sub['n_texts'].iloc[0]} texts); x: permutation p > 0.05")
    fig.for_each_annotation(lambda an: an.update(text=kinds[int(an.text.split("=")[1])]))
    for i, k in enumerate(kinds):
        ns = sub[(sub["kind"] == k) & (sub["p_value"] > 0.05)]
        if len(ns):
            fig.add_scatter(x=ns["layer_b"], y=ns["layer_a"], mode="markers", marker_symbol="x", marker_color="white",
                            marker_size=5, showlegend=False, row=1, col=i + 1)
    fig.show()

# %% [markdown]
# ### Against the null
# Observed CKA of each model pair's best-matching layers beside the permutation null (mean and
# 95th percentile over shuffled texts).

# %%
best = best_matches_by_pair(cka, {m: len(d.layers) for m, d in data.items()}, pairs)
nulls = best_vs_null(cka, best, ("linear", "debiased"))
px.line(nulls, x="layer_a", y="value", color="variable", line_dash="kind", facet_col="pair", markers=True,
        labels={"layer_a": "layer of the first model"},
        title="Best-match CKA per layer of the first model, beside its permutation null").update_xaxes(
    matches=None).show()

# %% [markdown]
# ## Which layers correspond
# For each layer of model A, the layer of model B with the highest CKA, both as relative depth
# ((layer + 0.5) / layers). The diagonal is "same relative depth".

# %%
step('which layers correspond', 2, 4)
fig = px.line(best, x="depth_a", y="depth_b", color="kind", facet_col="pair", markers=True,
              hover_data=["layer_a", "layer_b", "cka", "p_value"], title="Best-matching layer by relative depth",
              labels={"depth_a": "relative depth, first model", "depth_b": "relative depth, second model"})
fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line_dash="dot", row="all", col="all").show()

# %% [markdown]
# ### Layer-matching sanity check (Kornblith et al. 2019, in spirit)
# Each model against itself on two disjoint random halves of the texts: a layer's CKA profile
# against all layers on one half should pick the same layer on the other half. Accuracy is the
# share of layers that pick themselves; a similarity index that cannot do this cannot be trusted
# to match layers across models.

# %%
matching = layer_matching_table(data, kinds, n_texts=n_texts, seed=seed)
px.bar(matching, x="model", y="accuracy", color="kind", barmode="group",
       title="Layer-matching accuracy on disjoint halves").update_yaxes(range=[0, 1.05]).show()
matching.pivot(index="model", columns="kind", values="accuracy").round(3)

# %% [markdown]
# ## Procrustes distances
# For every layer pair of each model pair (same texts), the orthogonal Procrustes distance.

# %%
step('procrustes distances', 3, 4)
proc = procrustes_by_pair(paired)
for a, b in pairs:
    sub = proc[(proc["model_a"] == a) & (proc["model_b"] == b)]
    px.imshow(sub.pivot(index="layer_a", columns="layer_b", values="procrustes"), origin="lower", aspect="auto",
              color_continuous_scale="Magma_r", labels={"x": f"{b} layer", "y": f"{a} layer", "color": "distance"},
              title=f"Orthogonal Procrustes distance, {a} vs {b}").show()

# %% [markdown]
# ## Emotion subspaces after alignment
# At each model pair's best-matching linear-CKA layers (the pair of highest CKA), model A's
# emotion subspaces (k = `subspace_k`) carried into model B's space by the Procrustes map, against
# model B's own: mean principal angle in degrees, beside random k-dim subspaces of B's width.

# %%
step('emotion subspaces after alignment', 4, 4)
angles = aligned_angles_by_pair(paired, best, k=subspace_k, seed=seed)
fig = px.bar(angles.assign(pair=angles["model_a"] + " vs " + angles["model_b"]), x="subspace", y="mean_angle",
             color="pair", barmode="group",
             hover_data=["layer_a", "layer_b", "min_angle", "max_angle"],
             title="Mean principal angle after Procrustes alignment (dotted: random subspaces)")
fig.add_hline(y=float(angles["null_mean_angle"].mean()), line_dash="dot").update_yaxes(range=[0, 90]).show()

# %% [markdown]
# ## Save

# %%
cka.to_csv(out / "cka.csv", index=False)
best.to_csv(out / "best_matches.csv", index=False)
proc.to_csv(out / "procrustes.csv", index=False)
angles.to_csv(out / "aligned_angles.csv", index=False)
matching.to_csv(out / "layer_matching.csv", index=False)
timings.to_csv(out / "timings.csv", index=False)
summary = alignment_summary(best, pairs, ("linear", "debiased"))
save_summary(out, summary=summary, models=[stores[m, profiles[0]].manifest["identity"] for m in everyone])
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
assert cka["cka"].between(-0.2, 1 + 1e-6).all()
assert cka.loc[cka["kind"] != "debiased", "cka"].between(0, 1 + 1e-6).all()
assert cka["p_value"].dropna().between(0, 1).all()
assert proc["procrustes"].between(0, 2 + 1e-6).all()
assert matching["accuracy"].between(0, 1).all()
