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
# # 01 Emotion datasets
#
# **Question.** What text do later phases read, is it balanced and varied, and could a model tell
# the emotions apart from surface features (length, punctuation) alone, or from texts leaked
# across profiles?
#
# **Inputs.** The authored profiles `baseline` (225 utterances per emotion, as in the seed runs)
# and `extended` (at least 400 per emotion, no text shared with baseline), both in
# `data/emotions/`, each row with the character span of its emotion-bearing phrase; and
# `goemotions`, real Reddit comments (Demszky et al. 2020) whose only label is gratitude, anger,
# remorse (read as apology) or neutral, `train` for fitting and `dev` for evaluation.
#
# **Outputs.** `counts.csv`, `lengths.csv`, `distinctive_words.csv`, `near_duplicates.csv`,
# `surface_baseline.json`.

# %% tags=["parameters"]
profiles = ["baseline", "extended", "goemotions"]
models = ["tiny-gpt2", "tiny-llama"]
seed = 0
near_duplicate_threshold = 0.8
examples_per_emotion = 2
output_dir = ""

# %%
import json

import pandas as pd
import plotly.express as px
from IPython.display import HTML, Markdown, display

from lib.text.datasets import load_profiles
from lib.report.display import examples_html
from lib.text.leakage import near_duplicates
from lib.models.encoding import load_encoder
from lib.report.plots import EMOTION_COLORS, emotion_order, setup_plotly
from lib.pipeline.provenance import save_summary
from lib.pipeline.results import prepare_output_dir, provenance_markdown
from lib.text.statistics import distinctive_words, surface_baseline, surface_features

setup_plotly()
out = prepare_output_dir(output_dir)
df = load_profiles(profiles)  # every row validated; the first bad row stops here with file and line
df["group"] = df["profile"].where(df["profile"] != "goemotions", "goemotions-" + df["split"])
authored = df[df["source"] == "authored"]
colors = dict(color_discrete_map=EMOTION_COLORS, category_orders={"emotion": emotion_order(df["emotion"])})

# %% [markdown]
# ## Counts
# The authored profiles are balanced by construction. GoEmotions keeps its real, unbalanced
# counts (neutral dominates): later phases report per-class and macro scores on it, or subsample.

# %%
counts = df.groupby(["group", "emotion"]).size().unstack(fill_value=0)[emotion_order(df["emotion"])]
display(counts)
px.bar(df.groupby(["group", "emotion"]).size().reset_index(name="rows"), x="group", y="rows",
       color="emotion", barmode="group", log_y=True, title="Rows per profile and emotion (log scale)",
       **colors).show()

# %% [markdown]
# ## Lengths
# Lengths in words, and in tokens for each model's tokenizer (with its BOS policy), per emotion.
# If neutral were shorter or longer than the emotions, a probe could succeed by counting tokens.

# %%
feats = surface_features(df["text"])
lengths = pd.concat([df[["id", "group", "emotion"]], feats], axis=1)
encoders = {name: load_encoder(name) for name in models}  # tokenizers only, no weights
for name, encoder in encoders.items():
    lengths[f"tokens_{name}"] = encoder.n_tokens(df["text"])
px.box(lengths, x="group", y="words", color="emotion", points=False,
       title="Words per text, by profile and emotion", **colors).show()
token_cols = [c for c in lengths if c.startswith("tokens_")]
px.box(lengths.melt(id_vars=["group", "emotion"], value_vars=token_cols, var_name="tokenizer",
                    value_name="tokens"),
       x="tokenizer", y="tokens", color="emotion", facet_col="group", points=False,
       title="Tokens per text, by tokenizer (BOS included where the model gets one; axis cut at the 99th percentile)",
       **colors).update_yaxes(range=[0, lengths[token_cols].quantile(0.99).max()]).show()
display(lengths.groupby(["group", "emotion"])[["words", *token_cols]].median().unstack("emotion"))

# %% [markdown]
# ## Punctuation, and a surface-only baseline
# The authored utterances were written to the same length and final-punctuation quotas in every
# emotion. The check: a logistic regression that sees only word and character counts, commas,
# `!`, `?`, sentence count and the final character, 5-fold cross-validated. Its accuracy should be
# near chance and its neutral-vs-rest AUC near 0.5; on GoEmotions it is reported, not controlled.

