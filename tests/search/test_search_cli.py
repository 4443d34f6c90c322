"""`mmfuse search` end to end on a tiny interaction task: output, files, resume after a kill, errors."""

from __future__ import annotations

import json

import pytest
import yaml

from mmfuse.cli import main
from mmfuse.search import tasks
from mmfuse.search.tasks import DEFAULT_CONFIG, load_search_config, normalize_search_config

TINY = [
    "--task.n_train", "300", "--task.n_test", "100", "--task.dims", "[4, 4, 4]",
    "--backbones.hidden_dims", "[8, 4]", "--backbones.epochs", "1",
    "--search.epochs", "1", "--search.configs_per_step", "2", "--search.iterations", "2",
    "--search.max_layers", "2", "--search.surrogate_epochs", "10", "--final.epochs", "1", "--final.top", "3",
]


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path / "cache"))


def test_search_runs_prints_the_best_and_resumes_after_a_kill(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = tasks.train_fusion
    calls = []

    def killed_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "train_fusion", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        main(["search", "--out", str(out), *TINY])
    assert len((out / "search.jsonl").read_text().splitlines()) == 1 + 3
    assert (out / "backbones" / "x0.safetensors").is_file()
    capsys.readouterr()

    monkeypatch.setattr(tasks, "train_fusion", real)
    assert main(["search", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "loaded" in printed and "resuming: 3 configurations already in" in printed
    assert "best configurations (validation accuracy after 1 epochs)" in printed
    assert "| rank | val acc | L |" in printed and "| 1 |" in printed and "| 3 |" in printed
    assert "test accuracy" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluated"] == 2 * 2 * 2 and summary["trained_now"] == 8 - 3
    lines = [json.loads(x) for x in (out / "search.jsonl").read_text().splitlines()[1:]]
    keys = [x["key"] for x in lines]
    assert len(keys) == len(set(keys)) == 8  # nothing evaluated twice
    assert summary["best"]["search_val_accuracy"] == max(x["score"] for x in lines)
    assert summary["best"]["key"] in keys
    assert 0.0 <= summary["best"]["final_test_accuracy"] <= 1.0
    assert (out / "best" / "model.safetensors").is_file() and json.loads((out / "best" / "config.json").read_text())["key"]
    # a different training setting does not reuse the log
    assert main(["search", "--out", str(out), *TINY, "--search.epochs", "2"]) == 2
    assert "belongs to a different search" in capsys.readouterr().err


def test_bad_configs_name_the_key(tmp_path, capsys):
    assert main(["search", "--out", str(tmp_path / "x"), "--search.combines", "[concat, product]"]) == 2
    assert "search.combines: expected distinct names from concat, weighted_sum" in capsys.readouterr().err
    assert main(["search", "--out", str(tmp_path / "x"), "--task.order", "4"]) == 2
    assert "task.order: expected at most 3" in capsys.readouterr().err
    assert main(["search", "--out", str(tmp_path / "x"), "--serch.epochs", "2"]) == 2
    assert "--serch.epochs: unknown config key; did you mean --search.epochs," in capsys.readouterr().err
    assert main(["search", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="search.epochz: unknown key; did you mean epochs"):
        normalize_search_config({"search": {"epochz": 3}})


def test_the_yaml_configs_are_valid_and_the_default_is_spelled_out():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    assert load_search_config(root / "search_interactions.yaml") == load_search_config(None)
    assert load_search_config(None) == normalize_search_config(DEFAULT_CONFIG)
    soc = load_search_config(root / "search_sort_of_clevr.yaml")
    assert soc["task"]["name"] == "sort_of_clevr" and soc["task"]["question"] == "bits"
    raw = yaml.safe_load((root / "search_interactions.yaml").read_text())
    assert raw["task"]["order"] == 2 and len(raw["task"]["dims"]) == 3


@pytest.mark.parametrize("question", ["bits", "tokens"])
def test_sort_of_clevr_search_runs(tmp_path, capsys, question):
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "search_sort_of_clevr.yaml"
    tiny = [
        "--task.n_train", "12", "--task.n_test", "4", "--task.question", question, "--task.val_fraction", "0.25",
        "--backbones.cnn_channels", "[4, 4]", "--backbones.hidden_dims", "[8, 4]", "--backbones.gru_hidden_dims", "[6]",
        "--backbones.epochs", "1", "--search.epochs", "1", "--search.configs_per_step", "2", "--search.iterations", "1",
        "--search.max_layers", "2", "--search.surrogate_epochs", "5", "--final.epochs", "1",
    ]
    assert main(["search", str(config), "--out", str(tmp_path / "soc"), *tiny]) == 0
    out = capsys.readouterr().out
    assert "backbone image: CNNBackbone [4, 4]" in out
    assert ("GRUBackbone [6]" if question == "tokens" else "MLPBackbone [8, 4]") in out
    assert "feature layers image-question" in out and "test accuracy" in out
    summary = json.loads((tmp_path / "soc" / "summary.json").read_text())
    assert summary["evaluated"] == 4 and summary["best"]["modalities"] == ["image", "question"]
