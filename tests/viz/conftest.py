"""Fixtures of the gallery tests: a tiny Sort-of-CLEVR and untrained models saved like trained ones."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("lightning")
pytest.importorskip("safetensors")
pytest.importorskip("matplotlib")

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session")
def soc_root(tmp_path_factory) -> Path:
    """A tiny Sort-of-CLEVR (6 training scenes, 4 test scenes, 20 questions each), no cache used."""
    from mmfuse.data.sort_of_clevr import make_sort_of_clevr

    return make_sort_of_clevr(tmp_path_factory.mktemp("soc"), seed=3, n_train=6, n_test=4)


def run_config(config: str, **fusion: object) -> dict:
    """configs/<config>.yaml as a dict; ``fusion`` replaces the fusion section (then words feed as a sequence)."""
    cfg = yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())
    if fusion:
        cfg = copy.deepcopy(cfg)
        cfg["model"]["fusion"] = dict(fusion)
        cfg["model"]["inputs"]["q"].pop("feed", None)
    return cfg


def save_untrained(raw: dict, data_root: Path, folder: Path, seed: int = 0) -> Path:
    """Build the model of ``raw`` on ``data_root`` (weights from ``seed``) and save it as training would."""
    from mmfuse.models import build_model
    from mmfuse.train import load_config, resolve_model_config, save_model
    from mmfuse.train.data import build_datamodule, json_info

    config = load_config(raw, [f"data.path={data_root}"])
    dm = build_datamodule(config["data"])
    dm.setup()
    config["model"] = resolve_model_config(config["model"], dm.info)
    torch.manual_seed(seed)
    model = build_model(config["model"])
    for p in model.parameters():  # larger weights than the init: maps far from uniform
        p.data.mul_(3.0)
    return save_model(model, config, folder, info=json_info(dm.info))


@pytest.fixture(scope="session")
def dan_model(soc_root, tmp_path_factory) -> Path:
    raw = run_config("soc_san", name="dan", out_dim=32, hidden_dim=16, hops=2, dropout_attention=0.0)
    return save_untrained(raw, soc_root, tmp_path_factory.mktemp("dan") / "model")


@pytest.fixture(scope="session")
def san_model(soc_root, tmp_path_factory) -> Path:
    return save_untrained(run_config("soc_san"), soc_root, tmp_path_factory.mktemp("san") / "model")


@pytest.fixture(scope="session")
def concat_model(soc_root, tmp_path_factory) -> Path:
    return save_untrained(run_config("soc_concat"), soc_root, tmp_path_factory.mktemp("concat") / "model")


def pixel_dan(soc_root: Path, folder: Path, **cnn: object) -> Path:
    """An untrained DAN from pixels (the `mmfuse run --pixels` encoder), the CNN changed by ``cnn``."""
    from mmfuse.bench.run import entry_config

    raw = entry_config("dan", {"mode": "reasoning", "hidden_dim": 16, "hops": 2}, pixels=True)
    raw["model"]["inputs"]["v"].update({"channels": 4, **cnn})
    return save_untrained(raw, soc_root, folder)


@pytest.fixture(scope="session")
def pixel_cells_model(soc_root, tmp_path_factory) -> Path:
    # the grid of cells instead of run's keypoint tokens: 75 -> 10 x 10
    return pixel_dan(soc_root, tmp_path_factory.mktemp("cells") / "model", num_layers=3, refine_layers=0,
                     keypoints=None, reconstruction_weight=0.0, reconstruction_only=False, keypoint_glimpse=0,
                     keypoint_norm=False)


@pytest.fixture(scope="session")
def pixel_keypoints_model(soc_root, tmp_path_factory) -> Path:
    return pixel_dan(soc_root, tmp_path_factory.mktemp("keypoints") / "model", num_layers=2, keypoints=5)
