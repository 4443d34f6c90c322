"""Every YAML in configs/ builds its model, so that the shipped configs never rot.

Configs whose fusion is not registered yet are skipped. Paper-sized models (VQA v2, MOSI,
MM-IMDb) are built on the meta device (shapes only, no memory, no init time); the small
Sort-of-CLEVR and interaction models are built for real and run on a fake batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import mmfuse
from mmfuse.models import build_model
from model_helpers import soc_batch

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# search_*.yaml are fusion-search configs (mmfuse search), checked in tests/search
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("search_"))


def test_there_are_configs():
    names = {p.stem for p in CONFIGS}
    assert {"soc_concat", "soc_mcan", "soc_pixels_mcan", "interactions_tfn", "vqa2_ban", "mosi_tfn", "mmimdb_gmu"} <= names


def _batch(data: dict, b: int = 3) -> dict[str, torch.Tensor]:
    if data["name"] == "sort-of-clevr":
        return soc_batch(b=b)
    assert data["name"] == "interactions"
    return {f"x{m}": torch.randn(b, d) for m, d in enumerate(data["dims"])} | {"label": torch.zeros(b, dtype=torch.long)}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds(path):
    config = yaml.safe_load(path.read_text())
    assert set(config) <= {"name", "model", "data", "train"} and {"model", "data", "train"} <= set(config)
    assert config.get("name", path.stem) == path.stem
    fusion = config["model"]["fusion"]["name"]
    if fusion not in mmfuse.list_fusions():
        pytest.skip(f"fusion {fusion!r} is not registered yet")
    if config["data"]["name"] in ("sort-of-clevr", "interactions"):
        torch.manual_seed(0)
        model = build_model(config)
        assert model.config["task"] == config["model"]["task"]
        model.eval()
        with torch.no_grad():
            out = model(_batch(config["data"]))
        assert out.logits.shape == (3, config["model"]["task"]["num_outputs"])
        assert torch.isfinite(out.logits).all()
        if config["data"]["name"] == "sort-of-clevr":
            rep = config["data"]["representation"]
            assert model.config["inputs"]["v"]["key"] == {"regions": "regions", "pixels": "image"}[rep]
            assert sum(p.numel() for p in model.parameters()) < 2_000_000  # small enough for CPU runs
    else:
        with torch.device("meta"):
            model = build_model(config)
        assert next(model.parameters()).is_meta


def test_soc_lxmert_yaml_is_the_main_jobs_lxmert_entry():
    """configs/soc_lxmert.yaml says it is `mmfuse run`'s LXMERT: same model, learning rate and budget."""
    from mmfuse.bench.run import DEFAULT_ENTRIES, run_entry_config

    yaml_cfg = yaml.safe_load((CONFIG_DIR / "soc_lxmert.yaml").read_text())
    entry = run_entry_config(*next(e for e in DEFAULT_ENTRIES if e[0] == "lxmert"))
    assert yaml_cfg["model"]["fusion"] == entry["model"]["fusion"]
    assert yaml_cfg["model"]["inputs"]["v"] == entry["model"]["inputs"]["v"]
    assert yaml_cfg["model"]["head"] == {**entry["model"]["head"], "activation": "relu"}
    for key in ("max_epochs", "lr", "weight_decay", "warmup_steps", "schedule", "grad_clip", "seed"):
        assert yaml_cfg["train"][key] == entry["train"][key], key
    assert yaml_cfg["data"]["batch_size"] == entry["data"]["batch_size"]
