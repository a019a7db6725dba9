"""Phase-02 helpers against independent computations (scikit-learn PCA, norms by hand)."""
from __future__ import annotations

import numpy as np
import pytest

from lib.activations import extract_all, norm_profile, parse_profile, pca_2d, store_table
from lib.extract import ExtractConfig
from lib.store import open_store


def test_pca_matches_scikit_learn_up_to_sign():
    from sklearn.decomposition import PCA

    x = np.random.default_rng(0).normal(size=(50, 6)) * [5, 3, 1, 1, 1, 1]
    proj, var = pca_2d(x)
    ref = PCA(2).fit(x)
    assert np.allclose(np.abs(proj), np.abs(ref.transform(x)), atol=1e-8)
    assert np.allclose(var, ref.explained_variance_ratio_)


def test_extract_all_and_norms_by_hand(tmp_path):
    paths = extract_all(["tiny-gpt2"], ["baseline", "goemotions:dev"], ExtractConfig(layers=(1,)), tmp_path,
                        device="cpu", max_per_emotion=3, log=lambda *_: None)
    table = store_table(paths)
    assert set(table["profile"]) == {"baseline", "goemotions:dev"} and (table["rows"] == 12).all()
    store = open_store(paths["tiny-gpt2"]["baseline"])
    got = norm_profile(store).set_index(["layer", "emotion"])["norm"]
    x = store.get("blocks.1.hook_resid_post")
    for emo in ("anger", "neutral"):
        by_hand = np.linalg.norm(x[store.labels["emotion"] == emo], axis=1).mean()
        assert abs(got[(1, emo)] - by_hand) < 1e-5
    dev = open_store(paths["tiny-gpt2"]["goemotions:dev"])
    assert np.isnan(dev.get("blocks.1.hook_resid_post", "span")).all()  # GoEmotions has no spans


def test_profile_specs():
    assert parse_profile("goemotions:dev") == ("goemotions", "dev") and parse_profile("baseline") == ("baseline", None)
    from lib.params import ParamsError
    from lib.pipeline import check_values

    with pytest.raises(ParamsError, match="goemotions:dev"):
        check_values("02_activations", {"profiles": ["goemotions:test"]})


def test_mlflow_logging_round_trip(tmp_path):
    import json

    from mlflow.tracking import MlflowClient

    from lib.tracking import log_stores_to_mlflow

    paths = extract_all(["tiny-llama"], ["baseline"], ExtractConfig(layers=(0,)), tmp_path / "stores",
                        device="cpu", max_per_emotion=2, log=lambda *_: None)
    manifest = json.loads((paths["tiny-llama"]["baseline"] / "manifest.json").read_text())
    (run_id,) = log_stores_to_mlflow({("tiny-llama", "baseline"): manifest}, str(tmp_path / "mlruns"))
    run = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri()).get_run(run_id)
    assert run.data.params["model"] == "tiny-llama" and run.data.params["dataset_sha256"] == manifest["dataset_sha256"]
    assert run.data.metrics["tokens"] == manifest["n_tokens"] and run.data.metrics["bytes"] == manifest["bytes"]
