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
# # 08 Steering generation with emotion vectors
#
# **Question.** Phases 03 and 05 say where emotions live. Are those directions causal for what the model
# writes? We add them to the residual stream while the model generates from neutral prompts and measure what
# changes, beside controls that could have moved the text as much, and beside simply asking for the emotion.
#
# **Vectors.** CAA contrast vectors (the mean over authored emotion / neutral pairs of the difference of block
# L's output averaged over a text's tokens after its first, `pair_read`), the phase-03 directions of every method
# (`vectors_run`; with it empty they are fitted here with phase 03's code on the pairs' texts), a random
# direction and a shuffled-label vector (each pair's labels swapped with probability 1/2). Each is used as a
# unit direction u.
#
# **Intervention.** x' = x + s n_L u on block L's output (`operator`, `positions`, `norm_preserving`
# as `lib.steering.hooks` defines them), where n_L is the layer's typical residual norm: the mean ||x||
# over the prompts' tokens, each text's first token left out (it carries the attention sink's massive
# activations, 22,800 against 176 at SmolLM2's block 15). A strength s means the same in every model.
# Generation is greedy, KV-cached, batched over the whole grid (`lib.steering.grid`).
#
# **Split.** `n_prompts` neutral utterances of the authored *extended* profile are halved by text group:
# prompts are given as a user message in the model's chat template (`prompt_format`; `plain`: as text to
# continue). The layer and strength are chosen on the *selection* half, and every number of the chosen setting, its
# controls and its baselines is read on the *report* half. Contrast pairs come from the *baseline* profile.
#
# **Measures** (`lib.steering.scoring`): the share of continuations an independent judge (TF-IDF + logistic
# regression fitted on GoEmotions train, its dev accuracy below) labels with the target emotion; VADER; emotion
# keywords; the model's own probe read on the text it wrote; fluency as the perplexity of the continuation
# under the unsteered model as a ratio to the unsteered continuations', and distinct-2 (greedy repetition
# lowers perplexity, so fluency needs both); side effects as next-token KL on held-out neutral GoEmotions
# comments beside a random vector's; the anti-steerable fraction (prompts whose judge probability of the
# target falls under steering).
#
# **Outputs.** `generations.csv` (every continuation with its scores), `settings.csv` (every setting per
# half), `chosen.csv`, `goals.csv`, `interference.csv`, `side_effects.csv`, `learning_curve.csv`,
# `vector_cosines.csv`, `norms.csv`, `timings.csv`, `judge.json`, and per model `vectors/<model>/`
# (`vectors.safetensors` + `vectors.json`, and llama.cpp control vectors `<emotion>-L<layer>.gguf`).

# %% tags=["parameters"]
models = ["tiny-llama"]
emotions = ["gratitude", "anger"]
together = ["gratitude", "apology"]
layer_fractions = [0.2, 0.5]
strengths = [0.25, 0.5]
operator = "add"
positions = "both"
norm_preserving = False
n_prompts = 8
n_pairs = 8
curve_sizes = [1, 2, 4]
max_new_tokens = 4
batch_rows = 64
n_kl_texts = 4
judge_max_per_label = 60
max_ppl_ratio = 1.5
min_distinct_ratio = 0.8
prompt_template = "Reply with {emotion}: {prompt}"
prompt_format = "chat"
pair_read = "mean_after_first"
vectors_run = ""
n_boot = 200
n_perm = 200
device = "cpu"
dtype = "float32"
seed = 0
output_dir = ""

# %%
import numpy as np
import plotly.express as px
import torch
from IPython.display import Markdown, display

from lib.phases.steering import SteeringConfig, run_phase
from lib.phases.steering_tables import (example_table, findings, goals, goals_markdown, interference, pareto,
                                        prompt_changes, save_tables, setting_summary, side_effect_table,
                                        summary_text)
