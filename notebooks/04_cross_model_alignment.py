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
# sentences alike, and which of their layers correspond once nuisances shared by any two models of the
# same texts (text length, a few outlier dimensions of huge norm) are taken out?
#
# **Inputs.** Phase 02's stores (`activations_run`) of the sentence-end residual stream after every
# block for each model in `models` and `control_models` (random weights) on `profiles`; rows are
# paired by text id (each model tokenises the text its own way, so comparison is per sentence).
# With `activations_run` empty (smoke runs) small stores are extracted here.
#
# **Split.** Every model is compared on one common sample of up to `n_texts` texts, split into a
# selection half and an estimation half stratified by emotion, near-identical texts kept in one half
# (the split is recorded in `summary.json`). The selection half chooses each pair's layers (highest
# CKA) and fits the Procrustes map; every number reported comes from the estimation half: the chosen
# layers' CKA with a bootstrap interval over text groups, the Procrustes distance under the selection
# half's map, and the emotion subspaces of both models (fit on the estimation half, model A's carried
# into B's space by the selection half's map).
#
# **Controls.** The random-weights models go through the same procedure: each model against its own
# random-weights copy, and the two random-weights models against each other, the control of the pair
# of trained models (it shares everything that comes from the texts and the tokenizers, nothing learned).
#
# **Nuisance variants** (`lib.geometry.nuisance`), each a different matrix per layer before the Gram:
# `raw`; `length` (each feature minus its least-squares fit on a cubic in the standardised log token
# count, each model's own count); `zscore` (each feature divided by its standard deviation, so no
# handful of huge-norm dimensions dominates the Gram; the price: CKA then depends on the residual
# stream's coordinates, where those outlier dimensions live, and is no longer rotation-invariant);
# `length+zscore` (both: the variant the findings quote). Each half is corrected on its own rows,
# like centring (no labels, nothing of the other model). RBF CKA runs on the raw variant only.
#
# **Measures.** Linear CKA (Kornblith et al. 2019); debiased CKA (unbiased HSIC; near 0 for unrelated
# rows, where linear CKA is biased upwards at this n and width: the headline kind); RBF CKA
# (bandwidth 0.8 x median distance). Beside each held-out value, `chance`: the exact mean of the
# rows-unpaired permutation null (for linear CKA sqrt(PR_x PR_y) / (n - 1), PR the participation
# ratio; 0 for debiased CKA). **No permutation p-values in the headline**: two models of the same
# texts always reject "rows unpaired", so those p-values carry no information beside the
# random-weights pair, and the full run sets `n_perm: 0` (no permutations: most of the old run's
# time); `n_perm` > 0 adds them for the chosen linear cells, raw and BH-adjusted, in the table only. Orthogonal Procrustes distance: 0 when one representation is a rotation of the other
# (after centring and scaling), at most sqrt(2) with the map fitted on the same rows, at most 2 under
# a map fitted on other rows.
#
# **Outputs.** `cka.csv` (every layer pair, variant, kind, half and model pair), `heldout_cka.csv`
# (the chosen layers of each pair, variant and kind: selection and held-out CKA, chance level,
# interval, control pair beside it), `best_matches.csv`, `correspondence.csv`, `procrustes.csv`,
# `aligned_angles.csv`, `layer_matching.csv`, `timings.csv`.

# %% tags=["parameters"]
models = ["tiny-gpt2", "tiny-llama"]
control_models = ["random:tiny-gpt2", "random:tiny-llama"]
profiles = ["baseline", "extended"]
activations_run = ""
site = "hook_resid_post"
reduction = "sentence_end"
kinds = ["linear", "debiased", "rbf"]
n_texts = 2000
n_perm = 19
n_boot = 200
subspace_k = 4
max_per_emotion = 20
seed = 0
output_dir = ""

# %%
import numpy as np
import plotly.express as px
from IPython.display import Markdown, display

from lib.activations.layerwise import load_layers
from lib.activations.runs import obtain_stores
from lib.geometry.procrustes import MAX_DISTANCE, MAX_HELDOUT_DISTANCE
from lib.phases.alignment_cka import (HEADLINE_VARIANT, best_matches, cka_on_halves, correspondence_table,
                                      headline_kind)
from lib.phases.cross_model_alignment import (aligned_geometry, against_control, alignment_findings,
                                              alignment_split, alignment_summary, common_sample,
                                              correspondence_markdown, model_pairs)
from lib.pipeline.provenance import save_summary
from lib.settings import step
from lib.pipeline.results import prepare_output_dir, provenance_markdown
from lib.report.plots import setup_plotly

setup_plotly()
out = prepare_output_dir(output_dir)
everyone = models + control_models
stores = obtain_stores(everyone, profiles, activations_run, out, max_per_emotion=max_per_emotion, seed=seed,
                       site=site)
