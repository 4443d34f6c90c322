"""benchmarks/soc_plateau.py: trains the leaderboard's soc models per variant and reports each row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "soc_plateau.py"


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MMFUSE_CACHE": str(tmp_path)})


def test_rows_per_fusion_and_variant(tmp_path):
    out = tmp_path / "rows.json"
    r = _run(tmp_path, "--fusions", "soft_attention", "--variants", "base,norm", "--epochs", "2",
             "--n-train", "20", "--n-test", "10", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [(x["fusion"], x["variant"]) for x in rows] == [("soft_attention", "base"), ("soft_attention", "norm")]
    for x in rows:
        assert len(x["train_non_relational"]) == 2 and all(0.0 <= a <= 1.0 for a in x["train_non_relational"])
        assert 0.0 <= x["test_non_relational"] <= 1.0 and 0.0 <= x["test_relational"] <= 1.0
        assert x["steps_per_epoch"] >= 1
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("| soft_attention |")]
    assert [ln.split("|")[2].strip() for ln in table] == ["base", "norm"]


def test_bad_arguments_name_what_was_expected(tmp_path):
    r = _run(tmp_path, "--variants", "nope")
    assert r.returncode == 2 and "unknown variant 'nope'" in r.stderr
    r = _run(tmp_path, "--fusions", "not_a_fusion")
    assert r.returncode == 2 and "unknown fusion 'not_a_fusion'" in r.stderr


def test_accuracy_counts_right_answers_per_group_and_variants_set_the_options():
    from script_helpers import load_script
    import torch
    from mmfuse.bench.leaderboard import task_config
    from mmfuse.train.config import apply_overrides

    mod = load_script("soc_plateau")
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])  # predictions 0, 1, 0, 1
    batch = {"answer": torch.tensor([0, 0, 0, 1])}
    relational = torch.tensor([False, False, True, True])
    hits: dict = {}
    mod._accuracy(logits, batch, relational, hits)
    assert hits == {"non_relational": [1, 2], "relational": [2, 2]}
    assert mod._rate(hits, "non_relational") == 0.5 and mod._rate(hits, "relational") == 1.0
    assert mod._rate({}, "relational") != mod._rate({}, "relational")  # NaN where nothing was counted
    inputs = apply_overrides(task_config("soc", "san"), mod.VARIANTS["norm"])["model"]["inputs"]
    assert (inputs["v"]["norm"], inputs["q"]["norm"], inputs["q"]["feed"]) == ("layer", "layer", "vector")
    words = apply_overrides(task_config("soc", "san"), mod.VARIANTS["norm_words"])["model"]["inputs"]
    assert (words["q"]["norm"], words["q"]["feed"]) == ("layer", "sequence")
    assert mod.VARIANTS["base"] == []
