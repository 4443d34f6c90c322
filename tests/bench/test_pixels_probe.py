"""benchmarks/pixels_probe.py: the relation-network CNN+MLP probe runs and wires questions to their image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pixels_probe.py"


def _module():
    return load_script("pixels_probe")


@pytest.mark.parametrize("fusion", [None, "dan"])
def test_each_question_row_reads_its_own_image(fusion):
    torch.manual_seed(0)
    probe = _module().Probe(n_answers=10, pool="flatten", fusion=fusion).eval()
    if fusion is None:
        assert probe.mlp[0].in_features == 25 * 26 + 11  # 5 x 5 cells of 24 filters + (x, y), then the 11 bits
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 75, 75, generator=g)
    bits = torch.zeros(2, 3, 11)
    bits[:, :, 0] = 1  # the same question three times for each image
    with torch.no_grad():
        out = probe(images, bits)  # [2 * 3, 10]
        alone = probe(images[1:], bits[1:])
    assert out.shape == (6, 10)
    torch.testing.assert_close(out[3:], alone)  # image 1's rows do not depend on image 0
    assert torch.equal(out[0], out[1]) and not torch.allclose(out[0], out[3])


def test_runs_and_reports_every_epoch(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "2", "--n-train", "20", "--images", "2"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "MMFUSE_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1", "epoch 2"] and "relational" in lines[-1]