data = common_sample({m: load_layers([stores[m, p] for p in profiles], m, site, reduction) for m in everyone},
                     n_texts, seed)  # same texts, same order, for every model
selection, estimation, groups, split = alignment_split(data[models[0]].labels, seed)
pairs = model_pairs(models, control_models)
kind = headline_kind(kinds)
n_layers = {m: len(d.layers) for m, d in data.items()}
display(Markdown(f"{len(selection)} selection texts, {len(estimation)} estimation texts "
                 f"({len(set(groups))} text groups); headline: {HEADLINE_VARIANT} features, {kind} CKA."))
pairs

# %% [markdown]
# ## CKA on held-out texts, raw and nuisance-corrected
# Every layer pair on the estimation half, headline kind, one panel per variant. A row or column that is
# bright everywhere (one layer of one model matching every layer of the other) is the mark of a shared
# nuisance, not of shared representations.

# %%
step('cka for every pair of layers, both halves, every variant', 1, 4)
res = cka_on_halves(data, pairs, (selection, estimation), groups, kinds, n_boot=n_boot, n_perm=n_perm, seed=seed)
cka = res.cka
held = cka[(cka["half"] == "estimation") & (cka["kind"] == kind)]
for pair in pairs["pair"]:
    sub = held[held["pair"] == pair]
    variants = list(dict.fromkeys(sub["variant"]))
    mats = np.stack([sub[sub["variant"] == v].pivot(index="layer_a", columns="layer_b", values="cka").to_numpy()
                     for v in variants])
    fig = px.imshow(mats, facet_col=0, origin="lower", zmin=0, zmax=1, color_continuous_scale="Viridis",
                    aspect="auto", title=f"{kind} CKA on held-out texts, {pair}",
                    labels={"x": f"{sub['model_b'].iloc[0]} layer", "y": f"{sub['model_a'].iloc[0]} layer",
                            "color": "CKA"})
    fig.for_each_annotation(lambda an: an.update(text=variants[int(an.text.split("=")[1])]))
    fig.show()
res.timings.groupby(["variant", "half"])["seconds"].sum().unstack()

# %% [markdown]
# ## Held-out CKA of the chosen layers, beside the random-weights control
# Each pair's layers are chosen on the selection half (highest CKA); the bar is their CKA on the
# estimation half with a 95% bootstrap interval over text groups; the grey marker is the same
# layers' CKA on the selection half (what choosing and reporting on the same texts would print),
# the dotted marker the chance level. The random-weights pair beside the trained pair is the
# control; `diff` is trained minus control with the interval of the paired bootstrap differences.

# %%
step('held-out cka of the chosen layers', 2, 4)
heldout = against_control(res.heldout, pairs, res.replicates)
top = heldout[heldout["kind"] == kind]
fig = px.bar(top, x="variant", y="cka_heldout", color="pair", barmode="group", range_y=[-0.05, 1.05],
             error_y=top["ci_high"] - top["cka_heldout"], error_y_minus=top["cka_heldout"] - top["ci_low"],
             hover_data=["layer_a", "layer_b", "cka_selection", "chance"],
             title=f"Held-out {kind} CKA of the layers chosen on the selection half (95% group bootstrap)")
fig.show()
cols = ["pair", "variant", "kind", "layer_a", "layer_b", "cka_selection", "cka_heldout", "ci_low", "ci_high",
        "chance", "control_pair", "control_cka", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_adjusted"]
heldout[cols].round(3)

# %% [markdown]
# ## Which layers correspond once the nuisances are handled
# For each layer of model A, the layer of model B with the highest selection-half CKA, by relative
# depth ((layer + 0.5) / layers); hover for its held-out CKA and whether the estimation half picks the
# same layer. The dotted diagonal is "same relative depth". The text below says, per pair, which layer
# of B matches most of A's layers raw and after the correction, and the held-out CKA of the top pair.

# %%
step('which layers correspond', 3, 4)
best = best_matches(cka, n_layers)
corr = correspondence_table(best)
shown = best[(best["kind"] == kind) & best["variant"].isin(["raw", HEADLINE_VARIANT])]
fig = px.line(shown, x="depth_a", y="depth_b", color="variant", facet_col="pair", facet_col_wrap=2, markers=True,
              hover_data=["layer_a", "layer_b", "cka_selection", "cka_heldout", "same_pick"],
              title=f"Best-matching layer by relative depth ({kind} CKA, chosen on the selection half)",
              labels={"depth_a": "relative depth, first model", "depth_b": "relative depth, second model"})
fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line_dash="dot", row="all", col="all").show()
display(Markdown(correspondence_markdown(corr, heldout, pairs, variant=HEADLINE_VARIANT, kind=kind)))
corr[corr["kind"] == kind].round(3)

# %% [markdown]
# ### Layer-matching sanity check (Kornblith et al. 2019, in spirit)
# Each model against itself: a layer's CKA profile against all layers on the selection half should
# pick the same layer on the estimation half. Accuracy is the share of layers that pick themselves; a
# similarity index that cannot do this cannot be trusted to match layers across models.