from lib.pipeline.provenance import save_summary
from lib.pipeline.results import prepare_output_dir, provenance_markdown
from lib.report.plots import setup_plotly

setup_plotly()
np.random.seed(seed)
torch.manual_seed(seed)
out = prepare_output_dir(output_dir)
config = SteeringConfig(models=tuple(models), emotions=tuple(emotions), together=tuple(together),
                        layer_fractions=tuple(layer_fractions), strengths=tuple(strengths), operator=operator,
                        positions=positions, norm_preserving=norm_preserving, n_prompts=n_prompts, n_pairs=n_pairs,
                        curve_sizes=tuple(curve_sizes), max_new_tokens=max_new_tokens, batch_rows=batch_rows,
                        n_kl_texts=n_kl_texts, judge_max_per_label=judge_max_per_label, max_ppl_ratio=max_ppl_ratio,
                        min_distinct_ratio=min_distinct_ratio, prompt_template=prompt_template,
                        prompt_format=prompt_format, pair_read=pair_read,
                        vectors_run=vectors_run, n_boot=n_boot, n_perm=n_perm, device=device, dtype=dtype, seed=seed)

# %% [markdown]
# ## Generate and score
# The grid (every emotion x layer x strength with the CAA vector, and the unsteered model) on all prompts;
# then, on the report half, the controls and baselines at each emotion's chosen setting.

# %%
run = run_phase(config, out)
gens, tables = run.generations, run.tables
summary = setting_summary(gens, config)
summary["pareto"] = pareto(summary)
display(tables["timings"])
j = run.judge
display(Markdown(f"**The judge** on GoEmotions dev ({j['n']} comments it never saw): accuracy {j['accuracy']:.3f} "
                 f"[{j['ci_low']:.3f}, {j['ci_high']:.3f}], balanced accuracy {j['balanced_accuracy']:.3f} "
                 f"(chance {1 / len(j['recall']):.3f}); recall " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                                            j["recall"].items())))

# %% [markdown]
# ## The grid: strength x layer
# The target emotion's share under the judge and the perplexity ratio, on the **report** half (the choice
# was made on the selection half). A share is a fraction of report prompts; the unsteered share is in the
# goals table.

# %%
grid = summary[(summary["vector"] == "caa") & ~summary["prompting"] & (summary["half"] == "report")
               & summary["emotion"].isin(emotions)]
for measure, title in (("share", "target share under the judge"), ("ppl_ratio", "perplexity ratio")):
    fig = px.density_heatmap(grid, x="strength", y="layer", z=measure, facet_row="model", facet_col="emotion",
                             histfunc="avg", text_auto=".2f", title=f"Report half: {title} by strength and layer")
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    fig.show()

# %% [markdown]
# ## Strength curves with intervals
# Target share against strength at each layer (95% bootstrap intervals over report prompts).

# %%
fig = px.line(grid, x="strength", y="share", color="layer", facet_row="model", facet_col="emotion", markers=True,
              error_y=grid["share_high"] - grid["share"], error_y_minus=grid["share"] - grid["share_low"],
              title="Report half: target share by strength")
fig.update_traces(line={"width": 1})
fig.show()

# %% [markdown]
# ## Pareto fronts and the choice
# Efficacy (share) against fluency (perplexity ratio) for every grid setting on the selection half, where the
# setting is chosen: the highest share among fluent settings (ratio <= `max_ppl_ratio`, distinct-2 at least
# `min_distinct_ratio` of unsteered). Filled markers are on the Pareto front.

# %%
sel = summary[(summary["vector"] == "caa") & ~summary["prompting"] & (summary["half"] == "selection")
              & summary["emotion"].isin(emotions)]
fig = px.scatter(sel, x="ppl_ratio", y="share", color="layer", symbol="pareto", facet_row="model",
                 facet_col="emotion", hover_data=["strength", "distinct_ratio"], log_x=True,
                 title="Selection half: efficacy against fluency (the choice is made here)")
