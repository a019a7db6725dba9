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
# # 02 Activations
#
# **Question.** What do the models compute on the emotion datasets, layer by layer, and can later
# phases read any slice of it (one hook, one layer, one emotion, a row range) without loading the
# rest?
#
# **Inputs.** Model names and dataset profiles from params; hook sites by their full
# TransformerLens names (default: `hook_resid_pre`, `hook_resid_post`, `hook_mlp_out`,
# `hook_attn_out` of every layer; `attn.hook_z` per head on request).
#
# **Outputs.** One zarr store per model, profile and settings under `stores_dir`, in a folder named by the
# hash of its settings, so runs with other settings never replace it (sentence-end, mean and
# emotion-span reductions of every hook; every real token of the `token_sites`, the residual
# stream by default; float16 with a per-row power-of-two scale by default), `stores.json` (where they are), `stores.csv` (shapes, bytes, time, throughput).
# GoEmotions profiles (real Reddit text) are capped at `goemotions_max_per_emotion` rows per
# emotion. `control_models` (`random:<model>`: the same architecture and tokenizer with random
# weights) are extracted on `control_profiles` at `control_sites`, reductions only: the control
# that phase 03 puts beside every probe curve.
# Stores are written batch by batch while extraction runs; a killed run resumes at the first
# unwritten batch.

# %% tags=["parameters"]
models = ["tiny-gpt2", "tiny-llama"]
profiles = ["baseline"]
hooks = []
layers = None
per_head = False
batch_size = 32
dtype = "float16"
device = "auto"
max_per_emotion = 20
emotions = None
token_sites = ["hook_resid_pre", "hook_resid_post"]
goemotions_max_per_emotion = 300
control_models = ["random:tiny-llama"]
control_profiles = ["baseline"]
control_sites = ["hook_resid_post"]
seed = 0
stores_dir = ""
mlflow = False
mlflow_dir = "mlruns"
output_dir = ""

# %%
import json

import pandas as pd
import plotly.express as px
from IPython.display import Markdown, display

from lib.activations.runs import extract_all, resolve_stores_dir
from lib.phases.activations import norm_profile, pca_panels, store_table
from lib.activations.plan import ExtractConfig
from lib.report.plots import EMOTION_COLORS, setup_plotly
from lib.paths import relative
from lib.pipeline.provenance import save_summary
from lib.settings import step
from lib.pipeline.results import prepare_output_dir, provenance_markdown
from lib.activations.store import open_store
from lib.pipeline.tracking import log_stores_to_mlflow

setup_plotly()
out = prepare_output_dir(output_dir)
config = ExtractConfig(hooks=tuple(hooks), layers=tuple(layers) if layers else None, per_head=per_head,
                       batch_size=batch_size, dtype=dtype, token_sites=tuple(token_sites))
stores_root = resolve_stores_dir(stores_dir, out)

# %% [markdown]
# ## Extraction
# Hook names and layers are checked against each model before any work. Rows are sorted by
# length and cut into batches of `batch_size`; each batch is one chunk of every array. A store
# that is already complete with the same settings (model weights, dataset, hooks, dtype) is
# reused as it is; every chunk carries a checksum, and the manifest the digests that later
# phases check before they trust a store.

# %%
step('extraction', 1, 3)
paths = extract_all(models, profiles, config, stores_root, device=device, max_per_emotion=max_per_emotion,
                    emotions=emotions, seed=seed, goemotions_max_per_emotion=goemotions_max_per_emotion)
control_config = ExtractConfig(layers=config.layers, sites=tuple(control_sites), batch_size=batch_size, dtype=dtype,
                               token_sites=())
paths.update(extract_all(control_models, control_profiles, control_config, stores_root, device=device,
                         max_per_emotion=max_per_emotion, emotions=emotions, seed=seed,
                         goemotions_max_per_emotion=goemotions_max_per_emotion))  # the same rows as the models'
table = store_table(paths)
table.drop(columns=["path"])

