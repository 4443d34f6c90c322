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
