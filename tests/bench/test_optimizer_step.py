"""benchmarks/optimizer_step.py: AdamW step timings on the main job's parameters."""

from __future__ import annotations

import torch
from script_helpers import load_script


def test_time_steps_updates_and_times_every_available_variant():
    mod = load_script("optimizer_step")
    params = [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(3))]
    for p in params:
        p.grad = torch.ones_like(p)
    ms = mod.time_steps(params, steps=2, repeats=1)
    assert {"default", "foreach"} <= set(ms) <= set(mod.VARIANTS)
    assert all(v > 0 for v in ms.values())
    # 3 variants x 2 steps of AdamW at lr 1e-3 on a constant gradient: each step moves by about -lr
    torch.testing.assert_close(params[0].detach(), torch.full((4, 3), -1e-3 * 2 * len(ms)), rtol=1e-3, atol=1e-6)


def test_main_prints_one_row_per_default_entry(capsys):
    mod = load_script("optimizer_step")
    from mmfuse.bench.run import DEFAULT_ENTRIES

    assert mod.main(["--steps", "1", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == [e[0] for e in DEFAULT_ENTRIES]