# %%
px.histogram(lengths, x="final", color="emotion", facet_col="group", barmode="group",
             histnorm="percent", title="Final character of each text (% within emotion)", **colors).show()
baseline_scores = {g: surface_baseline(sub["text"], sub["emotion"], seed=seed)
                   for g, sub in df.groupby("group")}
surface = pd.DataFrame(baseline_scores).T
surface

# %% [markdown]
# ## Most distinctive words
# Weighted log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi and Quinn 2008):
# each emotion's words against all other emotions of the authored profiles, as z-scores. High
# z means the word is typical of that emotion beyond what its frequency alone would give.

# %%
words = distinctive_words(authored["text"], authored["emotion"], top=12)
px.bar(words, x="z", y="word", color="label", facet_col="label", orientation="h",
       facet_col_spacing=0.06, color_discrete_map=EMOTION_COLORS, height=420,
       title="Most distinctive words per emotion (authored profiles)").update_yaxes(
           matches=None, showticklabels=True, autorange="reversed").show()

# %% [markdown]
# ## Examples
# Random rows per profile and emotion; the annotated emotion-bearing span is highlighted (for
# neutral rows, the main informational phrase; GoEmotions has no span annotation).

# %%
display(HTML(examples_html(df, per_group=examples_per_emotion, seed=seed)))

# %% [markdown]
# ## Leakage check
# Pairs of texts whose character 5-gram sets overlap with Jaccard similarity at least the
# threshold, within and across profiles (and GoEmotions splits). `exact` means the same text
# once case and punctuation are ignored. Cross-profile pairs matter when one profile fits and
# another evaluates; within-profile pairs matter for cross-validation folds.

# %%
dups = near_duplicates(df[["id", "text", "group"]], threshold=near_duplicate_threshold)
leak = (dups.groupby(["group_a", "group_b", "exact"]).size().unstack("exact", fill_value=0)
        .rename(columns={True: "exact", False: "near only"}))
display(leak)
cross = dups[dups["group_a"] != dups["group_b"]]
display(cross.head(15)[["group_a", "group_b", "text_a", "text_b", "jaccard"]])

# %% [markdown]
# ## Save

# %%
counts.to_csv(out / "counts.csv")
lengths.to_csv(out / "lengths.csv", index=False)
words.to_csv(out / "distinctive_words.csv", index=False)
dups.to_csv(out / "near_duplicates.csv", index=False)
(out / "surface_baseline.json").write_text(json.dumps(baseline_scores, indent=2))
authored_cross = cross[cross["group_a"].isin(["baseline", "extended"]) & cross["group_b"].isin(["baseline", "extended"])]
summary = (f"{len(authored)} authored rows ({', '.join(f'{g}: {n}' for g, n in authored.groupby('profile').size().items())}) "
           f"+ {len(df) - len(authored)} GoEmotions rows; surface-only baseline accuracy "
           + ", ".join(f"{g} {s['accuracy']:.2f} (chance {s['chance']:.2f})" for g, s in baseline_scores.items()
                       if g in ("baseline", "extended"))
           + f"; {len(authored_cross)} baseline/extended near-duplicate pairs, {len(cross)} cross-profile in all")
save_summary(out, summary=summary, models=[e.identity() for e in encoders.values()])
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
assert set(authored["emotion"]) <= {"gratitude", "anger", "apology", "neutral"}
for profile, minimum in {"baseline": 225, "extended": 400}.items():
    if profile in profiles:
        per_emotion = authored[authored["profile"] == profile].groupby("emotion").size()
        assert (per_emotion >= minimum).all() and per_emotion.nunique() <= 2, per_emotion
assert authored_cross.empty, authored_cross  # baseline and extended share no text
assert (authored["span_end"] <= authored["text"].str.len()).all()
for g in ("baseline", "extended"):
    if g in baseline_scores:  # surface features alone must not separate neutral
        assert 0.35 < baseline_scores[g]["neutral_auc"] < 0.65, baseline_scores[g]
