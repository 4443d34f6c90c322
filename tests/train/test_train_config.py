"""Run configs: loading, defaults, dotted overrides and errors that name the key."""
from __future__ import annotations

import json

import pytest
import yaml

from mmfuse.train.config import (
    DATA_DEFAULTS,
    TRAIN_DEFAULTS,
    ConfigError,
    apply_overrides,
    load_config,
    parse_value,
)

MODEL = {"inputs": {"a": {"encoder": "vector", "key": "x0", "in_dim": "auto", "dim": 8}}, "fusion": {"name": "concat", "out_dim": 8}}


def base(**data):
    return {"model": MODEL, "data": {"name": "interactions", **data}}


def test_defaults_are_filled():
    cfg = load_config(base())
    assert cfg["train"] == {**TRAIN_DEFAULTS}
    assert cfg["data"]["batch_size"] == DATA_DEFAULTS["batch_size"]
    assert cfg["data"]["dims"] == [16, 16]  # the dataset's own option
    assert cfg["model"] == MODEL  # passed through untouched


def test_dataset_aliases_are_canonical():
    assert load_config({"model": MODEL, "data": {"name": "sort_of_clevr"}})["data"]["name"] == "sort-of-clevr"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_load_from_file(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    raw = {**base(), "train": {"lr": "3e-4", "max_epochs": 3}}
    path.write_text(yaml.safe_dump(raw) if suffix == ".yaml" else json.dumps(raw))
    cfg = load_config(path)
    assert cfg["train"]["lr"] == pytest.approx(3e-4) and cfg["train"]["max_epochs"] == 3


def test_yaml_reads_exponent_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {fusion: {name: concat}}\ndata: {name: interactions}\ntrain: {lr: 3e-4, weight_decay: 1e-2}\n")
    cfg = load_config(path)
    assert cfg["train"]["lr"] == pytest.approx(3e-4) and cfg["train"]["weight_decay"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "text, value",
    [("3e-4", 3e-4), ("1e3", 1000.0), ("12", 12), ("0.5", 0.5), ("null", None), ("true", True),
     ("[8, 8]", [8, 8]), ("mfh", "mfh"), ("bf16-mixed", "bf16-mixed"), ("{patience: 3}", {"patience": 3})],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_overrides_set_nested_values_without_touching_the_input():
    cfg = base()
    out = apply_overrides(cfg, ["train.lr=3e-4", "data.dims=[8, 8]", "model.fusion.name=mfh",
                                "model.fusion.hidden_dim=32", "train.early_stopping.patience=2", "name=exp1"])
    assert out["train"]["lr"] == pytest.approx(3e-4)
    assert out["data"]["dims"] == [8, 8]
    assert out["model"]["fusion"] == {"name": "mfh", "out_dim": 8, "hidden_dim": 32}
    assert out["train"]["early_stopping"] == {"patience": 2}
    assert out["name"] == "exp1"
    assert cfg == base()  # a copy
    full = load_config(out)
    assert full["train"]["early_stopping"] == {"monitor": "auto", "patience": 2, "mode": "auto", "min_delta": 0.0}


def test_model_keys_pass_through():
    out = apply_overrides(base(), ["model.anything.deep.key=1"])
    assert out["model"]["anything"] == {"deep": {"key": 1}}


def test_data_name_override_is_applied_first():
    # n_rel exists only for sort-of-clevr: accepted because data.name switches to it
    out = apply_overrides(base(), ["data.n_rel=4", "data.name=sort-of-clevr"])
    assert out["data"]["name"] == "sort-of-clevr" and out["data"]["n_rel"] == 4


def test_overrides_from_a_mapping_and_load_config():
    cfg = load_config(base(), {"train.max_epochs": 7})
    assert cfg["train"]["max_epochs"] == 7
    assert load_config(base(), ["train.max_epochs=5"])["train"]["max_epochs"] == 5


@pytest.mark.parametrize(
    "override, key",
    [
        ("trian.lr=1", "trian"),
        ("train.lrr=1", "train.lrr"),
        ("data.batchsize=4", "data.batchsize"),
        ("data.n_rel=4", "data.n_rel"),  # a sort-of-clevr option on interactions
        ("train.early_stopping.patiense=2", "train.early_stopping.patiense"),
        ("train.lr.x=1", "train.lr.x"),
        ("data.seed.x=1", "data.seed.x"),
        ("name.x=1", "name.x"),
        ("model=1", "model"),
        ("noequals", "noequals"),
    ],
)
def test_unknown_override_keys_are_named(override, key):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}"):
        apply_overrides(base(), [override])


def test_unknown_key_suggests_the_close_name():
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        apply_overrides(base(), ["train.lrr=1"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train": {"lr": -1}}, r"^train\.lr: expected a number > 0"),
        ({"train": {"lr": "fast"}}, r"^train\.lr:"),
        ({"train": {"max_epochs": 0}}, r"^train\.max_epochs:"),
        ({"train": {"max_epochs": -1, "max_steps": -1}}, r"^train\.max_epochs: set max_epochs or max_steps"),
        ({"train": {"schedule": "cosin"}}, r"^train\.schedule: .*did you mean 'cosine'"),
        ({"train": {"precision": "8-mixed"}}, r"^train\.precision:"),
        ({"train": {"early_stopping": {"patience": 0}}}, r"^train\.early_stopping\.patience:"),
        ({"train": {"grad_clip": 0}}, r"^train\.grad_clip:"),
        ({"train": {"max_minutes": 0}}, r"^train\.max_minutes: expected a number > 0"),
        ({"train": {"max_minutes": "soon"}}, r"^train\.max_minutes:"),
        ({"train": {"optimiser": "adamw"}}, r"^train\.optimiser: unknown key"),
        ({"data": {"name": "interactions", "batch_size": 0}}, r"^data\.batch_size:"),
        ({"data": {"name": "interactions", "dims": [4]}}, r"^data\.dims:"),
        ({"data": {"name": "interactions", "order": 3}}, r"^data\.order:"),
        ({"data": {"name": "interactions", "n_rel": 3}}, r"^data\.n_rel: unknown key"),
        ({"data": {"name": "cifar"}}, r"^data\.name: unknown dataset"),
        ({"data": {}}, r"^data\.name: required"),
        ({"data": {"name": "mosi"}}, r"^data\.path: required"),
        ({"data": {"name": "mosi", "path": "/no/such/mosi.pkl"}}, r"^data\.path: /no/such/mosi\.pkl does not exist"),
        ({"data": {"name": "mosi", "path": "/tmp", "labels": "3class"}}, r"^data\.(path|labels):"),
        ({"data": {"name": "mmimdb", "path": "/tmp", "splits": {"train": [0, 1]}}}, r"^data\.(path|splits):"),
        ({"extra": {}}, r"^extra: unknown config section"),
        ({"model": None}, r"^model: required"),
    ],
)
def test_validation_errors_name_the_key(change, message):
    cfg = {**base(), **change}
    with pytest.raises(ConfigError, match=message):
        load_config(cfg)


def test_missing_vqa_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.train_questions: .* does not exist"):
        load_config({"model": MODEL, "data": {"name": "vqa2", "path": str(tmp_path)}})


def test_paths_can_be_left_unchecked():
    cfg = load_config({"model": MODEL, "data": {"name": "mosi", "path": "/elsewhere/mosi.pkl"}}, check_paths=False)
    assert cfg["data"]["path"] == "/elsewhere/mosi.pkl"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
