"""The fused Triton kernels (mmfuse/kernels.py) compile for NVIDIA GPUs, without one.

The interpreter tests (tests/test_kernels.py) check the kernels' values, but the interpreter runs
them as Python: a kernel that does not compile, or one that spills registers to local memory,
passes there and fails (or crawls) on the first GPU. Triton compiles to a cubin without a GPU,
so these tests build every kernel for sm_80 and sm_90 at the sizes the fusions launch and read
the register use back with the ``cuobjdump`` that ships with Triton. They skip where Triton is
not installed, and must run without ``TRITON_INTERPRET`` (CI runs them after the interpreter
tests).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

triton = pytest.importorskip("triton")

from mmfuse import kernels  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles; not for the interpreter")

PN_FORWARD = {"X": "*{t}", "Y": "*{t}", "NORM": "*fp32", "D": "i32", "stride_x": "i64", "eps": "fp32",
              "eps_norm": "fp32", "BLOCK": "constexpr"}
PN_BACKWARD = {"X": "*{t}", "G": "*{t}", "NORM": "*fp32", "DX": "*{t}", "D": "i32", "stride_x": "i64",
               "stride_g": "i64", "eps": "fp32", "eps_norm": "fp32", "BLOCK": "constexpr"}
_MFH_META = {k: "constexpr" for k in ("P", "PP", "K", "KP", "BLOCK_H", "NORMALIZE", "DROPOUT")}
_MFH_SCALARS = {"eps": "fp32", "eps_norm": "fp32", "seed": "i32", "p_drop": "fp32", "scale": "fp32"}
MFH_FORWARD = {"J": "*{t}", "Y": "*{t}", "NORM": "*fp32", "H": "i32", "stride_j": "i64", **_MFH_SCALARS, **_MFH_META}
MFH_BACKWARD = {"J": "*{t}", "G": "*{t}", "NORM": "*fp32", "DJ": "*{t}", "H": "i32", "stride_j": "i64",
                "stride_g": "i64", **_MFH_SCALARS, **_MFH_META}


@pytest.fixture(scope="module")
def jitted(tmp_path_factory):
    """The kernels (mmfuse/_triton_kernels.py); Triton's cache and the cubins go to a temporary
    folder."""
    from mmfuse import _triton_kernels as tk

    folder = tmp_path_factory.mktemp("triton_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_CACHE_DIR", str(folder))
        mp.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default today, stated (it warns otherwise)
        names = ("pn_forward", "pn_backward", "mfh_forward", "mfh_backward")
        yield {**{n: getattr(tk, n) for n in names}, "folder": folder}


def _resources(jitted, name: str, signature: dict, constexprs: dict, arch: int, dtype: str) -> dict[str, int]:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {k: v.format(t=dtype) for k, v in signature.items()}
    compiled = triton.compile(ASTSource(fn=jitted[name], signature=sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32))
    assert compiled.asm.get("cubin"), "no cubin"
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        pytest.skip("Triton ships no cuobjdump here")
    path = jitted["folder"] / f"{name}_{arch}_{dtype}.cubin"
    with open(path, "wb") as f:
        f.write(compiled.asm["cubin"])
    out = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL):(\d+)", out)}


# the sizes the fusions launch at: MCB's 16000-wide sketch, MFH's 340 / MFB's 1000 pooled
# blocks, BLOCK's 89-wide chunks, and the small ones of the contract tests
PN_WIDTHS = [16000, 1000, 340, 89, 5]
# (order, factor, hidden, normalize, dropout): the benchmark's MFH / MFB, the papers' defaults
# (dropout 0.1 on the expanded vectors), and small ones
MFH_SIZES = [(2, 5, 340, True, 0.0), (1, 5, 1000, True, 0.0), (2, 5, 340, True, 0.1), (1, 5, 1000, True, 0.1),
             (2, 5, 340, False, 0.0), (3, 3, 20, True, 0.1), (2, 2, 4, True, 0.0)]


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_power_normalize_kernels_compile_without_spills(jitted, arch, dtype):
    for d in PN_WIDTHS:
        for name, sig in (("pn_forward", PN_FORWARD), ("pn_backward", PN_BACKWARD)):
            res = _resources(jitted, name, sig, {"BLOCK": kernels._block(d)}, arch, dtype)
            assert res["REG"] > 0 and res["STACK"] == 0 and res["LOCAL"] == 0, (name, d, res)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_mfh_kernels_compile_without_spills(jitted, arch, dtype):
    for order, factor, hidden, normalize, p in MFH_SIZES:
        meta = kernels.mfh_meta(order, factor, hidden, normalize, p)
        for name, sig in (("mfh_forward", MFH_FORWARD), ("mfh_backward", MFH_BACKWARD)):
            res = _resources(jitted, name, sig, meta, arch, dtype)
            assert res["REG"] > 0 and res["STACK"] == 0 and res["LOCAL"] == 0, (name, meta, res)