# %% [markdown]
# Throughput counts only the batches computed in this run (a reused store shows the figures of
# the run that made it). `fp16_worst_rel_err` is the largest relative error
# ||stored - exact|| / ||exact|| over the real token vectors of every eighth batch.

# %% [markdown]
# ## Residual norm by layer
# Mean L2 norm of the sentence-end `hook_resid_post` per layer and emotion. Emotions that
# differ here could be told apart by norm alone; later phases normalise or control for it.

# %%
step('residual norm by layer', 2, 3)
stores = {(m, p): open_store(path) for m, by_p in paths.items() for p, path in by_p.items()}
norms = pd.concat([norm_profile(s).assign(model=m, profile=p) for (m, p), s in stores.items() if m in models],
                  ignore_index=True)
px.line(norms, x="layer", y="norm", color="emotion", facet_col="model", facet_row="profile", markers=True,
        color_discrete_map=EMOTION_COLORS, title="Sentence-end residual norm by layer",
        height=300 * norms["profile"].nunique()).update_xaxes(matches=None).update_yaxes(matches=None).show()

# %% [markdown]
# ## Two principal components at an early, a middle and a late layer
# Sentence-end `hook_resid_post` of the first profile, centred, projected on its top two
# principal axes; the table below gives each panel's layer and the share of variance of each axis.

# %%
step('two principal components at an early, a middle and a late layer', 3, 3)
pcs = pd.concat([pca_panels(s).assign(model=m) for (m, p), s in stores.items() if p == profiles[0]],
                ignore_index=True)
px.scatter(pcs, x="PC1", y="PC2", color="emotion", facet_col="stage", facet_row="model", hover_data=["text", "layer"],
           color_discrete_map=EMOTION_COLORS, opacity=0.7, title=f"PCA of sentence-end resid_post ({profiles[0]})",
           height=320 * len(models)).update_xaxes(matches=None).update_yaxes(matches=None).show()
pcs.groupby(["model", "stage"], sort=False)[["layer", "var1", "var2"]].first().style.format(
    {"var1": "{:.0%}", "var2": "{:.0%}"})

# %% [markdown]
# ## Save
# With `mlflow: true`, each store's settings and figures are also logged as one MLflow run to the
# local file store `mlflow_dir` (browse with `mlflow ui --backend-store-uri mlruns`).

# %%
table.to_csv(out / "stores.csv", index=False)
(out / "stores.json").write_text(json.dumps(
    {m: {p: str(relative(path)) for p, path in by_p.items()} for m, by_p in paths.items()}, indent=2))
summary = (f"{len(table)} stores ({', '.join(models)} x {', '.join(profiles)}; controls {', '.join(control_models)} x "
           f"{', '.join(control_profiles)}), {table['MB'].sum():.0f} MB; "
           + ", ".join(f"{r.model}/{r.profile} {r.tokens_per_s:.0f} tok/s" for r in table.itertuples()))
save_summary(out, summary=summary,
             models=[s.manifest["identity"] for (m, p), s in stores.items() if p == (profiles + control_profiles)[0]],
             external_outputs=[str(relative(path)) for by_p in paths.values() for path in by_p.values()])
if mlflow:
    log_stores_to_mlflow({key: s.manifest for key, s in stores.items()}, mlflow_dir)
display(Markdown(f"**Summary.** {summary}"))
display(Markdown(provenance_markdown()))

# %%
assert all((path / "manifest.json").exists() for by_p in paths.values() for path in by_p.values())
assert (table["rows"] > 0).all()
if dtype == "float16" and token_sites:
    assert (table["fp16_worst_rel_err"].dropna() < 1e-2).all() and table["fp16_worst_rel_err"].notna().any(), table
# a control holds exactly the rows of its model on every profile both have (phase 03 compares them row for row)
assert all(stores[c, p].labels["id"].sort_values().tolist() == stores[m, p].labels["id"].sort_values().tolist()
           for c in control_models for m in models if c == f"random:{m}" for p in control_profiles if (m, p) in stores)
