"""``mmfuse bench leaderboard --workers N``: the leaderboard's fusions trained N at a time.

Every entry of the leaderboard is a small model whose step is bound by the Python loop and by
kernel launches, on a CPU core as on a GPU (docs/BENCHMARKS.md, session 12: 11 entries in 151 s
on an H200, about the 2-core CPU's pace). Throughput then comes from training several entries at
once, one process each. This module runs one ``mmfuse bench leaderboard --fusions NAME``
process per fusion, at most N at a time, each in its own run folder ``OUT/workers/NAME`` with
``OMP_NUM_THREADS`` set to the machine's cores / N and its output in ``OUT/workers/NAME.log``.
It then merges the workers' results into ``OUT`` (:func:`~mmfuse.bench.leaderboard.merge_results`)
and writes the tables and plots of everything once, training nothing more.

It is resumable as the single-process run is: each worker folder is seeded with what ``OUT``
already holds for its fusion, and a worker rerun skips what it finished. ``--max-minutes``
applies to the whole call: a worker gets the minutes left when it starts and starts no entry past
them, and no worker starts once fewer minutes are left than the slowest entry of this call took
(a finished worker's wall time over the entries it trained), so that a call ends inside its limit
rather than in the middle of an entry. An interrupted call (Ctrl-C, a time cap's SIGINT) stops its
workers and still merges what they finished before it re-raises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mmfuse

from .leaderboard import RESULTS, _load_results, _write_text, merge_results

WORKERS_DIR = "workers"


def worker_command(fusion: str, out: Path, passthrough: Sequence[str], minutes_left: float | None) -> list[str]:
    """The ``mmfuse bench leaderboard`` command line of the worker for ``fusion``."""
    cmd = [sys.executable, "-m", "mmfuse", "bench", "leaderboard", "--fusions", fusion,
           "--out", str(out / WORKERS_DIR / fusion), "--no-plots", *passthrough]
    if minutes_left is not None:
        cmd += ["--max-minutes", f"{max(minutes_left, 0.0):.4f}"]
    return cmd


def _seed_worker(out: Path, fusion: str) -> Path:
    """Create the worker folder of ``fusion`` holding ``out``'s entries of that fusion (so that
    a worker never retrains what a single-process run or another merge already stored)."""
    folder = out / WORKERS_DIR / fusion
    folder.mkdir(parents=True, exist_ok=True)
    mine = _load_results(folder / RESULTS)
    theirs = _load_results(out / RESULTS)
    added = False
    for key, entry in theirs["entries"].items():
        if entry.get("fusion") == fusion and key not in mine["entries"]:
            mine["entries"][key] = entry
            added = True
    for pair, reason in theirs["skipped"].items():
        if pair.split("/", 1)[-1] == fusion and pair not in mine["skipped"]:
            mine["skipped"][pair] = reason
            added = True
    if added or not (folder / RESULTS).exists():
        _write_text(folder / RESULTS, json.dumps(mine, indent=1) + "\n")
    return folder


def _order(names: Sequence[str], out: Path) -> list[str]:
    """Longest first (the mean train s of a fusion's stored entries; attention fusions, which are
    the slower family, before vector ones where nothing is stored), so that N workers finish
    together rather than waiting on one slow fusion started last."""
    entries = _load_results(out / RESULTS)["entries"].values()

    def cost(name: str) -> tuple[float, int]:
        seconds = [e.get("train_s") or 0.0 for e in entries if e.get("fusion") == name]
        if seconds:
            return (-sum(seconds) / len(seconds), 0)
        return (0.0, 0 if mmfuse.fusion_info(name).kind == "attention" else 1)

    return sorted(names, key=cost)


def _trained_keys(out: Path, name: str) -> set[str]:
    """The entry keys a worker folder holds now."""
    return set(_load_results(out / WORKERS_DIR / name / RESULTS)["entries"])


def _loop(pending, running, started, not_started, failed, workers, out, passthrough, max_minutes, start, env,
          log, poll_s) -> None:
    """Start workers while there is room and time; reap the finished ones; until none is left.

    ``running`` maps a fusion to ``(process, log file, start time, entry keys it was seeded with)``.
    """
    slowest_entry_s = 0.0  # a finished worker's seconds per entry it trained, the most of this call
    while pending or running:
        while pending and len(running) < workers:
            left = None if max_minutes is None else max_minutes - (time.monotonic() - start) / 60.0
            if left is not None and (left <= 0 or 60.0 * left < slowest_entry_s):
                not_started.extend(pending)
                pending.clear()
                break
            name = pending.pop(0)
            _seed_worker(out, name)
            seeded = _trained_keys(out, name)
            logf = open(out / WORKERS_DIR / f"{name}.log", "a")  # noqa: SIM115 - closed when it ends
            proc = subprocess.Popen(worker_command(name, out, passthrough, left), stdout=logf,
                                    stderr=subprocess.STDOUT, env=env)
            running[name] = (proc, logf, time.monotonic(), seeded)
            started.append(name)
            log(f"[workers] {name}: started ({len(running)} running, {len(pending)} waiting)")
        for name, (proc, logf, began, seeded) in list(running.items()):
            if proc.poll() is None:
                continue
            logf.close()
            del running[name]
            trained = len(_trained_keys(out, name) - seeded)
            if trained:
                slowest_entry_s = max(slowest_entry_s, (time.monotonic() - began) / trained)
            if proc.returncode != 0:
                failed[name] = proc.returncode
                log(f"[workers] {name}: FAILED (exit {proc.returncode}; {out / WORKERS_DIR / name}.log)")
            else:
                log(f"[workers] {name}: done ({trained} entries)")
        if running:
            time.sleep(poll_s)


def _stop(running: dict, grace_s: float = 20.0) -> None:
    """SIGINT every running worker (Lightning stops its fit cleanly), then kill what is left."""
    import signal

    for proc, *_ in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for proc, logf, *_ in running.values():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()
    running.clear()


def run_workers(
    fusions_pattern: str,
    workers: int,
    out: str | os.PathLike[str],
    passthrough: Sequence[str],
    *,
    max_minutes: float | None = None,
    cores: int | None = None,
    log: Callable[[str], None] = print,
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Run one leaderboard worker process per fusion, ``workers`` at a time, then merge.

    Args:
        fusions_pattern: the leaderboard's ``--fusions``.
        workers: processes at a time (>= 1).
        out: the run folder; workers write under ``out/workers``.
        passthrough: the other leaderboard arguments (tasks, seeds, budget, sizes, device, ...),
            given to every worker as they are.
        max_minutes: the whole call's budget (see the module docstring).
        cores: CPU cores to share (default ``os.cpu_count()``); each worker gets
            ``max(1, cores // workers)`` threads.
        log: progress lines.

    Returns:
        ``{"started": [...], "not_started": [...], "failed": {fusion: returncode}, "merged": {...}}``.
    """
    if workers < 1:
        raise ValueError(f"workers: expected a count >= 1, got {workers!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = _order(mmfuse.select_fusions(fusions_pattern), out)
    threads = max(1, (cores or os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.monotonic()
    pending, running = list(names), {}
    started, not_started, failed = [], [], {}
    interrupted: BaseException | None = None
    try:
        _loop(pending, running, started, not_started, failed, workers, out, passthrough, max_minutes, start, env,
              log, poll_s)
    except KeyboardInterrupt as exc:  # Ctrl-C, a time cap's SIGINT: keep what the workers finished
        interrupted = exc
    finally:  # stop the workers too, not leave them running
        _stop(running)
    before = set(_load_results(out / RESULTS)["entries"])

    sources = [out / WORKERS_DIR / n for n in started if (out / WORKERS_DIR / n / RESULTS).is_file()]
    merged = merge_results(out, sources) if sources else {"entries": 0, "skipped": 0, "sources": 0}
    if workers > 1:  # mark what this call's workers trained side by side (the table says so)
        state = _load_results(out / RESULTS)
        for key, entry in state["entries"].items():
            if key not in before and "workers" not in entry:
                entry["workers"] = workers
        _write_text(out / RESULTS, json.dumps(state, indent=1) + "\n")
    if not_started:
        log(f"[workers] time limit: {len(not_started)} fusions not started")
    if interrupted is not None:
        log(f"[workers] interrupted: merged what {merged['sources']} workers finished "
            f"({merged['entries']} entries in {RESULTS})")
        raise interrupted
    return {"started": started, "not_started": not_started, "failed": failed, "merged": merged}
