"""``mmfuse bench leaderboard --workers N`` (mmfuse/bench/workers.py): one process per fusion,
N at a time, merged into one run folder; resumable; the time limit; the worker's command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mmfuse.bench import leaderboard as lb
from mmfuse.bench import workers as wk
from mmfuse.cli import main as cli_main

ARGS = ["--tasks", "interactions_o1", "--seeds", "1", "--epochs", "1", "--n-train", "300", "--n-test", "120",
        "--device", "cpu", "--no-plots"]


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_two_workers_train_merge_and_resume(tmp_path, capsys):
    out = tmp_path / "lb"
    assert cli_main(["bench", "leaderboard", "--fusions", "concat,lmf,san", "--workers", "2", "--out", str(out),
                     *ARGS]) == 0
    text = capsys.readouterr().out
    entries = _results(out)["entries"]
    assert set(entries) == {"interactions_o1/concat/seed0", "interactions_o1/lmf/seed0"}
    assert all(e["workers"] == 2 for e in entries.values())
    assert "interactions_o1/san" in _results(out)["skipped"]  # san needs sequences: skipped by its worker
    for name in ("concat", "lmf", "san"):  # one folder and one log per fusion
        assert (out / "workers" / name / "results.json").is_file() and (out / "workers" / f"{name}.log").is_file()
    assert "| concat |" in text and "| lmf |" in text and "shared the machine with the other workers" in text
    table = (out / "leaderboard.md").read_text()
    assert "| concat |" in table and "entries not trained" not in table
    # a rerun trains nothing: every worker finds its entries done
    stamp = {k: v["train_s"] for k, v in entries.items()}
    assert cli_main(["bench", "leaderboard", "--fusions", "concat,lmf,san", "--workers", "2", "--out", str(out),
                     *ARGS]) == 0
    assert {k: v["train_s"] for k, v in _results(out)["entries"].items()} == stamp
    assert "] done: accuracy" in (out / "workers" / "lmf.log").read_text().split("training")[-1]


def test_workers_never_retrain_what_the_run_folder_holds(tmp_path):
    """A single-process run's entries are copied into each worker's folder before it starts."""
    out = tmp_path / "lb"
    out.mkdir()
    entry = {"task": "interactions_o1", "fusion": "lmf", "seed": 0, "digest": "d1", "train_s": 1.0}
    state = {"format": lb.FORMAT, "entries": {"interactions_o1/lmf/seed0": entry,
                                              "interactions_o1/concat/seed0": {**entry, "fusion": "concat"}},
             "skipped": {"interactions_o1/san": "needs sequences"}}
    (out / "results.json").write_text(json.dumps(state))
    folder = wk._seed_worker(out, "lmf")
    mine = _results(folder)
    assert set(mine["entries"]) == {"interactions_o1/lmf/seed0"} and mine["skipped"] == {}
    assert wk._seed_worker(out, "san").joinpath("results.json").is_file()
    assert _results(out / "workers" / "san")["skipped"] == {"interactions_o1/san": "needs sequences"}


def test_time_limit_and_command_line(tmp_path, capsys):
    lines: list[str] = []
    res = wk.run_workers("concat,lmf", 2, tmp_path, ["--tasks", "interactions_o1"], max_minutes=0, log=lines.append)
    assert res["started"] == [] and sorted(res["not_started"]) == ["concat", "lmf"]
    assert "2 fusions not started" in lines[-1]
    cmd = wk.worker_command("mlb", tmp_path, ["--seeds", "2"], 1.5)
    assert cmd[:5] == [sys.executable, "-m", "mmfuse", "bench", "leaderboard"]
    assert cmd[cmd.index("--fusions") + 1] == "mlb" and cmd[cmd.index("--out") + 1] == str(tmp_path / "workers" / "mlb")
    assert "--no-plots" in cmd and cmd[-2:] == ["--max-minutes", "1.5000"] and "--seeds" in cmd
    assert "--max-minutes" not in wk.worker_command("mlb", tmp_path, [], None)
    with pytest.raises(ValueError, match="workers"):
        wk.run_workers("concat", 0, tmp_path, [])
    # refused before any worker or data is made
    assert cli_main(["bench", "leaderboard", "--fusions", "concat", "--workers", "2", "--max-minutes", "-1",
                     "--out", str(tmp_path / "never"), *ARGS]) == 2
    assert "--max-minutes: expected a number of minutes >= 0" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_slow_fusions_start_first(tmp_path):
    assert wk._order(["concat", "san", "mlb"], tmp_path)[0] == "san"  # attention first without history
    state = {"format": lb.FORMAT, "entries": {
        "t/concat/seed0": {"fusion": "concat", "train_s": 50.0}, "t/san/seed0": {"fusion": "san", "train_s": 5.0}},
        "skipped": {}}
    (tmp_path / "results.json").write_text(json.dumps(state))
    assert wk._order(["mlb", "san", "concat"], tmp_path) == ["concat", "san", "mlb"]


def test_worker_args_pass_every_setting():
    from mmfuse.bench.cli import _worker_args

    class A:
        seeds, epochs, steps, n_train, n_test, device = 2, None, 50, 10, None, "cpu"
        quick, robustness, robustness_baseline, input_norm, accelerator = True, True, "concat", "layer", "cpu"

    got = _worker_args(A, ["soc", "interactions_o2"])
    assert got == ["--tasks", "soc", "interactions_o2", "--seeds", "2", "--steps", "50", "--n-train", "10",
                   "--device", "cpu", "--quick", "--robustness", "--robustness-baseline", "concat",
                   "--input-norm", "layer", "--accelerator", "cpu"]


def test_an_interrupted_call_stops_its_workers(tmp_path):
    import subprocess

    log = open(tmp_path / "w.log", "a")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=log)
    running = {"x": (proc, log)}
    wk._stop(running, grace_s=5.0)
    assert proc.poll() is not None and running == {} and log.closed


def _fake_worker(monkeypatch, sleep_s: float) -> None:
    """Workers that sleep, then store one entry of their fusion (no training)."""

    def command(fusion, out, passthrough, minutes_left):
        folder = out / wk.WORKERS_DIR / fusion
        entry = {"task": "t", "fusion": fusion, "seed": 0, "digest": "d", "train_s": sleep_s}
        state = {"format": lb.FORMAT, "entries": {f"t/{fusion}/seed0": entry}, "skipped": {}}
        script = (f"import json, time; time.sleep({sleep_s}); "
                  f"open({str(folder / 'results.json')!r}, 'w').write(json.dumps({state!r}))")
        return [sys.executable, "-c", script]

    monkeypatch.setattr(wk, "worker_command", command)


def test_no_worker_starts_with_less_time_left_than_the_slowest_entry(tmp_path, monkeypatch):
    """One worker at a time, 3 s: the first takes about 1.5 s for its entry, so the second, with
    less than that left, does not start (it would end past the limit)."""
    _fake_worker(monkeypatch, 1.5)
    lines: list[str] = []
    res = wk.run_workers("concat,lmf", 1, tmp_path, [], max_minutes=0.05, log=lines.append, poll_s=0.05)
    assert res["started"] == ["concat"] and res["not_started"] == ["lmf"]
    assert "concat: done (1 entries)" in " ".join(lines)
    assert set(_results(tmp_path)["entries"]) == {"t/concat/seed0"}
    # without a limit both run
    res = wk.run_workers("concat,lmf", 1, tmp_path / "all", [], log=lines.append, poll_s=0.05)
    assert res["started"] == ["concat", "lmf"] and set(_results(tmp_path / "all")["entries"]) == {
        "t/concat/seed0", "t/lmf/seed0"}


def test_an_interrupted_call_merges_what_its_workers_finished(tmp_path, monkeypatch):
    """A time cap's SIGINT arrives while one worker runs: the finished worker's entry is merged
    into the run folder, the running one is stopped, and the interrupt propagates."""
    _fake_worker(monkeypatch, 0.2)
    real_sleep = wk.time.sleep
    calls = {"n": 0}

    def sleep(seconds):  # the poll loop's sleep: one interrupt, once the first worker has finished
        done = tmp_path / "workers" / "concat" / "results.json"
        if not calls["n"] and done.is_file() and "t/concat/seed0" in _results(done.parent)["entries"]:
            calls["n"] += 1
            raise KeyboardInterrupt
        real_sleep(seconds)

    original = wk.worker_command

    def command(fusion, out, passthrough, minutes_left):  # lmf never finishes by itself
        return original(fusion, out, passthrough, minutes_left) if fusion == "concat" else [
            sys.executable, "-c", "import time; time.sleep(60)"]

    monkeypatch.setattr(wk, "worker_command", command)
    monkeypatch.setattr(wk.time, "sleep", sleep)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        wk.run_workers("concat,lmf", 2, tmp_path, [], log=lines.append, poll_s=0.05)
    assert set(_results(tmp_path)["entries"]) == {"t/concat/seed0"}
    assert "interrupted: merged what 2 workers finished" in lines[-1]
