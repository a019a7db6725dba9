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
# # 07 A shared subspace for composition? Synthetic grid tasks, hypotheses H1-H4
#
# **Question.** The language-model phases look for emotion directions and subspaces after the fact. Here the
# ground truth is known: small models are trained from scratch on 8x8 grid tasks made of known primitives
# (colour shift, rotation, two flips, shift, gravity), and we ask whether a regulariser that makes the task
# groups of a batch share a subspace of the bottleneck h helps them compose.
#
# **Hypotheses and their decision rules (fixed before any run, in `lib/phases/shared_subspace_tables.py`).**
# Each compares one metric between conditions over seeds: the mean difference (signed so that positive supports
# the hypothesis) with a 95% bootstrap interval over seeds (paired by seed), the probability of improvement, and
# an exact one-sided permutation p over seeds, Benjamini-Hochberg adjusted over the tests of H1-H4.
# - **H1** the regulariser increases cross-task subspace sharing in the bottleneck: the sharing distance is
#   lower with it than without it *and* than with a bottleneck of matched effective rank (so that a mere loss of
#   dimensions does not count as sharing).
# - **H2** it improves zero-shot exact accuracy on unseen length-3 compositions. Read only if in-distribution
#   accuracy reaches 0.95 in both conditions; below that a zero-shot failure is not a failure to compose, and H2
#   is *not testable*.
# - **H3** it speeds few-shot LoRA adaptation to other unseen compositions (area under the query-IoU curve).
# - **H4** sparse-autoencoder units of the regularised bottleneck align with the primitives: their 1-sparse probe
#   F1 beats the best of PCA and FastICA codes of the same h, and chance.
#
# **Design.** Training tasks: every primitive alone and every ordered pair but `n_heldout_pairs`; test tasks:
# length-3 compositions that compute a map no training task computes (one per functional class), split into
# zero-shot and few-shot sets. The model reads the input grid (Conv2d patches) and the task's program (primitive
# ids) and writes the output grid through h (`d_bottleneck`). Conditions: regulariser off (alpha 0) and on
# (`alpha`), `seeds` seeds each (the same seed gives both the same initial weights and batches); controls: a
# bottleneck limited to a random subspace of the on-models' median participation ratio on the fitting half of
# the analysis rows (matched effective rank), the untrained encoder, and in larger runs a sweep of alpha and the
# GRU encoder.
#
# **Measurements.** The sharing distance is the mean pairwise geodesic Grassmann distance sqrt(sum theta_i^2)
# between the top-`analysis_k` PCA subspaces of h of each multi-hot label group, on fresh samples of the training
# tasks (the scoring half of the analysis set). `analysis_k` is smaller than the regulariser's own `sharing_k` and
# than the matched rank: at k >= the rank of h every group spans the same subspace and the distance is 0 whatever
# the training, so the matched-rank control could not be beaten. CKA between single-primitive task groups uses
# the same input grids under each program. Probes, the SAE and the PCA/ICA baselines (codes of the same size,
# `sae_k` = `baseline_k`) are fitted on one half of the analysis set by sample and scored on the other. Every
# metric is first checked on planted data below.

# %% tags=["parameters"]
seeds = 2
encoders = ["transformer"]
alpha = 0.1
alpha_sweep = []
matched_rank_control = True
train_steps = 6
batch_size = 16
groups_per_batch = 2
samples_per_task = 8
learning_rate = 0.003
sharing_k = 2
analysis_k = 1
beta = 0.1
d_model = 16
n_layers = 1
d_bottleneck = 16
decoder = "mlp"
min_objects = 1
max_objects = 2
max_object_size = 2
n_heldout_pairs = 6
n_test = 4
n_fewshot = 2
fewshot_shots = 4
fewshot_steps = 4
fewshot_rank = 2
fewshot_threshold = 0.5
n_eval_per_task = 4
n_analysis_per_task = 8
n_shared = 16
sae_k = 4
sae_l1 = 0.01
sae_steps = 20
baseline_k = 4
n_null = 20
n_boot = 200
workers = 1
ray_address = ""
seed = 0
output_dir = ""

# %%
import numpy as np
import pandas as pd
import plotly.express as px
import torch
from IPython.display import Markdown, display

from lib.phases.shared_subspace import SharedConfig, examples, run_phase, split_summary, unit_pictures
from lib.phases.shared_subspace_tables import (GATE, condition_table, findings, hypothesis_table, run_table,
                                               save_tables, summary_text, sweep_table, training_curves)
