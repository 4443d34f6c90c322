"""A run SIGKILLed mid-epoch resumes to the uninterrupted result; 2-process DDP (gloo) matches 1 process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_helpers as h
from mmfuse.train import load, train
from mmfuse.train.resume import read_resume_state

CHILD = Path(__file__).with_name("run_child.py")
ROOT = Path(__file__).resolve().parents[2]


def child(config: dict, run_dir: Path, *extra: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """Run ``run_child.py`` on ``config``; returns the finished process (stdout / stderr captured)."""
    config_path = run_dir.parent / f"{run_dir.name}.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = run_dir.parent / f"{run_dir.name}-out.json"
    return subprocess.run(
        [sys.executable, str(CHILD), str(config_path), str(run_dir), str(out), *extra],
        env=env, cwd=run_dir.parent, capture_output=True, text=True, timeout=timeout,
    )


def resume_config() -> dict:
    cfg = h.tiny_config("interactions")
    cfg["model"]["head"]["dropout"] = 0.2  # dropout draws must also match after the resume
    # 360 training rows / 16 = 22 steps per epoch, 44 in all; a checkpoint every 5 steps
    cfg["train"].update(max_epochs=2, checkpoint_every_n_steps=5, lr=1e-2, warmup_steps=4)
    return cfg


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, one_thread):
    cfg = resume_config()
    killed_dir = tmp_path / "killed"
    proc = child(cfg, killed_dir, "29")  # step 29: mid epoch 2 (steps 23-44), last checkpoint at 25
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state = read_resume_state(killed_dir / "last.ckpt")
    assert state["global_step"] == 25 and state["epoch"] == 1
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0] == {"epoch": 1, "batches": 3}
    assert not (killed_dir / "model").exists()

    resumed = train(cfg, run_dir=killed_dir)  # picks up last.ckpt by itself
    assert resumed.start_step == 25
    reference = train(cfg, run_dir=tmp_path / "reference")
    assert reference.start_step == 0
    assert resumed.metrics == reference.metrics  # bit for bit
    a, b = load(resumed.checkpoint).state_dict(), load(reference.checkpoint).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_cpu_processes_match_one_process_at_the_same_global_batch(tmp_path, one_thread):
    cfg = h.tiny_config("interactions")
    cfg["train"].update(max_epochs=2, lr=1e-2)
    ddp = json.loads(json.dumps(cfg))
    ddp["data"]["batch_size"] = 8  # x 2 processes = the global batch of 16
    ddp["train"].update(strategy="ddp", devices=2, accelerator="cpu")
    proc = child(ddp, tmp_path / "ddp")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    two = json.loads((tmp_path / "ddp-out.json").read_text())["metrics"]
    one = train(cfg, run_dir=tmp_path / "single").metrics
    assert two.keys() == one.keys()
    for key in one:
        tol = 0.02 if "accuracy" in key or "f1" in key else 1e-4  # a few borderline argmaxes may flip
        assert two[key] == pytest.approx(one[key], abs=tol), key
    wa = load(tmp_path / "ddp").state_dict()
    wb = load(tmp_path / "single").state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)  # only summation order differs
