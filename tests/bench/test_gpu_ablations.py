"""benchmarks/gpu_ablations.py on the CPU: every variant is timed and the switches are put back."""

from __future__ import annotations

import json

from script_helpers import load_script

import mmfuse.functional as Fn
import mmfuse.fusions.bilinear as bil
import mmfuse.fusions.factorized as fac
from mmfuse.kernels import use_kernels


def test_every_variant_is_timed_and_the_code_is_restored(tmp_path):
    mod = load_script("gpu_ablations")
    sketch, tile = bil.MCB.sketch, fac._TILE_ELEMENTS_CUDA
    out = tmp_path / "a.json"
    assert mod.main(["--device", "cpu", "--batch", "4", "--repeat", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    got = {(r["fusion"], r["variant"]) for r in rows}
    assert ("mcb", "autograd sketch, normalize=False") in got and ("mcb", "closed-form sketch, normalize=True, kernel=True") in got
    assert {("tucker", "gemm_alignment 1"), ("tucker", "gemm_alignment 8"), ("block", "tile 2^23 elements")} <= got
    assert {("mutan", "gemm_alignment 1"), ("mutan", "gemm_alignment 8")} <= got
    assert {("block", "tile 2^27 elements, gemm_alignment 8"), ("block_tucker", "kernel=True, gemm_alignment 8")} <= got
    assert sum(r["variant"] == "square GEMM" for r in rows) == 7  # one per group
    assert all(r["eager ms"] > 0 and r["graph ms"] is None for r in rows)  # no CUDA graph on a CPU
    assert bil.MCB.sketch is sketch and fac._TILE_ELEMENTS_CUDA == tile
    assert {("mfh", "torch ops"), ("mfh", "power-normalize kernel"), ("mfh", "fused tail kernel")} <= got
    assert all(c.gemm_alignment == 8 for c in (fac.Tucker, fac.Mutan, fac.Block, fac.BlockTucker)) and Fn.use_kernels is use_kernels and fac.use_kernels is use_kernels
