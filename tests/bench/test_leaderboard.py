"""The leaderboard: a tiny run (2 fusions + 1 skipped, 1 task, 2 seeds), its table, resuming."""
from __future__ import annotations

import csv
import json
import statistics

import pytest
import torch

import mmfuse
from mmfuse.bench import leaderboard as lb
from mmfuse.bench import micro
from mmfuse.train import train

TINY = {"n_train": 300, "n_test": 120}


class CountingTrain:
    """The real trainer, counting its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, config, **kwargs):
        self.calls.append(config["name"])
        return train(config, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("leaderboard")
    counter = CountingTrain()
    lines: list[str] = []
    result = lb.run_leaderboard_bench(["interactions_o1"], "concat,lmf,san", seeds=2, budget={"epochs": 2},
                                      out_dir=out, train_fn=counter, log=lines.append, device="cpu", **TINY)
    return result, counter, lines


def test_table_mean_and_std_from_the_seeds(tiny):
    result, counter, _ = tiny
    assert sorted(counter.calls) == sorted(f"interactions_o1-{f}-seed{s}" for f in ("concat", "lmf") for s in (0, 1))
    stored = json.loads((result.out_dir / "results.json").read_text())["entries"]
    assert set(stored) == {f"interactions_o1/{f}/seed{s}" for f in ("concat", "lmf") for s in (0, 1)}
    rows = {r["fusion"]: r for r in result.rows}
    assert set(rows) == {"concat", "lmf"}
    for fusion, row in rows.items():
        seeds = [stored[f"interactions_o1/{fusion}/seed{s}"] for s in (0, 1)]
        accs = [e["accuracy"] for e in seeds]
        assert row["seeds"] == 2
        assert row["accuracy_mean"] == pytest.approx((accs[0] + accs[1]) / 2, abs=1e-12)
        assert row["accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5, abs=1e-12)  # sample std, n=2
        assert row["train_s_mean"] == pytest.approx(statistics.fmean(e["train_s"] for e in seeds))
        assert row["latency_ms_mean"] == pytest.approx(statistics.fmean(e["latency_ms"] for e in seeds))
        assert row["family"] == mmfuse.fusion_info(fusion).family
        for e in seeds:
            assert 0.0 <= e["accuracy"] <= 1.0 and e["latency_ms"] > 0 and e["train_s"] > 0
            assert [p["epoch"] for p in e["curve"]] == [1, 2]
            assert e["plateau_epoch"] == lb.plateau(e["curve"])["plateau_epoch"]
            assert e["knobs"] == lb.PRESETS[fusion]
            # the model saved by the run holds the parameters the table reports
            assert e["params"] == sum(p.numel() for p in mmfuse.train.load(e["checkpoint"]).parameters())
        cell = f"{100 * row['accuracy_mean']:.1f} ± {100 * row['accuracy_std']:.1f}"
        assert f"| {fusion} | {row['family']} |" in result.markdown and cell in result.markdown
    # lmf sees the same task with more parameters than concat's linear read-out of [x0; x1]
    assert rows["lmf"]["params_mean"] > rows["concat"]["params_mean"]
    table = list(csv.DictReader((result.out_dir / "leaderboard.csv").open()))
    assert {r["fusion"] for r in table} == {"concat", "lmf"}
    assert float(next(r for r in table if r["fusion"] == "lmf")["accuracy_mean"]) == pytest.approx(rows["lmf"]["accuracy_mean"])
    assert (result.out_dir / "leaderboard.md").read_text() == result.markdown


def test_incompatible_fusion_is_skipped_with_its_reason(tiny):
    result, _, lines = tiny
    reason = result.skipped["interactions_o1/san"]
    assert "attention fusion" in reason and "interactions_o1" in reason
    assert any(line.startswith("[interactions_o1/san] skipped: attention fusion") for line in lines)
    assert f"- san: {reason}" in result.markdown
    assert not any(k.startswith("interactions_o1/san/") for k in result.entries)
    assert lb.incompatibility("interactions_o3", "mrn") == "takes 2 modalities, interactions_o3 has 3"
    assert lb.incompatibility("interactions_o3", "tfn") is None
    assert lb.incompatibility("soc", "ban") is None and lb.incompatibility("soc", "mfh") is None


def test_rerun_resumes_without_retraining(tiny):
    result, _, _ = tiny
    again = CountingTrain()
    rerun = lb.run_leaderboard_bench(["interactions_o1"], "concat,lmf,san", seeds=2, budget={"epochs": 2},
                                     out_dir=result.out_dir, train_fn=again, log=lambda s: None, device="cpu",
                                     plots=False, **TINY)
    assert again.calls == []
    assert rerun.trained == 0
    assert [(r["fusion"], r["accuracy_mean"]) for r in rerun.rows] == [(r["fusion"], r["accuracy_mean"]) for r in result.rows]
    # a third seed trains only the new entries; a changed budget retrains
    more = CountingTrain()
    lb.run_leaderboard_bench(["interactions_o1"], "concat", seeds=[0, 2], budget={"epochs": 2}, out_dir=result.out_dir,
                             train_fn=more, log=lambda s: None, device="cpu", plots=False, **TINY)
    assert more.calls == ["interactions_o1-concat-seed2"]


def test_plots_are_png_files(tiny):
    result, _, _ = tiny
    names = {p.name for p in result.plots}
    assert names == {"interactions_o1_accuracy_vs_params.png", "interactions_o1_accuracy_vs_time.png"}
    for p in result.plots:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plateau_and_budget_and_presets():
    points = [{"epoch": 1, "seconds": 1.0, "val_accuracy": 0.50}, {"epoch": 2, "seconds": 2.0, "val_accuracy": 0.796},
              {"epoch": 3, "seconds": 3.0, "val_accuracy": 0.80}, {"epoch": 4, "seconds": 4.0, "val_accuracy": 0.79}]
    assert lb.plateau(points) == {"plateau_epoch": 2, "plateau_s": 2.0, "best_val_accuracy": 0.80}
    assert lb.plateau(points[:1] + points[3:])["plateau_epoch"] == 4  # 0.79 is the best there
    assert lb.plateau([]) == {"plateau_epoch": None, "plateau_s": None, "best_val_accuracy": None}
    cfg = lb.task_config("soc", "ban", seed=3, budget={"steps": 50})
    assert (cfg["train"]["max_epochs"], cfg["train"]["max_steps"], cfg["train"]["seed"]) == (-1, 50, 3)
    assert cfg["model"]["inputs"]["q"]["feed"] == "sequence" and cfg["model"]["fusion"]["glimpses"] == 2
    assert lb.task_config("soc", "mlb")["model"]["inputs"]["q"]["feed"] == "vector"
    assert lb.task_config("interactions_o2", "tfn", budget=7)["train"]["max_epochs"] == 7
    for bad in (0, {"epoch": 3}, {"steps": -1}, True):
        with pytest.raises(ValueError, match="budget"):
            lb.task_config("soc", "mlb", budget=bad)
    # every registered fusion has a preset (or a scaled tiny one), and none is wider than ~64
    # except MCB's sketch
    for name in mmfuse.list_fusions():
        knobs, source = lb.preset_for(name)
        assert source in ("PRESETS", "registry tiny, scaled")
        assert all(v <= 64 for k, v in knobs.items() if k == "hidden_dim" and not name.startswith("mcb"))
    tiny = {"hidden_dim": 4, "hidden_dims": (6, 5), "factor": 2, "fusion_kwargs": {"chunks": 3, "mlp_dim": 8}}
    assert {k: lb._scale(v, k) for k, v in tiny.items()} == {
        "hidden_dim": 64, "hidden_dims": [64, 64], "factor": 2, "fusion_kwargs": {"chunks": 3, "mlp_dim": 64}}
    with pytest.raises(ValueError, match="known tasks: soc, soc_bits, soc_pixels"):
        lb.check_tasks(["soc", "interactions_o4"])


def test_a_failing_entry_is_reported_and_retried(tmp_path):
    def flaky(config, **kwargs):
        if "-lmf-" in config["name"]:
            raise RuntimeError("boom")
        return train(config, **kwargs)

    kw = dict(seeds=1, budget=1, out_dir=tmp_path, log=lambda s: None, device="cpu", plots=False, **TINY)
    result = lb.run_leaderboard_bench(["interactions_o1"], "concat,lmf", train_fn=flaky, **kw)
    assert result.failed == {"interactions_o1/lmf/seed0": "RuntimeError: boom"}
    assert [r["fusion"] for r in result.rows] == ["concat"]
    assert "- interactions_o1/lmf/seed0: RuntimeError: boom" in result.markdown
    counter = CountingTrain()
    again = lb.run_leaderboard_bench(["interactions_o1"], "concat,lmf", train_fn=counter, **kw)
    assert counter.calls == ["interactions_o1-lmf-seed0"] and again.failed == {}


def test_entries_train_in_the_order_given_and_a_typo_stops_the_run(tmp_path):
    calls: list[str] = []

    def record(config, **kwargs):  # no training: the order is what is tested
        calls.append(config["name"])
        raise RuntimeError("not trained")

    kw = dict(seeds=1, budget=1, out_dir=tmp_path, train_fn=record, log=lambda s: None, device="cpu", plots=False,
              **TINY)
    lb.run_leaderboard_bench(["interactions_o1"], "lmf,concat", **kw)
    assert calls == ["interactions_o1-lmf-seed0", "interactions_o1-concat-seed0"]
    calls.clear()
    with pytest.raises(ValueError, match="no fusion matches 'lmff'; closest: lmf"):
        lb.run_leaderboard_bench(["interactions_o1"], "concat,lmff", **kw)
    assert calls == []


def test_out_of_time_counts_the_longest_entry_so_far():
    assert not lb.out_of_time(0.0, 0.0, 0.5)
    assert not lb.out_of_time(20.0, 10.0, 0.5)  # 30 s of 30
    assert lb.out_of_time(20.0, 10.5, 0.5)  # the next entry would end past the budget
    assert lb.out_of_time(31.0, 0.0, 0.5)


def test_a_time_limit_leaves_entries_for_the_next_part(tmp_path):
    kw = dict(seeds=1, budget=1, out_dir=tmp_path, log=lambda s: None, device="cpu", plots=False, **TINY)
    first = CountingTrain()
    part = lb.run_leaderboard_bench(["interactions_o1"], "concat,lmf,san", train_fn=first, max_minutes=0, **kw)
    assert first.calls == [] and part.trained == 0 and part.left == 2  # san is skipped (needs sequences)
    assert "Stopped at the time limit (0 min): 2 entries left" in part.markdown
    rest = CountingTrain()
    done = lb.run_leaderboard_bench(["interactions_o1"], "concat,lmf,san", train_fn=rest, max_minutes=60, **kw)
    assert rest.calls == ["interactions_o1-concat-seed0", "interactions_o1-lmf-seed0"]
    assert done.left == 0 and "time limit" not in done.markdown
    with pytest.raises(ValueError, match="max_minutes"):
        lb.run_leaderboard_bench(["interactions_o1"], "concat", train_fn=rest, max_minutes=-1, **kw)
    fresh = tmp_path / "never-made"
    with pytest.raises(ValueError, match="max_minutes"):  # refused before the run folder exists
        lb.run_leaderboard_bench(["interactions_o1"], "concat", train_fn=rest, max_minutes=float("nan"),
                                 **{**kw, "out_dir": fresh})
    assert not fresh.exists()


def test_sort_of_clevr_tables_carry_the_no_training_reference_levels(tiny, tmp_path):
    from mmfuse.data import sort_of_clevr as soc

    result = lb.run_leaderboard_bench(["soc"], "concat", seeds=1, out_dir=tmp_path, max_minutes=0, n_train=20,
                                      n_test=10, log=lambda s: None, device="cpu", plots=False)
    assert result.trained == 0
    dm = lb.task_datamodule("soc", n_train=20, n_test=10)
    levels = soc.reference_accuracies(soc.load_sort_of_clevr(dm.info["data_root"]))
    assert lb.task_references(lb.TASKS["soc"], dm) == levels
    md = result.markdown
    assert "Reference levels: lookup tables fitted on the training split" in md
    for name, acc in levels.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        want = [acc["overall"], *(acc[q] for q in soc.QTYPE_NAMES)]
        assert cells[1:] == [("" if a != a else f"{100 * a:.1f}") for a in want]
    assert "Reference levels" not in tiny[0].markdown  # the interaction tasks have none
    assert lb.task_references(lb.TASKS["interactions_o1"], None) == {}


def test_from_pixels_vector_fusions_see_every_cell_and_attention_fusions_keypoints():
    from mmfuse.bench.leaderboard import task_config
    from mmfuse.bench.run import entry_config

    for vec, att in ((task_config("soc_pixels", "mlb", seed=0)["model"]["inputs"]["v"],
                      task_config("soc_pixels", "dan", seed=0)["model"]["inputs"]["v"]),
                     (entry_config("concat_mlp", {}, pixels=True)["model"]["inputs"]["v"],
                      entry_config("dan", {}, pixels=True)["model"]["inputs"]["v"])):
        assert vec["encoder"] == att["encoder"] == "cnn" and vec["group_key"] == att["group_key"] == "image_id"
        assert vec["flatten"] is True and (vec["height"], vec["width"]) == ("auto", "auto")  # the RN paper's CNN+MLP
        assert "flatten" not in att and att["keypoints"] == 8 and att["num_layers"] == 2  # attention: CNN keypoints
    assert "group_key" not in entry_config("dan", {}, pixels=False)["model"]["inputs"]["v"]


def test_input_norm_puts_a_layernorm_on_every_input_and_changes_the_digest(tmp_path):
    plain, normed = lb.task_config("soc", "san"), lb.task_config("soc", "san", input_norm="layer")
    assert all("norm" not in spec for spec in plain["model"]["inputs"].values())  # old digests stay valid
    assert [spec["norm"] for spec in normed["model"]["inputs"].values()] == ["layer", "layer"]
    assert lb._digest(plain) != lb._digest(normed)
    three = lb.task_config("interactions_o3", "lmf", input_norm="layer")["model"]["inputs"]
    assert len(three) == 3 and all(spec["norm"] == "layer" for spec in three.values())
    with pytest.raises(ValueError, match="input_norm: expected one of none, layer, got 'batch'"):
        lb.task_config("soc", "san", input_norm="batch")
    with pytest.raises(ValueError, match="input_norm"):
        lb.run_leaderboard_bench(["interactions_o1"], "concat", seeds=1, out_dir=tmp_path, input_norm="batch",
                                 log=lambda s: None, device="cpu", plots=False, **TINY)
    # an entry trains end to end with it
    lines: list[str] = []
    result = lb.run_leaderboard_bench(["interactions_o1"], "lmf", seeds=1, budget={"epochs": 1}, out_dir=tmp_path,
                                      input_norm="layer", log=lines.append, device="cpu", plots=False, **TINY)
    assert result.trained == 1 and len(result.rows) == 1 and result.rows[0]["accuracy_mean"] is not None


def test_parts_run_apart_merge_into_one_leaderboard(tiny, tmp_path):
    result, _, _ = tiny
    part = tmp_path / "part2"
    lb.run_leaderboard_bench(["interactions_o1"], "lmf", seeds=[2], budget={"epochs": 2}, out_dir=part,
                             log=lambda s: None, device="cpu", plots=False, **TINY)
    merged = tmp_path / "merged"
    counts = lb.merge_results(merged, [result.out_dir, part / "results.json"])
    first = json.loads((result.out_dir / "results.json").read_text())
    second = json.loads((part / "results.json").read_text())
    both = json.loads((merged / "results.json").read_text())
    assert both["entries"] == {**first["entries"], **second["entries"]}
    assert both["skipped"] == first["skipped"] and "interactions_o1/san" in both["skipped"]
    assert counts == {"entries": len(first["entries"]) + 1, "skipped": 1, "sources": 2}
    # the parts' command on the merged folder trains nothing and tables every merged seed
    again = CountingTrain()
    rerun = lb.run_leaderboard_bench(["interactions_o1"], "concat,lmf,san", seeds=[0, 1, 2], budget={"epochs": 2},
                                     out_dir=merged, train_fn=again, log=lambda s: None, device="cpu", plots=False,
                                     **TINY)
    lmf = next(r for r in rerun.rows if r["fusion"] == "lmf")
    assert lmf["seeds"] == 3
    assert [c for c in again.calls if "lmf" in c] == []
    # merging the same part again changes nothing
    before = (merged / "results.json").read_text()
    lb.merge_results(merged, [part])
    assert (merged / "results.json").read_text() == before


def test_merge_refuses_an_entry_trained_with_another_config(tmp_path):
    def write(folder, digest):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(
            {"format": lb.FORMAT, "entries": {"soc/san/seed0": {"digest": digest, "accuracy": 0.5}}, "skipped": {}}))
    write(tmp_path / "a", "aaaa")
    write(tmp_path / "b", "bbbb")
    with pytest.raises(ValueError, match=r"soc/san/seed0 was trained with another config"):
        lb.merge_results(tmp_path / "m", [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "m" / "results.json").exists()  # nothing written
    with pytest.raises(FileNotFoundError, match="no leaderboard results"):
        lb.merge_results(tmp_path / "m", [tmp_path / "nowhere"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a leaderboard results file"):
        lb.merge_results(tmp_path / "m", [tmp_path / "c"])


def test_bench_merge_command(tmp_path, capsys):
    from mmfuse.cli import main

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(
        {"format": lb.FORMAT, "entries": {"soc/san/seed0": {"digest": "d", "accuracy": 0.5}},
         "skipped": {"soc/tfn": "too wide"}}))
    assert main(["bench", "merge", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 0
    assert "1 entries, 1 skipped pairs from 1 sources" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "results.json").read_text())["skipped"] == {"soc/tfn": "too wide"}


def test_accelerator_reaches_the_trainer_and_not_the_digest(tmp_path):
    seen = []

    def recording(config, **kwargs):
        seen.append(config["train"]["accelerator"])
        return train(config, **kwargs)

    kw = dict(seeds=1, budget=1, out_dir=tmp_path, log=lambda s: None, device="cpu", plots=False, **TINY)
    first = lb.run_leaderboard_bench(["interactions_o1"], "concat", train_fn=recording, accelerator="cpu", **kw)
    entry = first.entries["interactions_o1/concat/seed0"]
    assert seen == ["cpu"] and entry["accelerator"] == "cpu" and entry["machine"] == micro.cpu()
    again = lb.run_leaderboard_bench(["interactions_o1"], "concat", train_fn=recording, **kw)  # accelerator auto
    assert seen == ["cpu"] and again.trained == 0  # the same entry: nothing retrained


def test_an_entry_records_what_auto_resolved_to(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lb.trained_on("auto") == {"accelerator": "cpu", "machine": micro.cpu()}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert lb.trained_on("auto") == {"accelerator": "gpu", "machine": "NVIDIA H200"}
    assert lb.trained_on("cpu") == {"accelerator": "cpu", "machine": micro.cpu()}
    assert micro.cpu().endswith(" cores") and ", torch" not in micro.cpu()


def test_the_table_names_the_machines_when_entries_come_from_several(tmp_path):
    kw = dict(seeds=2, budget=1, out_dir=tmp_path, log=lambda s: None, device="cpu", plots=False, **TINY)
    first = lb.run_leaderboard_bench(["interactions_o1"], "concat", accelerator="cpu", **kw)
    assert first.trained == 2 and "machines" not in first.markdown  # one machine: no note
    path = tmp_path / lb.RESULTS
    state = json.loads(path.read_text())
    state["entries"]["interactions_o1/concat/seed1"]["machine"] = "NVIDIA H200"
    del state["entries"]["interactions_o1/concat/seed0"]["machine"]  # stored before machines were recorded
    path.write_text(json.dumps(state))
    again = lb.run_leaderboard_bench(["interactions_o1"], "concat", **kw)
    assert again.trained == 0
    assert "Entries trained on 2 machines: NVIDIA H200 (1 entries); accelerator cpu (1 entries)" in again.markdown
    assert again.markdown == (tmp_path / "leaderboard.md").read_text()
