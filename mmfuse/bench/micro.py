"""Micro-benchmark of fusion modules: parameters, forward, forward + backward, peak memory.

    mmfuse bench fusions                                # every registered fusion, CPU
    mmfuse bench fusions --fusions "mf*,ban" --batch 256 --dim 1024
    mmfuse bench fusions --device cuda                  # + bf16 autocast and torch.compile columns

The measurement core shared by ``mmfuse bench fusions`` and the scripts in ``benchmarks/``:

- :func:`time_ms`: median wall time of a callable (CUDA synchronised), after warm-up calls;
- :func:`runners`: ``(forward under no_grad, forward + backward of the output's sum)`` for a
  vector fusion (positional inputs, or one list for block.bootstrap's modules) or an
  attention fusion (``v, q, v_mask, q_mask``), optionally under bf16 autocast;
- :class:`GemmRecorder` / :func:`gemm_time`: the GEMMs one forward + backward runs, replayed alone;
- peak memory: CPU, the resident-set peak of one forward + backward in a fresh process
  (:func:`peak_rss_mb` run by :func:`child_peak_mb`: ``/proc/self/clear_refs`` resets
  ``VmHWM``); CUDA, ``torch.cuda.max_memory_allocated`` above the level before the call;
- :func:`machine`: CPU model, cores (:func:`cpu`), torch version and threads.

:func:`bench_fusions` measures every registered fusion at one size (vector fusions: M
modalities of width ``dim`` -> ``dim``; attention fusions: K regions and T words of width
``dim`` -> ``dim``) with either the constructors' paper defaults (``preset="paper"``) or the
leaderboard's small presets (``preset="small"``). Columns: ``fwd`` / ``f+b`` medians in ms
(train mode), ``peak MB``; on CUDA also ``bf16 f+b`` (autocast) and ``compiled f+b``
(``torch.compile``, float32, where the registry's ``compile`` flag allows it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mmfuse

__all__ = [
    "GemmRecorder",
    "OutLayout",
    "MicroRow",
    "bench_fusions",
    "build",
    "child_peak_mb",
    "cpu",
    "cuda_peak_mb",
    "fmt",
    "gemm_time",
    "machine",
    "peak_rss_mb",
    "render",
    "replay_operands",
    "runners",
    "square_baseline",
    "square_linear",
    "square_sides",
    "status_mb",
    "sync",
    "time_ms",
]


# ------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def cuda_graph_ms(step, device: torch.device, repeat: int) -> float | None:
    """Median ms of ``step`` replayed as a CUDA graph (gradients accumulate into the buffers the
    warm-up made); None off CUDA or where the step cannot be captured."""
    if device.type != "cuda":
        return None
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
    except Exception as e:  # e.g. an op that syncs with the host
        print(f"  (no CUDA graph: {type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return None
    return time_ms(graph.replay, device, repeat)


def runners(module, xs: Sequence[Any], *, list_input: bool = False, autocast: str | None = None,
            device: torch.device | None = None, attention: bool = False, autocast_cache: bool = True):
    """``(fwd, fwd_bwd)`` callables: forward under no_grad; forward + backward of ``out.sum()``.

    Args:
        module: the fusion.
        xs: vector fusions: the modality tensors; attention fusions: ``(v, q, v_mask, q_mask)``.
        list_input: call ``module([x0, x1])`` (block.bootstrap's modules) instead of ``module(x0, x1)``.
        autocast: ``"bf16"``: run under ``torch.autocast(device.type, torch.bfloat16)``.
        attention: ``xs`` are attention inputs; the output's ``fused`` is summed.
        autocast_cache: autocast's cache of cast weights (off for a step captured as a CUDA graph).
    """
    device = device or xs[0].device
    ctx = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=autocast_cache))
        if autocast == "bf16"
        else None
    )

    def raw():
        if attention:
            v, q, vm, qm = xs
            return module(v.detach().requires_grad_(True), q.detach().requires_grad_(True), v_mask=vm, q_mask=qm).fused
        args = [x.detach().requires_grad_(x.requires_grad) for x in xs]
        return module(list(args)) if list_input else module(*args)

    def call():
        if ctx is None:
            return raw()
        with ctx():
            return raw()

    def fwd():
        with torch.no_grad():
            call()

    def fwd_bwd():
        call().float().sum().backward()

    return fwd, fwd_bwd


# ------------------------------------------------------------------ GEMMs alone


GEMM_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    # the same written into a given tensor (``torch.mm(a, b, out=t)``: bilinear_core by output feature)
    torch.ops.aten.mm.out,
    torch.ops.aten.addmm.out,
    torch.ops.aten.bmm.out,
    torch.ops.aten.baddbmm.out,
}


class OutLayout(NamedTuple):
    """Shape and strides of a GEMM's ``out=`` tensor, as :class:`GemmRecorder` records it."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]


class GemmRecorder(TorchDispatchMode):
    """Records every GEMM (op, sizes and strides of its tensor arguments); an ``out=`` tensor is
    recorded as its :class:`OutLayout`, so that the replay writes into a tensor of its own."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[Any, list[tuple[tuple[int, ...], tuple[int, ...]]], dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in GEMM_OPS:
            layout = [(tuple(a.shape), tuple(a.stride())) for a in args if isinstance(a, torch.Tensor)]
            kw = {k: OutLayout(tuple(v.shape), tuple(v.stride())) if k == "out" else v for k, v in kwargs.items()}
            self.calls.append((func, layout, kw))
        return func(*args, **kwargs)


# operand bytes above which gemm_time's replay shares one set of operands between the calls of
# one layout: a tiled fusion at [128, 36, D] rows (BLOCK-Tucker: 60 GEMMs over 268 MB tiles) would
# otherwise hold every call's operands at once
REPLAY_SHARE_BYTES = 2 << 30


def gemm_time(module, xs, list_input: bool, device: torch.device, repeat: int) -> float:
    """Time of the GEMMs that one forward + backward runs, replayed alone (same shapes and
    strides; operands as :func:`replay_operands` makes them)."""
    rec = GemmRecorder()
    _, fb = runners(module, xs, list_input=list_input, device=device)
    with rec:
        fb()
    module.zero_grad(set_to_none=True)
    replays = replay_operands(rec.calls, device, xs[0].dtype)

    def run():
        for func, tensors, kwargs in replays:
            func(*tensors, **kwargs)

    return time_ms(run, device, repeat)


def replay_operands(calls, device: torch.device, dtype: torch.dtype) -> list[tuple[Any, list[torch.Tensor], dict]]:
    """``[(func, operands, kwargs), ...]`` for :class:`GemmRecorder`'s calls: random operands of
    the recorded shapes and strides. Each call gets its own, as in the fusion, unless they would
    take more than :data:`REPLAY_SHARE_BYTES` together; then calls of one layout share theirs.
    Calls recorded with an ``out=`` tensor write into one tensor per :class:`OutLayout`, as the
    fusion reused its buffer."""
    item = torch.empty((), dtype=dtype).element_size()
    sharing = sum(math.prod(s) * item for _, layout, _ in calls for s, _ in layout) > REPLAY_SHARE_BYTES
    share: dict[tuple, list[torch.Tensor]] = {}
    outs: dict[OutLayout, torch.Tensor] = {}
    replays = []
    for func, layout, kwargs in calls:
        key = tuple((tuple(s), tuple(st)) for s, st in layout)
        tensors = share.get(key) if sharing else None
        if tensors is None:
            tensors = [
                torch.empty_strided(s, st, device=device, dtype=dtype).normal_()
                if 0 not in st
                else torch.randn(s, device=device, dtype=dtype)  # a broadcast (stride-0) operand
                for s, st in layout
            ]
            share[key] = tensors
        out = kwargs.get("out")
        if isinstance(out, OutLayout):
            if out not in outs:
                outs[out] = torch.empty_strided(out.shape, out.stride, device=device, dtype=dtype)
            kwargs = {**kwargs, "out": outs[out]}
        replays.append((func, tensors, kwargs))
    return replays


# ------------------------------------------------------------------ memory


def square_sides(params: int) -> list[int]:
    """Sides of the square bias-free Linears that stand for a module of ``params`` weights (issue
    3's bare-GEMM baseline): ``isqrt(params)`` and that side rounded down to multiples of 8, 64
    and 128, largest first.

    GEMM libraries have slow shapes: on an H200 in bf16 at 2048 rows the 5024-wide square took
    2.8 ms where the 6928-wide one, with twice the work, took 1.3 (session 12). Timing each side
    and scaling by ``params / side**2`` (:func:`square_baseline`) keeps one unlucky shape from
    flattering a fusion's ratio."""
    side = math.isqrt(max(int(params), 1))
    return sorted({side - side % k for k in (1, 8, 64, 128) if side - side % k > 0}, reverse=True)


def square_linear(side: int, rows: int, device, dtype) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """One bias-free ``side x side`` Linear and its input of ``rows`` rows (the bare GEMM)."""
    lin = torch.nn.Linear(side, side, bias=False).to(device=device, dtype=dtype)
    return lin, [torch.randn(rows, side, device=device, dtype=dtype, requires_grad=True)]


def square_baseline(params: int, time_side: Callable[[int], float | None]) -> tuple[float | None, int | None]:
    """``(ms, side)``: the fastest of :func:`square_sides` per weight, ``time_side(side)`` scaled
    to ``params`` weights (``None`` where ``time_side`` gives ``None`` for every side)."""
    best: tuple[float | None, int | None] = (None, None)
    for side in square_sides(params):
        ms = time_side(side)
        if ms is not None and (best[0] is None or ms * params / side**2 < best[0]):
            best = (ms * params / side**2, side)
    return best


def status_mb(key: str) -> float:
    """``/proc/self/status`` field ``key`` (``VmRSS``, ``VmHWM``) in MB."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
    return kb / 1024


def peak_rss_mb(fn: Callable[[], Any]) -> float:
    """Peak resident memory of ``fn()`` above the level before it (Linux; run in a fresh process)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current one
    base = status_mb("VmRSS")
    fn()
    return status_mb("VmHWM") - base


def child_peak_mb(cmd: Sequence[str], timeout: float | None = None) -> float | None:
    """Run ``cmd`` (a process that prints its peak MB on its last line); ``None`` on failure."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def cuda_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak CUDA memory of ``fn()`` above what was allocated before it, in MB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ------------------------------------------------------------------ formatting


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "" if v is None else format(v, spec)


def cpu() -> str:
    """``"<CPU model>, <cores> cores"`` (the model from ``/proc/cpuinfo`` where it exists)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def machine() -> str:
    """``"<CPU model>, <cores> cores, torch <version>, <threads> threads"``."""
    return f"{cpu()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


# ------------------------------------------------------------------ every registered fusion


@dataclass
class MicroRow:
    """One fusion's measurements (ms, MB); ``error`` when it could not be measured."""

    name: str
    kind: str
    family: str
    params: int | None = None
    fwd: float | None = None
    fb: float | None = None
    peak: float | None = None
    extra: dict[str, float | None] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class Sizes:
    """Vector fusions: ``modalities`` inputs [batch, dim]; attention: v [batch, regions, dim],
    q [batch, words, dim] (4..words valid words); ``out_dim = dim``."""

    batch: int = 128
    dim: int = 512
    regions: int = 36
    words: int = 14
    modalities: int = 2


def _knobs(name: str, preset: str) -> dict[str, Any]:
    if preset == "paper":
        return {}
    from .leaderboard import preset_for

    knobs, _ = preset_for(name)
    knobs.pop("out_dim", None)
    return knobs


def build(name: str, sizes: Sizes, preset: str = "paper", device: str | torch.device = "cpu",
          dtype: torch.dtype = torch.float32):
    """``(module, inputs, attention)``: the fusion at ``sizes`` in train mode and its inputs."""
    info = mmfuse.fusion_info(name)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    b, d = sizes.batch, sizes.dim
    knobs = _knobs(name, preset)
    if info.kind == "attention":
        module = mmfuse.create_fusion(name, v_dim=d, q_dim=d, out_dim=d, **knobs)
        v = torch.randn(b, sizes.regions, d, generator=g)
        q = torch.randn(b, sizes.words, d, generator=g)
        lengths = torch.randint(min(4, sizes.words), sizes.words + 1, (b,), generator=g)
        q_mask = torch.arange(sizes.words)[None, :] < lengths[:, None]
        v_mask = torch.ones(b, sizes.regions, dtype=torch.bool)
        xs = [v.to(device, dtype), q.to(device, dtype), v_mask.to(device), q_mask.to(device)]
    else:
        m = max(info.min_modalities, min(sizes.modalities, info.max_modalities or sizes.modalities))
        out = None if name == "concat" else d
        module = mmfuse.create_fusion(name, in_dims=(d,) * m, out_dim=out, **knobs)
        xs = [torch.randn(b, d, generator=g).to(device, dtype).requires_grad_(True) for _ in range(m)]
    return module.to(device=device, dtype=dtype).train(), xs, info.kind == "attention"


def _measure_child(spec: dict[str, Any]) -> None:
    """Child process: print the peak resident MB of one forward + backward."""
    torch.set_num_threads(spec["threads"])
    module, xs, att = build(spec["name"], Sizes(**spec["sizes"]), spec["preset"])
    _, fb = runners(module, xs, attention=att)
    print(f"{peak_rss_mb(fb):.1f}")


def measure(name: str, sizes: Sizes, *, preset: str = "paper", device: str = "cpu", repeat: int = 3,
            memory: bool = True, compile: bool = True, threads: int | None = None, timeout: float = 300) -> MicroRow:
    """One fusion's row: params, fwd, f+b, peak MB (+ CUDA bf16 and compiled columns)."""
    info = mmfuse.fusion_info(name)
    dev = torch.device(device)
    row = MicroRow(name, info.kind, info.family)
    try:
        module, xs, att = build(name, sizes, preset, dev)
        row.params = sum(p.numel() for p in module.parameters())
        fwd, fb = runners(module, xs, attention=att, device=dev)
        row.fwd = time_ms(fwd, dev, repeat)
        row.fb = time_ms(fb, dev, repeat)
        if memory and dev.type == "cuda":
            row.peak = cuda_peak_mb(fb)
        elif memory:
            spec = {"name": name, "sizes": sizes.__dict__, "preset": preset, "threads": threads or torch.get_num_threads()}
            row.peak = child_peak_mb([sys.executable, "-m", "mmfuse.bench.micro", "--_child", json.dumps(spec)], timeout)
    except Exception as err:  # noqa: BLE001 - one failing method must not stop the table
        row.error = f"{type(err).__name__}: {err}"[:160]
        return row
    if dev.type == "cuda":
        try:
            _, bfb = runners(module, xs, attention=att, autocast="bf16", device=dev)
            row.extra["bf16 f+b"] = time_ms(bfb, dev, repeat)
        except Exception as err:  # noqa: BLE001
            row.extra["bf16 f+b"] = None
            print(f"# {name} bf16: {type(err).__name__}: {err}", file=sys.stderr)
        if compile and info.compile:
            try:
                torch._dynamo.reset()
                _, cfb = runners(torch.compile(module), xs, attention=att, device=dev)
                row.extra["compiled f+b"] = time_ms(cfb, dev, repeat, warmup=3)
            except Exception as err:  # noqa: BLE001
                row.extra["compiled f+b"] = None
                print(f"# {name} compile: {type(err).__name__}: {err}", file=sys.stderr)
        else:
            row.extra["compiled f+b"] = None
    return row


def render(rows: Sequence[MicroRow]) -> str:
    """The rows as a Markdown table."""
    extra = list(dict.fromkeys(k for r in rows for k in r.extra))
    head = ["fusion", "kind", "family", "params", "fwd ms", "f+b ms", "peak MB", *extra, "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, r.kind, r.family, "" if r.params is None else f"{r.params / 1e6:.2f}M", fmt(r.fwd), fmt(r.fb),
                 fmt(r.peak, ".0f"), *[fmt(r.extra.get(k)) for k in extra], r.error.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_fusions(
    pattern: str = "*",
    *,
    sizes: Sizes = Sizes(),
    preset: str = "paper",
    device: str = "cpu",
    repeat: int = 3,
    memory: bool = True,
    compile: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[MicroRow]:
    """Measure the registered fusions that the comma-separated fnmatch ``pattern`` picks, in its
    order (:func:`mmfuse.select_fusions`)."""
    if preset not in ("paper", "small"):
        raise ValueError(f"bench fusions: preset must be 'paper' or 'small', got {preset!r}")
    names = mmfuse.select_fusions(pattern)
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available")
    rows = []
    for name in names:
        row = measure(name, sizes, preset=preset, device=device, repeat=repeat, memory=memory, compile=compile)
        rows.append(row)
        if log:
            log(f"# {name}: f+b {fmt(row.fb)} ms, peak {fmt(row.peak, '.0f')} MB {row.error}")
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":  # the CPU memory child of measure()
    p = argparse.ArgumentParser()
    p.add_argument("--_child", required=True)
    _measure_child(json.loads(p.parse_args().__dict__["_child"]))
