"""The training commands end to end on tiny data: train, eval, predict, run."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("lightning")

from mmfuse.cli import main  # noqa: E402
from mmfuse.data import sort_of_clevr as soc  # noqa: E402

TINY = ["--data.n_train", "12", "--data.n_test", "4", "--train.max_epochs", "1", "--data.batch_size", "32"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MMFUSE_CACHE")
    os.environ["MMFUSE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MMFUSE_CACHE")
    else:
        os.environ["MMFUSE_CACHE"] = old


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "mcan"
    assert main(["train", "configs/soc_mcan.yaml", "--run-dir", str(run), *TINY]) == 0
    return run


def test_train_prints_metrics_and_saves_a_model(trained, capsys):
    assert (trained / "model" / "model.safetensors").is_file()
    assert (trained / "model" / "config.json").is_file()


def test_eval_reads_the_saved_model(trained, capsys):
    assert main(["eval", str(trained / "model")]) == 0
    out = capsys.readouterr().out
    assert "test/accuracy" in out and "test/acc_relational" in out


def test_predict_answers_and_writes_the_attention(trained, tmp_path, capsys):
    from PIL import Image

    scene = soc.generate_sort_of_clevr(n_train=1, n_test=1, seed=9)["test"]
    img_path = tmp_path / "scene.png"
    Image.fromarray(scene["images"][0]).save(img_path)
    out_png = tmp_path / "att.png"
    question = "What is the shape of the object closest to the red object?"
    assert main(["predict", str(trained / "model"), "--image", str(img_path), "--question", question,
                 "--attention", str(out_png), "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Q: {question}"
    answers = [line.split()[1] for line in out[1:4]]
    assert len(set(answers)) == 3 and set(answers) <= set(soc.ANSWER_VOCAB)
    probs = [float(line.split()[2].rstrip("%")) for line in out[1:4]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.0 + 1e-6
    assert out_png.is_file() and out_png.stat().st_size > 5000


def test_predict_errors(trained, tmp_path, capsys):
    assert main(["predict", str(trained / "model"), "--image", str(tmp_path / "none.png"), "--question", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_config_errors_name_the_key(cache, tmp_path, capsys):
    assert main(["train", "configs/soc_mcan.yaml", "--run-dir", str(tmp_path / "r"), "--model.fusion.name", "mcann", *TINY]) == 2
    err = capsys.readouterr().err
    assert "model.fusion.name" in err and "mcan" in err
    assert main(["train", "configs/soc_mcan.yaml", "--run-dir", str(tmp_path / "r2"), "--data.path", str(tmp_path / "missing")]) == 2
    assert "data.path" in capsys.readouterr().err


def test_run_writes_the_leaderboard(cache, tmp_path, capsys):
    out = tmp_path / "board"
    assert main(["run", "--only", "concat_mlp,soft_attention", "--n-train", "12", "--epochs", "1", "--out", str(out),
                 "--data.n_test", "4", "--data.batch_size", "32"]) == 0
    text = capsys.readouterr().out
    assert "| concat_mlp " in text and "| soft_attention " in text
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert {r["model"] for r in rows} == {"concat_mlp", "soft_attention"}
    assert all(0.0 <= float(r["relational"]) <= 1.0 for r in rows)
    assert (out / "leaderboard.png").stat().st_size > 10000
    # a second run resumes: nothing is retrained
    assert main(["run", "--only", "concat_mlp,soft_attention", "--n-train", "12", "--epochs", "1", "--out", str(out),
                 "--data.n_test", "4", "--data.batch_size", "32"]) == 0
    assert capsys.readouterr().out.count("already trained") == 2
