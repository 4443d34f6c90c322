"""Time one AdamW step on the parameters of the main job's models: per-tensor loop, foreach, fused.

The training loop builds its Adam / AdamW with ``fused=True`` where torch has the kernel
(``mmfuse.train.module._adam``). For the small models of ``mmfuse run`` (60k-350k parameters in
30-90 tensors) the default per-tensor step is a large part of a CPU training step; this script
measures how large, per entry, with gradients of the right shapes and nothing else running.

    python benchmarks/optimizer_step.py                 # every default entry, 1 thread
    python benchmarks/optimizer_step.py --threads 2 --steps 200
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from mmfuse.bench.run import DEFAULT_ENTRIES, entry_config, run_entry_config
from mmfuse.train import _model, build_datamodule, validate_config
from mmfuse.train.trainer import resolve_model_config

VARIANTS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def entry_parameters(entry: str, fusion: str, knobs: dict, info: dict) -> list[torch.nn.Parameter]:
    """The trainable parameters of one main-job entry's task model, each with a random gradient."""
    cfg = validate_config(run_entry_config(entry, fusion, knobs))
    model = _model.build_model(resolve_model_config(cfg["model"], info))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def time_steps(params: list[torch.nn.Parameter], steps: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` milliseconds per ``AdamW.step()`` for each variant, interleaved."""
    opts = {}
    for name, kw in VARIANTS.items():
        try:
            opts[name] = torch.optim.AdamW(params, lr=1e-3, **kw)
        except RuntimeError as e:  # no fused kernel in this torch for this device
            print(f"# {name}: unavailable ({e})", file=sys.stderr)
    best = {name: float("inf") for name in opts}
    for _ in range(repeats):
        for name, opt in opts.items():
            t = time.perf_counter()
            for _ in range(steps):
                opt.step()
            best[name] = min(best[name], (time.perf_counter() - t) / steps * 1e3)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=100, help="steps per timing")
    p.add_argument("--repeats", type=int, default=5, help="timings per variant (the best is kept)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dm = build_datamodule(validate_config(entry_config("concat_mlp", {}))["data"])
    dm.setup("fit")
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats} x {args.steps} steps\n")
    print("| entry | tensors | params | " + " | ".join(f"{v} (ms)" for v in VARIANTS) + " | default / fused |")
    print("|---|---|---|" + "---|" * (len(VARIANTS) + 1))
    for entry, fusion, knobs in DEFAULT_ENTRIES:
        params = entry_parameters(entry, fusion, knobs, dm.info)
        ms = time_steps(params, args.steps, args.repeats)
        cells = " | ".join(f"{ms[v]:.3f}" if v in ms else "-" for v in VARIANTS)
        ratio = f"{ms['default'] / ms['fused']:.1f}x" if "fused" in ms else "-"
        print(f"| {entry} | {len(params)} | {sum(p.numel() for p in params):,} | {cells} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