from lib.pipeline.provenance import save_summary
from lib.pipeline.results import prepare_output_dir, provenance_markdown
from lib.report.plots import setup_plotly
from lib.synthetic.analysis import random_subspace_null

setup_plotly()
np.random.seed(seed)
torch.manual_seed(seed)
out = prepare_output_dir(output_dir)
config = SharedConfig(seeds=seeds, encoders=tuple(encoders), alpha=alpha, alpha_sweep=tuple(alpha_sweep),
                      matched_rank_control=matched_rank_control, train_steps=train_steps, batch_size=batch_size,
                      groups_per_batch=groups_per_batch, samples_per_task=samples_per_task,
                      learning_rate=learning_rate, sharing_k=sharing_k, analysis_k=analysis_k, beta=beta,
                      d_model=d_model,
                      n_layers=n_layers, d_bottleneck=d_bottleneck, decoder=decoder, min_objects=min_objects,
                      max_objects=max_objects, max_object_size=max_object_size,
                      n_heldout_pairs=n_heldout_pairs, n_test=n_test, n_fewshot=n_fewshot,
                      fewshot_shots=fewshot_shots, fewshot_steps=fewshot_steps, fewshot_rank=fewshot_rank,
                      fewshot_threshold=fewshot_threshold, n_eval_per_task=n_eval_per_task,
                      n_analysis_per_task=n_analysis_per_task, n_shared=n_shared, sae_k=sae_k, sae_l1=sae_l1,
                      sae_steps=sae_steps, baseline_k=baseline_k, n_null=n_null, n_boot=n_boot, workers=workers,
                      ray_address=ray_address, seed=seed)

# %% [markdown]
# ## The task split
# Every run shares it (`seed`); no test composition computes a map that a training task computes, every
# primitive is trained, and the pair coverage says how many of the consecutive pairs inside the test
# compositions were trained as pairs.

# %%
split = split_summary(config)
display(pd.DataFrame([{k: v for k, v in split.items() if not isinstance(v, list)}]))
display(pd.DataFrame({"zero-shot compositions": pd.Series(split["zero_shot"]),
                      "few-shot compositions": pd.Series(split["few_shot"]),
                      "held-out pairs": pd.Series(split["heldout_pairs"])}).fillna(""))

# %% [markdown]
# ## Train and measure every run
# Runs go through `lib.synthetic.grid.run_grid`: a loop with `workers: 1`, a local Ray cluster with more, or an
# existing cluster at `ray_address`. Each run folder (`runs/<condition>_s<seed>/`) keeps its training logs
# (`train/steps.csv`, `train/eval.csv`), weights, record and representations; a killed run resumes from its
# last checkpoint.

# %%
run = run_phase(config, out)
measures = pd.DataFrame([{k: v for k, v in m.items() if k != "units"} for m in run.measures])
display(run_table(run))

# %% [markdown]
# ## Metric checks on planted data
# Before reading them on the models: the sharing distance must separate groups drawn in one subspace from groups
# in their own subspaces, and the SAE's 1-sparse F1 must find planted primitive directions.

# %%
planted = pd.DataFrame(run.planted)
display(planted)

# %% [markdown]
# ## Training
# Validation IoU (samples of the training tasks) during training, per run.

# %%
curves = training_curves(run)
if len(curves):
    px.line(curves, x="step", y="val_iou", color="condition", line_group="run",
            title="Validation IoU during training (training tasks; one line per seed)").show()
table = condition_table(measures, n_boot=n_boot, seed=seed)
acc = table[table["metric"].isin(["in_dist_accuracy", "zero_shot_accuracy", "in_dist_iou", "zero_shot_iou"])]
px.bar(acc, x="metric", y="mean", color="condition", barmode="group",
       error_y=acc["ci_high"] - acc["mean"], error_y_minus=acc["mean"] - acc["ci_low"],
       title=f"Accuracy and IoU, in distribution and zero-shot (95% intervals over seeds; gate {GATE})").show()

# %% [markdown]
# ## H1: subspace sharing
# Sharing distance per run (lower = more shared), beside the mean distance between random subspaces of the
# same size and the task-group CKA on identical inputs.

# %%
null = random_subspace_null(d_bottleneck, analysis_k, n=n_null, seed=seed)
fig = px.strip(measures, x="condition", y="sharing_distance", color="condition",
               title="Sharing distance per run (geodesic Grassmann, lower = more shared)")
