"""The ``mmfuse`` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mmfuse
from mmfuse.cli import main


def test_list_shows_every_fusion_with_its_paper(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["name", "kind", "family", "modalities", "paper"]
    for name in mmfuse.list_fusions():
        info = mmfuse.fusion_info(name)
        row = next(line for line in lines if line.startswith(f"| {name} "))
        assert info.paper in row and info.kind in row and info.modalities in row and info.family in row
    assert f"{len(mmfuse.list_fusions())} fusions" in out


def test_list_filters(capsys):
    assert main(["list", "concat*"]) == 0
    out = capsys.readouterr().out
    assert "| concat_mlp " in out and "| gmu " not in out
    assert main(["list", "nothing*"]) == 1


def test_info_and_unknown_name(capsys):
    assert main(["info", "gmu"]) == 0
    out = capsys.readouterr().out
    assert "Arevalo" in out and "in_dims" in out and "Gated Multimodal Unit" in out
    assert main(["info", "gmuu"]) == 2
    assert "unknown fusion 'gmuu'; closest: gmu" in capsys.readouterr().err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "mmfuse.cli", "list", "--kind", "vector"], capture_output=True, text=True, check=True).stdout
    assert "| dpp " in out and "Noh et al., CVPR 2016" in out


def test_python_dash_m_mmfuse_is_the_same_command():
    r = subprocess.run([sys.executable, "-m", "mmfuse", "list", "--kind", "attention"], capture_output=True, text=True)
    assert r.returncode == 0 and "| ban " in r.stdout and "| dpp " not in r.stdout
    bad = subprocess.run([sys.executable, "-m", "mmfuse", "info", "mfhh"], capture_output=True, text=True)
    assert bad.returncode != 0 and "mfhh" in bad.stderr


def test_data_make_and_info(tmp_path, capsys):
    out = tmp_path / "soc"
    assert main(["data", "make", "sort-of-clevr", "--out", str(out), "--seed", "3", "--n-train", "12", "--n-test=4"]) == 0
    made = capsys.readouterr().out
    assert f"dataset: {out}" in made
    # 12 train images x 20 questions; the per-type table is printed
    row = next(line for line in made.splitlines() if line.startswith("| train "))
    assert [c.strip() for c in row.split("|")[2:4]] == ["12", "240"]
    assert "| closest " in made and "| count " in made
    assert main(["data", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert info.strip() == made.split("\n", 2)[2].strip()


def test_data_make_errors(tmp_path, capsys):
    assert main(["data", "make", "sort-of-clevr", "--out", str(tmp_path / "x"), "--n-trains", "3"]) == 2
    assert "n_trains" in capsys.readouterr().err
    assert main(["data", "make", "clevr", "--out", str(tmp_path / "y")]) == 2
    assert "unknown dataset 'clevr'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["list", "--n-train", "3"])


def test_run_help_names_every_extra_entry(capsys):
    """`mmfuse run --help` lists the entries --only knows beside the default ones."""
    from mmfuse.bench.run import EXTRA_ENTRIES

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, _, _ in EXTRA_ENTRIES:
        assert name in text.split("--only", 1)[1], name
