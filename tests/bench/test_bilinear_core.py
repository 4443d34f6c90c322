"""benchmarks/bilinear_core.py: the two orders of bilinear_core, timed side by side."""

from __future__ import annotations

import pytest
import torch
from script_helpers import load_script

from mmfuse.fusions import factorized


def test_both_orders_compute_the_triple_sum_and_its_gradients_and_restore_the_defaults():
    mod = load_script("bilinear_core")
    x, y, w = mod.operands(2, 5, 7)
    dz = mod.operands(2, 5, 7, seed=1)[0]
    ref = torch.einsum("cni,ckij,cnj->cnk", x, w, y)
    ref_grads = (torch.einsum("cnk,ckij,cnj->cni", dz, w, y), torch.einsum("cnk,ckij,cni->cnj", dz, w, x),
                 torch.einsum("cnk,cni,cnj->ckij", dz, x, y))
    defaults = (factorized._BY_OUTPUT_ROWS, factorized._CORE_TILE, factorized._CORE_TILE_CUDA)
    calls = []
    real = factorized._core_backward_by_output
    with pytest.MonkeyPatch.context() as m:
        m.setattr(factorized, "_core_backward_by_output", lambda *a: calls.append(1) or real(*a))
        for name in mod.ORDERS:
            torch.testing.assert_close(mod.run(name, x, y, w, None), ref)
            for got, want in zip(mod.run(name, x, y, w, dz), ref_grads):
                torch.testing.assert_close(got, want)
            assert (factorized._BY_OUTPUT_ROWS, factorized._CORE_TILE, factorized._CORE_TILE_CUDA) == defaults
    assert calls == [1]  # by_output's backward ran, outer's did not
    with pytest.raises(ValueError, match="expected 'outer' or 'by_output'"):
        with mod.order("bmm"):
            pass
    t = mod.time_orders(2, 5, 7, rounds=1, repeat=1, backward=True)
    assert set(t) == {"fwd outer", "fwd by_output", "fb outer", "fb by_output", "diff"}
    assert all(v > 0 for k, v in t.items() if k != "diff") and t["diff"] < 1e-5
    assert set(mod.time_orders(1, 3, 4, rounds=1, repeat=1, backward=False)) == {"fwd outer", "fwd by_output", "diff"}


def test_main_prints_one_row_per_core_and_row_count(capsys, monkeypatch):
    mod = load_script("bilinear_core")
    monkeypatch.setattr(mod, "CORES", {"tucker": (1, 6), "block_tucker": (3, 4)})
    assert mod.main(["--rows", "3,5", "--rounds", "1", "--repeat", "1", "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows[0].count("|") == rows[1].count("|") == rows[2].count("|") == 11  # 10 columns, f+b included
    rows = rows[1:]
    assert [r.split(" | ")[:3] for r in rows[1:]] == [
        ["| tucker", "1 x 6^3", "3"], ["| tucker", "1 x 6^3", "5"],
        ["| block_tucker", "3 x 4^3", "3"], ["| block_tucker", "3 x 4^3", "5"],
    ]


@pytest.mark.parametrize("argv, expected", [
    (["--cores", "mlb"], "expected names of"),
    (["--rows", "a,b"], "expected comma-separated integers"),
    (["--rows", "0"], "expected positive row counts"),
])
def test_bad_arguments_name_what_was_expected(argv, expected, capsys):
    mod = load_script("bilinear_core")
    with pytest.raises(SystemExit):
        mod.main(argv)
    assert expected in capsys.readouterr().err
