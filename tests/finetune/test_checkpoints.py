"""Resuming: a run killed mid-way (an exception, or SIGKILL of a real process) and rerun ends with the
same merged-weights sha256 as a run never interrupted; checkpoints hold exactly AdamW's state."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from lib.finetune.checkpoints import (CheckpointError, clear_partial, latest_checkpoint, load_checkpoint,
                                      save_checkpoint)
from lib.finetune.config import FinetuneConfig, FinetuneError
from lib.finetune.objective import encode_examples
from lib.finetune.train import finetune
from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
from lib.paths import ROOT
from tests.finetune.data import planted

CONFIGS = {"lora": dict(method="lora", steps=8, batch_size=4, learning_rate=1e-2, warmup_steps=2,
                        checkpoint_every=2, lora_dropout=0.1),
           "full": dict(method="full", steps=8, batch_size=4, learning_rate=1e-3, warmup_steps=2,
                        checkpoint_every=2)}


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def train(tok):
    return encode_examples(tok, *planted(6, seed=0))


@pytest.fixture(scope="module")
def uninterrupted(tok, train, tmp_path_factory):
    out = {}
    for method, kw in CONFIGS.items():
        r = finetune(build_tiny_model("tiny-llama"), tok, train, FinetuneConfig(**kw),
                     tmp_path_factory.mktemp(method) / "ft")
        out[method] = r
    return out


def _stop_at(step):
    seen = []

    def progress(k):
        seen.append(k)
        if len(seen) == step:
            raise Stop
    return progress


@pytest.mark.parametrize("method", list(CONFIGS))
def test_killed_by_an_exception_then_rerun_gives_the_uninterrupted_weights(tok, train, uninterrupted, method,
                                                                           tmp_path):
    cfg = FinetuneConfig(**CONFIGS[method])
    with pytest.raises(Stop):
        finetune(build_tiny_model("tiny-llama"), tok, train, cfg, tmp_path / "ft", progress=_stop_at(5))
    ckpt = latest_checkpoint(tmp_path / "ft.partial" / "checkpoints")
    assert ckpt is not None and ckpt.name == "step-000004" and not (tmp_path / "ft").exists()
    r = finetune(build_tiny_model("tiny-llama"), tok, train, cfg, tmp_path / "ft")
    want = uninterrupted[method]
    assert r.resumed_from == 4 and want.resumed_from == 0
    assert r.weights_sha256 == want.weights_sha256
    assert r.losses == want.losses and r.tokens_seen == want.tokens_seen
    # the check can fail: a different seed gives other weights
    other = finetune(build_tiny_model("tiny-llama"), tok, train, FinetuneConfig(**{**CONFIGS[method], "seed": 1}),
                     tmp_path / "other")
    assert other.weights_sha256 != want.weights_sha256


@pytest.mark.parametrize("method", list(CONFIGS))
def test_sigkilled_process_then_rerun_gives_the_uninterrupted_weights(tok, train, uninterrupted, method, tmp_path):
    marker = tmp_path / "after-step-5"
    script = textwrap.dedent(f"""
        import pathlib, time
        from lib.finetune import FinetuneConfig, encode_examples, finetune
        from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
        from tests.finetune.data import planted
        tok = build_tiny_tokenizer()
        ex = encode_examples(tok, *planted(6, seed=0))
        done = []
        def progress(k):
            done.append(k)
            if len(done) == 5:  # after step 5; the newest checkpoint is step 4's
                pathlib.Path({str(marker)!r}).write_text("5")
                time.sleep(600)
        finetune(build_tiny_model("tiny-llama"), tok, ex, FinetuneConfig(**{CONFIGS[method]!r}),
                 pathlib.Path({str(tmp_path / "ft")!r}), progress=progress)
    """)
    # the same thread count as this process: CPU kernels may sum in another order with another count
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the training process ended early: {proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "the training process never reached step 5"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "ft.partial" / "checkpoints").name == "step-000004"
    r = finetune(build_tiny_model("tiny-llama"), tok, train, FinetuneConfig(**CONFIGS[method]), tmp_path / "ft")
    assert r.resumed_from == 4 and r.weights_sha256 == uninterrupted[method].weights_sha256


def test_resuming_with_other_settings_names_the_differing_keys(tok, train, tmp_path):
    cfg = FinetuneConfig(**CONFIGS["lora"])
    with pytest.raises(Stop):
        finetune(build_tiny_model("tiny-llama"), tok, train, cfg, tmp_path / "ft", progress=_stop_at(3))
    changed = FinetuneConfig(**{**CONFIGS["lora"], "learning_rate": 2e-2, "lora_rank": 4})
    with pytest.raises(FinetuneError, match=r"\['learning_rate', 'lora_rank'\] differ"):
        finetune(build_tiny_model("tiny-llama"), tok, train, changed, tmp_path / "ft")
    # checkpoint_every does not change the result, so it may differ on resume
    r = finetune(build_tiny_model("tiny-llama"), tok, train, FinetuneConfig(**{**CONFIGS["lora"], "checkpoint_every": 3}),
                 tmp_path / "ft")
    assert r.resumed_from == 2


def test_a_half_written_checkpoint_is_ignored_and_the_newest_complete_one_is_used(tmp_path):
    p = torch.nn.Parameter(torch.arange(3.0))
    opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.01)
    for step in (1, 2):
        p.grad = torch.full((3,), float(step))
        opt.step()
        save_checkpoint(tmp_path, step, {"p": p}, opt, {"losses": [1.0] * step})
    assert sorted(d.name for d in tmp_path.iterdir()) == ["step-000002"]  # older ones are deleted
    (tmp_path / "step-000003.partial").mkdir()  # killed while writing step 3
    (tmp_path / "step-000004").mkdir()  # no state.json: incomplete
    assert latest_checkpoint(tmp_path).name == "step-000002"
    q = torch.nn.Parameter(torch.zeros(3))
    opt2 = torch.optim.AdamW([q], lr=0.1, weight_decay=0.01)
    state = load_checkpoint(latest_checkpoint(tmp_path), {"p": q}, opt2)
    assert state["step"] == 2 and state["losses"] == [1.0, 1.0] and torch.equal(q, p)
    a, b = opt.state_dict(), opt2.state_dict()
    for k in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(a["state"][0][k], b["state"][0][k])
    assert a["param_groups"] == b["param_groups"]
    for opt_, par in ((opt, p), (opt2, q)):  # and the next step is the same
        par.grad = torch.ones(3)
        opt_.step()
    assert torch.equal(p, q)
    clear_partial(tmp_path)
    assert not (tmp_path / "step-000003.partial").exists()
    with pytest.raises(CheckpointError, match="holds parameters"):
        load_checkpoint(latest_checkpoint(tmp_path), {"other": q}, opt2)
    assert not list(tmp_path.glob("**/*.pt")) and not list(tmp_path.glob("**/*.bin"))