# %%
matching = res.matching
px.bar(matching, x="model", y="accuracy", color="variant", facet_col="kind", barmode="group",
       title="Layer-matching accuracy, selection half against estimation half").update_yaxes(range=[0, 1.05]).show()
matching.pivot_table(index="model", columns=["kind", "variant"], values="accuracy").round(3)

# %% [markdown]
# ## Procrustes distances under the selection half's map
# At each pair's chosen layers (headline variant and kind): the distance with the map fitted on the
# selection half (at most sqrt(2)), that map applied to the estimation half (the held-out distance, at
# most 2), and the map refitted on the estimation half (fitting and reporting on the same rows).

# %%
step('procrustes maps and emotion subspaces', 4, 4)
proc, angles = aligned_geometry(data, pairs, heldout, (selection, estimation), variant=HEADLINE_VARIANT,
                                kind=kind, k=subspace_k, seed=seed)
px.bar(proc.melt(id_vars=["pair"], value_vars=["distance_selection", "distance_heldout", "distance_refit"]),
       x="pair", y="value", color="variable", barmode="group", range_y=[0, MAX_HELDOUT_DISTANCE],
       title="Orthogonal Procrustes distance at the chosen layers").show()
proc.round(3)

# %% [markdown]
# ## Emotion subspaces after alignment
# Two kinds of emotion subspace (`lib.geometry.subspaces`), fit on the estimation half in both models:
# `between`, the offset of the emotion's mean from the neutral mean (k = 1 per emotion; joint: the span
# of the three offsets, k = 3), and `within`, the top `subspace_k` principal axes of the emotion's rows
# around their own mean. Model A's subspace is carried into B's space by the selection half's
# Procrustes map; bars are the mean principal angle in degrees; hatched bars the mean angle from the
# same carried subspace to random subspaces drawn from B's own covariance (a null the high-variance
# directions of an anisotropic representation cannot beat on their own).

# %%
long = angles.rename(columns={"mean_angle": "held-out angle", "null_mean_angle": "covariance null"}).melt(
    id_vars=["pair", "subspace", "subspace_kind", "k"], value_vars=["held-out angle", "covariance null"],
    var_name="measure", value_name="degrees")
px.bar(long, x="subspace", y="degrees", color="pair", pattern_shape="measure", barmode="group",
       facet_col="subspace_kind", range_y=[0, 90], hover_data=["k"],
       title="Mean principal angle after Procrustes alignment, held-out subspaces, beside the covariance null").show()
angles.round(1)

# %% [markdown]
# ## Save

# %%
cka.to_csv(out / "cka.csv", index=False)
heldout.to_csv(out / "heldout_cka.csv", index=False)
best.to_csv(out / "best_matches.csv", index=False)
corr.to_csv(out / "correspondence.csv", index=False)
proc.to_csv(out / "procrustes.csv", index=False)
angles.to_csv(out / "aligned_angles.csv", index=False)
matching.to_csv(out / "layer_matching.csv", index=False)
res.timings.to_csv(out / "timings.csv", index=False)
summary = alignment_summary(heldout, pairs, variant=HEADLINE_VARIANT, kind=kind)
findings = alignment_findings(heldout, angles, pairs, variant=HEADLINE_VARIANT, kind=kind,
                              cka_figure="Held-out CKA of the chosen layers, beside the random-weights control",
                              angles_figure="Emotion subspaces after alignment")
save_summary(out, summary=summary, models=[stores[m, profiles[0]].manifest["identity"] for m in everyone],
             splits=[split], findings=findings)
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
assert cka["cka"].between(-1 - 1e-6, 1 + 1e-6).all()
assert cka.loc[cka["kind"] != "debiased", "cka"].between(-1e-6, 1 + 1e-6).all()
assert not set(selection) & set(estimation) and len(selection) + len(estimation) == len(groups)
assert not set(groups[selection]) & set(groups[estimation])  # no text group in both halves
top = heldout[heldout["kind"] == kind]
assert (top["n_boot"] == n_boot).all() and (top["ci_low"] <= top["ci_high"]).all()
assert heldout["p_value"].dropna().between(0, 1).all() and heldout["p_adjusted"].dropna().between(0, 1).all()
assert proc["distance_selection"].between(0, MAX_DISTANCE + 1e-9).all()
assert proc["distance_refit"].between(0, MAX_DISTANCE + 1e-9).all()
assert proc["distance_heldout"].between(0, MAX_HELDOUT_DISTANCE + 1e-9).all()
assert angles["mean_angle"].between(0, 90).all() and angles["null_mean_angle"].between(0, 90).all()
assert matching["accuracy"].between(0, 1).all()
assert findings and all(set(f) == {"question", "finding", "control", "figure"} for f in findings)