fig.add_vline(x=max_ppl_ratio, line_dash="dot")
fig.show()
display(tables["chosen"])

# %% [markdown]
# ## Goals at the chosen setting (report half)
# Share [95% interval], its gain over unsteered (paired by prompt, sign-flip p, Benjamini-Hochberg over the
# table), fluency, KL on held-out neutral text beside a random vector of the same norm at the same place,
# prompting and prompting plus steering, and the anti-steerable fraction.

# %%
side = tables["side_effects"]
goal = goals(gens, summary, tables["chosen"], side, config)
display(Markdown(goals_markdown(goal)))

# %% [markdown]
# ## Per-prompt reliability
# For each report prompt, the judge's probability of the target at the chosen setting minus unsteered. Prompts
# left of 0 moved away from the target (anti-steerable; Tan et al. 2024 found close to half on some datasets).

# %%
changes = prompt_changes(gens, tables["chosen"])
fig = px.strip(changes, x="change", y="emotion", color="emotion", facet_row="model",
               title="Report half: change in the judge's probability of the target, per prompt")
fig.add_vline(x=0, line_dash="dot")
fig.show()

# %% [markdown]
# ## Controls and baselines beside the chosen vector
# The same layer and strength with the random and shuffled-label vectors and every phase-03 direction; the
# prompting baseline and prompting plus steering; unsteered.

# %%
rep = summary[(summary["half"] == "report") & summary["emotion"].isin(emotions)]
fig = px.bar(rep, x="setting", y="share", color="vector", facet_row="model", facet_col="emotion",
             error_y=rep["share_high"] - rep["share"], error_y_minus=rep["share"] - rep["share_low"],
             title="Report half: target share by vector and baseline (95% intervals)")
fig.update_xaxes(matches=None, showticklabels=False)
fig.show()
display(rep[["model", "emotion", "setting", "share", "share_low", "share_high", "judge_p", "probe_p", "vader",
             "keywords", "ppl_ratio", "distinct_ratio"]].round(3))

# %% [markdown]
# ## Side effects, interference, and how many pairs a vector needs
# KL on held-out neutral text per vector; two vectors at once (`together`) against each alone; the cosine of
# the CAA vector from n pairs with the vector of the other half of the pairs.

# %%
display(side_effect_table(side, config).round(4))
display(interference(gens, config))
curve = tables["learning_curve"]
if len(curve):
    px.line(curve, x="n_pairs", y="cosine", color="emotion", facet_col="model", markers=True, log_x=True,
            title="CAA vector from n pairs: cosine with the vector of the held-out half of the pairs").show()
display(tables["vector_cosines"].round(3))

# %% [markdown]
# ## Example generations
# Report prompts at each chosen setting, beside the unsteered and the prompted continuations.

# %%
display(example_table(gens, tables["chosen"], n=3))

# %% [markdown]
# ## Save

# %%
save_tables(out, run, summary, goal, config)
text = summary_text(goal)
save_summary(out, summary=text, models=run.identities, splits=run.splits, findings=findings(goal, run.judge))
display(Markdown(f"**Summary.** {text}"))
display(Markdown(provenance_markdown()))

# %%
assert set(goal["emotion"]) == set(emotions) and len(goal) == len(models) * len(emotions)
assert ((summary["share_low"] <= summary["share"] + 1e-12) & (summary["share"] <= summary["share_high"] + 1e-12)).all()
assert (goal["p_adjusted"] >= goal["p_value"] - 1e-12).all()
anti = changes.groupby(["model", "emotion"], sort=False)["change"].apply(lambda d: float((d < 0).mean()))
assert np.allclose(anti.to_numpy(), goal["anti"].to_numpy())
halves = run.splits["prompt_indices"]
assert not set(halves["selection"]) & set(halves["report"])
assert set(gens.loc[gens["half"] == "report", "prompt_index"]) == set(halves["report"])
