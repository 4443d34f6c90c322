"""The prepared device script (benchmarks/device_session.sh): its plumbing, on the CPU.

The GPU parts themselves run only on a lent device machine; here: the script parses, a part
runs under its cap with its output in $OUT/device.log, and an unknown part is named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device_session.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _run(tmp_path, *parts, **env):
    full = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "DEVICE": "cpu",
            "SMOKE": "1", "PY": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *parts], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_machine_part_logs_torch_and_its_exit_status(tmp_path):
    r = _run(tmp_path, "machine")
    log = (tmp_path / "out" / "device.log").read_text()
    assert "== machine: cap 10s" in log
    import torch

    assert f"torch {torch.__version__}" in log and f"available {torch.cuda.is_available()}" in log
    assert "== machine: rc 0 after" in log
    assert r.returncode == 0


def test_a_part_past_its_cap_is_stopped_and_the_next_still_runs(tmp_path):
    r = _run(tmp_path, "throughput", "machine", CAP_THROUGHPUT="1")
    log = (tmp_path / "out" / "device.log").read_text()
    assert "== throughput: cap 1s" in log
    rc = int(log.split("== throughput: rc ")[1].split()[0])
    assert rc != 0  # interrupted at its cap
    assert "== machine: rc 0" in log and r.returncode == 0


def test_unknown_part_is_named(tmp_path):
    _run(tmp_path, "gpu_magic")
    log = (tmp_path / "out" / "device.log").read_text()
    assert "unknown part 'gpu_magic'" in log


def test_leaderboard_soc_part_trains_with_the_input_layernorms(tmp_path):
    r = _run(tmp_path, "leaderboard_soc")
    log = (tmp_path / "out" / "device.log").read_text()
    assert "== leaderboard_soc: rc 0" in log, log[-2000:]
    table = (tmp_path / "out" / "leaderboard_soc.md").read_text()
    assert "| san |" in table and "| concat |" in table
    import json

    entries = json.loads((tmp_path / "work" / "leaderboard_soc" / "results.json").read_text())["entries"]
    assert len(entries) == 2 and r.returncode == 0


def test_profile_part_writes_the_kernel_table(tmp_path):
    r = _run(tmp_path, "profile")
    log = (tmp_path / "out" / "device.log").read_text()
    assert "== profile: rc 0" in log, log[-2000:]
    assert "| mlb | 8.94M |" in log and "mlb: top kernels" in log
    import json

    (row,) = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert row["fusion"] == "mlb" and row["square"]["params"] <= row["params"] and r.returncode == 0


def test_ablations_part_writes_its_rows(tmp_path):
    r = _run(tmp_path, "ablations")
    log = (tmp_path / "out" / "device.log").read_text()
    assert "== ablations: rc 0" in log, log[-2000:]
    import json

    rows = json.loads((tmp_path / "out" / "gpu_ablations.json").read_text())
    assert {r["fusion"] for r in rows} == {"mcb", "tucker", "mutan", "block", "mfh", "mfb", "block_tucker"} and r.returncode == 0


def test_leaderboard_rate_part_runs_both_ways_with_workers(tmp_path):
    r = _run(tmp_path, "leaderboard_rate")
    log = (tmp_path / "out" / "device.log").read_text()
    assert "== leaderboard_cpu: rc 0" in log and "== leaderboard_gpu: rc 0" in log, log[-2000:]
    for side in ("lb_cpu", "lb_gpu"):
        assert (tmp_path / "work" / side / "workers" / "mlb.log").is_file()
    assert "| concat |" in (tmp_path / "out" / "leaderboard_cpu.md").read_text() and r.returncode == 0


def test_leaderboard_pixels_part_continues_from_the_committed_results(tmp_path):
    """The first call trains both entries and returns its results; a second call given those
    results (as if committed) trains nothing and returns the same entries."""
    import json

    r = _run(tmp_path / "a", "leaderboard_pixels", PIX_RESULTS=str(tmp_path / "none.json"))
    log = (tmp_path / "a" / "out" / "device.log").read_text()
    assert "== leaderboard_pixels: rc 0" in log, log[-2000:]
    first = json.loads((tmp_path / "a" / "out" / "soc_pixels_results.json").read_text())["entries"]
    assert {e["fusion"] for e in first.values()} == {"concat", "mlb"} and r.returncode == 0
    assert all(e["task"] == "soc_pixels" for e in first.values())
    r = _run(tmp_path / "b", "leaderboard_pixels", PIX_RESULTS=str(tmp_path / "a" / "out" / "soc_pixels_results.json"))
    log = (tmp_path / "b" / "out" / "device.log").read_text()
    assert "== leaderboard_pixels: rc 0" in log, log[-2000:]
    second = json.loads((tmp_path / "b" / "out" / "soc_pixels_results.json").read_text())["entries"]
    assert second == first  # nothing retrained: a retrained entry has its own train s and curve


def test_kernels_cuda_part_keeps_the_pytest_summary(tmp_path):
    r = _run(tmp_path, "kernels_cuda")
    text = (tmp_path / "out" / "pytest_cuda.txt").read_text()
    assert text.startswith("== kernels_cuda: cap 90s") and "== kernels_cuda: rc 0" in text, text[-2000:]
    assert "1 passed" in text and r.returncode == 0


def test_session_budget_cuts_caps_and_skips_what_does_not_fit(tmp_path):
    """SESSION_S: a part's cap is cut to the seconds left less 10; with under 15 s left a part is
    skipped, and the script still ends with its summary line."""
    r = _run(tmp_path / "a", "throughput", SESSION_S="18", CAP_THROUGHPUT="600")
    log = (tmp_path / "a" / "out" / "device.log").read_text()
    assert int(log.split("== throughput: cap ")[1].split("s")[0]) in (7, 8) and r.returncode == 0
    r = _run(tmp_path / "b", "machine", SESSION_S="14")
    log = (tmp_path / "b" / "out" / "device.log").read_text()
    assert "== machine: skipped: " in log and "s left of SESSION_S=14" in log and "== machine: cap" not in log
    assert "== done:" in log and r.returncode == 0
    r = _run(tmp_path / "c", "machine", SESSION_S="100")
    assert "== machine: cap 10s" in (tmp_path / "c" / "out" / "device.log").read_text()  # room: unchanged
