"""MLflow logging of store manifests, read back through MLflow's own client."""
from __future__ import annotations

from lib.activations.plan import ExtractConfig
from lib.activations.runs import extract_all


def test_mlflow_logging_round_trip(tmp_path):
    import json

    from mlflow.tracking import MlflowClient

    from lib.pipeline.tracking import log_stores_to_mlflow

    paths = extract_all(["tiny-llama"], ["baseline"], ExtractConfig(layers=(0,)), tmp_path / "stores",
                        device="cpu", max_per_emotion=2, log=lambda *_: None)
    manifest = json.loads((paths["tiny-llama"]["baseline"] / "manifest.json").read_text())
    (run_id,) = log_stores_to_mlflow({("tiny-llama", "baseline"): manifest}, str(tmp_path / "mlruns"))
    run = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri()).get_run(run_id)
    assert run.data.params["model"] == "tiny-llama" and run.data.params["dataset_sha256"] == manifest["dataset_sha256"]
    assert run.data.metrics["tokens"] == manifest["n_tokens"] and run.data.metrics["bytes"] == manifest["bytes"]
