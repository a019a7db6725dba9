"""One run of phase 07 (lib.synthetic.experiment.run_one): what it writes, same seed twice -> same metrics,
a finished run is read not redone, another spec in the same folder is refused, the untrained control."""
import json

import numpy as np
import pytest

from lib.synthetic.experiment import run_one


def tiny_spec(out_dir, *, seed: int = 0, alpha: float = 0.0, untrained: bool = False, steps: int = 4) -> dict:
    return {"name": "on" if alpha else "off", "condition": "on" if alpha else "off", "encoder": "transformer",
            "seed": seed, "untrained": untrained, "out_dir": str(out_dir),
            "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_bottleneck": 8, "decoder": "mlp"},
            "train": {"steps": steps, "batch_size": 8, "groups_per_batch": 2, "samples_per_task": 4, "lr": 3e-3,
                      "alpha": alpha, "sharing_k": 2, "eval_every": 2, "n_val_per_task": 2, "warmup": 1,
                      "spec": {"min_objects": 1, "max_objects": 2, "max_object_size": 2}},
            "split": {"seed": 0, "n_test": 2, "n_fewshot": 1, "n_heldout_pairs": 6},
            "fewshot": {"shots": 2, "steps": 2, "rank": 2, "eval_every": 1, "n_query": 2},
            "n_eval_per_task": 2, "n_analysis_per_task": 4, "n_shared": 8, "eval_seed": 1}


def test_run_writes_its_record_and_representations(tmp_path):
    rec = run_one(tiny_spec(tmp_path / "run"))
    n_train = 6 + 30 - 6
    h = np.load(tmp_path / "run" / "h.npy")
    assert h.shape == (n_train * 4, 8) and np.isfinite(h).all()
    assert np.load(tmp_path / "run" / "layers.npy").shape == (1, n_train * 4, 16)
    assert np.load(tmp_path / "run" / "shared_h.npy").shape == (6, 8, 8)
    assert rec["train"]["steps"] == 4 and 0 <= rec["zero_shot"]["iou"] <= 1
    assert rec["few_shot"]["steps"][0] == 0 and len(rec["zero_shot_per_task"]) == 2
    assert json.loads((tmp_path / "run" / "record.json").read_text()) == rec


def test_same_seed_twice_same_metrics(tmp_path):
    a, b = run_one(tiny_spec(tmp_path / "a")), run_one(tiny_spec(tmp_path / "b"))
    keys = ("in_distribution", "zero_shot", "few_shot", "zero_shot_per_task")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert np.array_equal(np.load(tmp_path / "a" / "h.npy"), np.load(tmp_path / "b" / "h.npy"))
    c = run_one(tiny_spec(tmp_path / "c", seed=1))
    assert not np.array_equal(np.load(tmp_path / "a" / "h.npy"), np.load(tmp_path / "c" / "h.npy"))


def test_a_finished_run_is_read_and_another_spec_refused(tmp_path, monkeypatch):
    first = run_one(tiny_spec(tmp_path / "run"))
    import lib.synthetic.experiment as ex
    monkeypatch.setattr(ex, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    assert run_one(tiny_spec(tmp_path / "run")) == first
    with pytest.raises(ValueError, match="another spec"):
        run_one(tiny_spec(tmp_path / "run", seed=3))


def test_untrained_control_has_no_training(tmp_path):
    rec = run_one(tiny_spec(tmp_path / "u", untrained=True))
    assert rec["train"] is None and not (tmp_path / "u" / "train").exists()
    trained = run_one(tiny_spec(tmp_path / "t", steps=6))
    assert not np.array_equal(np.load(tmp_path / "u" / "h.npy"), np.load(tmp_path / "t" / "h.npy"))
