"""Optional MLflow logging of extraction params and metrics to a local file store (off by default)."""
from __future__ import annotations

import os
from pathlib import Path

from lib.paths import ROOT

__all__ = ["log_stores_to_mlflow"]


def log_stores_to_mlflow(manifests: dict[tuple[str, str], dict], tracking_dir: str = "mlruns",
                         experiment: str = "02_activations") -> list[str]:
    """One MLflow run per (model, profile) store: its settings as params, its figures as metrics.

    ``tracking_dir`` is a local folder (relative paths are from the project root). Returns run ids.
    """
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps local file stores opt-in
    import mlflow

    path = Path(tracking_dir)
    path = path if path.is_absolute() else ROOT / path
    mlflow.set_tracking_uri(path.resolve().as_uri())
    mlflow.set_experiment(experiment)
    ids = []
    for (model, profile), m in manifests.items():
        cfg = m["config"]
        with mlflow.start_run(run_name=f"{model}/{profile}") as run:
            mlflow.log_params({
                "model": model, "profile": profile, "weights_sha256": m["weights_sha256"],
                "dataset_sha256": m["dataset_sha256"], "n_hooks": len(m["hooks"]), "dtype": cfg["dtype"],
                "batch_size": cfg["batch_size"], "token_sites": ",".join(cfg["token_sites"]), "per_head": cfg["per_head"],
            })
            mlflow.log_metrics({
                "rows": m["n_rows"], "tokens": m["n_tokens"], "bytes": m["bytes"], "wall_s": m["wall_s"],
                "samples_per_s": m["samples_per_s"] or 0.0, "tokens_per_s": m["tokens_per_s"] or 0.0,
                **({"float16_worst_relative_error": m["float16_worst_relative_error"]}
                   if m["float16_worst_relative_error"] is not None else {}),
            })
            ids.append(run.info.run_id)
    return ids
