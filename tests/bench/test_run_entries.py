"""`mmfuse run --only`: which entries it trains and with which knobs."""

import pytest

import mmfuse
from mmfuse.bench.leaderboard import PRESETS
from mmfuse.bench.run import DEFAULT_ENTRIES, EXTRA_ENTRIES, entry_config, resolve_entries


def test_run_entries_keep_their_tuned_knobs_in_the_order_given():
    got = resolve_entries(["mcan", "dan", "concat_mlp"])
    assert [e[0] for e in got] == ["mcan", "dan", "concat_mlp"]
    known = {e[0]: e for e in (*DEFAULT_ENTRIES, *EXTRA_ENTRIES)}
    assert got == (known["mcan"], known["dan"], known["concat_mlp"])
    # the DAN entry is tuned (reasoning mode, 2 hops), not the leaderboard preset
    assert got[1][2] != PRESETS["dan"]


def test_any_registered_fusion_gets_its_leaderboard_preset():
    (name, fusion, knobs), = resolve_entries(["drau"])
    assert (name, fusion, knobs) == ("drau", "drau", PRESETS["drau"])
    knobs["hidden_dim"] = -1  # a copy: the preset table is untouched
    assert PRESETS["drau"]["hidden_dim"] != -1
    cfg = entry_config(fusion, resolve_entries(["drau"])[0][2])
    assert cfg["model"]["fusion"] == {"name": "drau", "out_dim": 128, **PRESETS["drau"]}
    # every registered fusion resolves
    assert [e[0] for e in resolve_entries(mmfuse.list_fusions())] == mmfuse.list_fusions()


@pytest.mark.parametrize("names, match", [
    (["dan", "no_such_fusion"], r"unknown entries \['no_such_fusion'\].*registered fusion"),
    (["dan", "dan"], "named twice"),
])
def test_bad_names_are_refused_before_training(names, match):
    with pytest.raises(ValueError, match=match):
        resolve_entries(names)


def test_entry_region_settings_change_the_region_encoder_only():
    from mmfuse.bench.run import ENTRY_REGIONS, region_encoder, run_entry_config
    from mmfuse.train import validate_config
    from mmfuse.train.config import ConfigError

    base = entry_config("lxmert", {})["model"]["inputs"]["v"]
    assert base == region_encoder(64)
    changes = ENTRY_REGIONS["lxmert"]
    v = entry_config("lxmert", {}, regions=changes)["model"]["inputs"]["v"]
    assert v == {**base, **changes} and v != base
    changes_copy = dict(changes)
    v["hidden_dims"].append(1)  # the table is not shared with the config
    assert ENTRY_REGIONS["lxmert"] == changes_copy
    # from pixels the CNN encoder is used as it is
    assert entry_config("lxmert", {}, pixels=True, regions=changes)["model"]["inputs"]["v"] == \
        entry_config("lxmert", {}, pixels=True)["model"]["inputs"]["v"]
    # every entry's changes build a valid config, and a misspelt setting is named by the config check
    for entry, fusion, knobs in (*DEFAULT_ENTRIES, *EXTRA_ENTRIES):
        validate_config(run_entry_config(entry, fusion, knobs))
    # what `mmfuse run` trains: the entry's encoder changes and its own learning rate; others untouched
    lx = run_entry_config("lxmert", "lxmert", {})
    assert lx["model"]["inputs"]["v"] == {**base, **changes} and lx["train"]["lr"] == 1e-3
    dan = run_entry_config("dan", "dan", {})
    assert dan == entry_config("dan", {}) and dan["train"]["lr"] == 2e-3
    with pytest.raises(ConfigError, match="fourier_spacin"):
        from mmfuse.models.task import normalize_model_config
        normalize_model_config({**entry_config("lxmert", {}, regions={"fourier_spacin": "linear"})["model"],
                                "task": {"kind": "classification", "num_outputs": 10}})


def test_attention_fusions_read_keypoint_tokens_from_pixels_and_entry_changes_go_on_top(monkeypatch):
    from mmfuse.bench import run
    from mmfuse.bench.run import KEYPOINT_TOKENS, pixel_encoder, run_entry_config
    from mmfuse.models.task import build_model
    from mmfuse.train import validate_config

    tokens = pixel_encoder(64, "attention")
    assert tokens == {"encoder": "cnn", "key": "image", "dim": 64, "group_key": "image_id", **KEYPOINT_TOKENS}
    assert tokens["keypoints"] == 8 and tokens["reconstruction_only"] and tokens["keypoint_glimpse"] == 17
    for entry in ("lxmert", "dan", "ban"):
        assert run_entry_config(entry, entry, {}, pixels=True)["model"]["inputs"]["v"] == tokens
    assert run_entry_config("dan", "dan", {}, pixels=True) == entry_config("dan", {}, pixels=True)
    # an entry's own changes go on top of the tokens, from pixels only
    monkeypatch.setitem(run.ENTRY_PIXELS, "dan", {"keypoints": 6})
    assert run_entry_config("dan", "dan", {}, pixels=True)["model"]["inputs"]["v"] == {**tokens, "keypoints": 6}
    assert run_entry_config("dan", "dan", {}) == entry_config("dan", {})
    lx = run_entry_config("lxmert", "lxmert", {}, pixels=True)
    assert lx["train"]["lr"] == 1e-3
    for entry, fusion, knobs in (*DEFAULT_ENTRIES, *EXTRA_ENTRIES):
        validate_config(run_entry_config(entry, fusion, knobs, pixels=True))
    model_cfg = {**lx["model"], "task": {"kind": "classification", "num_outputs": 10}}
    model_cfg["inputs"]["q"] = {**model_cfg["inputs"]["q"], "vocab_size": 46}
    enc = build_model(model_cfg).encoders["v"]
    assert enc.keypoints == 8 and enc.glimpse == 17 and enc.reconstruction_only and enc.out_dim == 64