fig.add_hline(y=float(np.mean(null)), line_dash="dot", annotation_text="random subspaces")
fig.show()
px.strip(measures, x="condition", y="group_cka_debiased", color="condition",
         title="Debiased CKA between single-primitive task groups (same inputs)").show()
kept = measures.groupby("condition", sort=False)[["variance_kept", "participation_ratio"]].mean()
display(kept.rename(columns={"variance_kept": f"variance kept by k={analysis_k}"}))
display(pd.DataFrame(run.layer_checks))

# %% [markdown]
# The table above is Kornblith et al.'s sanity check: for each layer of seed 0 the seed-1 layer of highest CKA;
# `accuracy` is the fraction matched to the same layer.

# %% [markdown]
# ## H2 and H3: zero-shot composition and few-shot adaptation

# %%
px.strip(measures, x="condition", y="zero_shot_iou", color="condition",
         title="Zero-shot IoU on unseen length-3 compositions, per run").show()
fs = pd.DataFrame([{"condition": r["spec"]["condition"], "seed": r["seed"], "step": s, "iou": v}
                   for r in run.records for s, v in zip(r["few_shot"]["steps"], r["few_shot"]["iou"])])
px.line(fs.groupby(["condition", "step"], as_index=False)["iou"].mean(), x="step", y="iou", color="condition",
        markers=True, title="Few-shot LoRA adaptation: query IoU (mean over seeds)").show()

# %% [markdown]
# ## H4: SAE units and the primitives
# Mean 1-sparse probe F1 of SAE units against PCA and FastICA codes of the same h, per condition; SAE health.

# %%
f1 = table[table["metric"].isin(["sae_f1", "pca_f1", "ica_f1"])]
px.bar(f1, x="condition", y="mean", color="metric", barmode="group",
       error_y=f1["ci_high"] - f1["mean"], error_y_minus=f1["mean"] - f1["ci_low"],
       title="1-sparse probe F1 per primitive, mean (95% intervals over seeds)").show()
display(measures.groupby("condition", sort=False)[["sae_variance_explained", "sae_dead_fraction", "sae_l0",
                                                   "chance_f1"]].mean())
on0 = next(i for i, r in enumerate(run.records) if r["spec"]["condition"] == "on")
grids, titles = unit_pictures(run.records[on0], run.measures[on0], config)
px.imshow(grids, facet_col=0, facet_col_wrap=4, color_continuous_scale="Viridis", zmin=0, zmax=grids.max(),
          title="What each primitive's SAE unit fires most on (on, seed 0): input and target").show()
ex = examples(run.records[on0], config)
show = np.concatenate([ex["input"], ex["target"], ex["prediction"]])
px.imshow(show, facet_col=0, facet_col_wrap=len(ex["input"]), color_continuous_scale="Viridis",
          title=f"Unseen composition {' then '.join(ex['task'])}: inputs (top), targets, predictions (on, seed 0)"
          ).show()

# %% [markdown]
# ## The hypotheses

# %%
hyp = hypothesis_table(measures, n_boot=n_boot, seed=seed)
display(hyp[["hypothesis", "comparison", "a_mean", "b_mean", "estimate", "ci_low", "ci_high", "p_improvement",
             "p_value", "p_adjusted", "verdict", "controls"]])
display(sweep_table(measures))

# %% [markdown]
# ## Save

# %%
save_tables(out, {"runs": run_table(run), "measures": measures, "conditions": table, "hypotheses": hyp,
                  "planted": planted, "layer_checks": pd.DataFrame(run.layer_checks), "training": curves})
summary = summary_text(hyp)
save_summary(out, summary=summary, findings=findings(hyp, measures), matched_rank=run.matched_rank,
             seconds=run.seconds, splits={"analysis": "halves by sample within task: even rows fit, odd rows score",
                                          "tasks": split})
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
assert set(hyp["hypothesis"]) == {"H1", "H2", "H3", "H4"} and (hyp["verdict"] != "").sum() == 4
assert ((hyp["ci_low"] <= hyp["estimate"]) & (hyp["estimate"] <= hyp["ci_high"])).all()
assert (hyp["p_adjusted"] >= hyp["p_value"] - 1e-12).all()
assert len(measures) == len(run.records) and measures.groupby("condition").size().min() >= 2
