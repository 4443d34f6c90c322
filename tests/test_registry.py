"""The registry: names, lookups, errors, flags."""

from __future__ import annotations

import fnmatch

import pytest
from torch import nn

import mmfuse
from mmfuse import _registry
from mmfuse.fusions import VectorFusion

ISSUE_2_FUSIONS = {"concat", "concat_mlp", "linear_sum", "weighted_sum", "product", "gmu", "mrn", "dpp"}


@pytest.fixture
def scratch_registry(monkeypatch):
    """A registry copy that the test may add to without leaking into other tests."""
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))


def test_the_foundation_fusions_are_registered_with_papers():
    names = set(mmfuse.list_fusions())
    assert ISSUE_2_FUSIONS <= names
    for n in ISSUE_2_FUSIONS:
        info = mmfuse.fusion_info(n)
        assert info.kind == "vector" and info.paper and info.name == n
        assert issubclass(info.cls, VectorFusion) and info.cls.fusion_name == n


def test_list_fusions_pattern_kind_and_order():
    assert mmfuse.list_fusions() == sorted(mmfuse.list_fusions())
    assert mmfuse.list_fusions("concat*") == ["concat", "concat_mlp"]
    all_names = mmfuse.list_fusions()
    assert mmfuse.list_fusions("*u*") == [n for n in all_names if fnmatch.fnmatchcase(n, "*u*")]
    assert set(mmfuse.list_fusions(kind="vector")) >= ISSUE_2_FUSIONS
    assert mmfuse.list_fusions("zzz*") == []
    with pytest.raises(ValueError, match="kind must be one of"):
        mmfuse.list_fusions(kind="tensor")


def test_select_fusions_keeps_the_given_order_and_rejects_a_pattern_that_matches_nothing():
    assert mmfuse.select_fusions("tucker,block") == ["tucker", "block"]
    assert mmfuse.select_fusions(" tucker , mf* ,") == ["tucker", "mfb", "mfb_coattention", "mfh", "mfh_coattention"]
    # every name once, where its first pattern put it
    assert mmfuse.select_fusions("mfh,mf*") == ["mfh", "mfb", "mfb_coattention", "mfh_coattention"]
    assert mmfuse.select_fusions("*") == mmfuse.list_fusions()
    assert mmfuse.select_fusions("b*", names=["san", "ban", "block"]) == ["ban", "block"]
    with pytest.raises(ValueError, match=r"--fusions: no fusion matches 'tuckr'; closest: tucker"):
        mmfuse.select_fusions("tuckr,block")
    with pytest.raises(ValueError, match=r"--only: no fusion matches 'zzz\*'; known: san, ban"):
        mmfuse.select_fusions("zzz*", names=["san", "ban"], option="--only")
    for bad in ("", " , "):
        with pytest.raises(ValueError, match="expected comma-separated fusion names or patterns"):
            mmfuse.select_fusions(bad)
    with pytest.raises(ValueError, match="got list"):
        mmfuse.select_fusions(["tucker"])


def test_unknown_name_lists_the_closest():
    with pytest.raises(ValueError, match=r"unknown fusion 'gmuu'; closest: gmu"):
        mmfuse.create_fusion("gmuu", in_dims=(2, 2), out_dim=2)
    with pytest.raises(ValueError, match=r"unknown fusion 'concatmlp'; closest: concat_mlp"):
        mmfuse.fusion_info("concatmlp")
    with pytest.raises(ValueError, match="known:"):
        mmfuse.fusion_info("qqqqqqqqqqqqqqqqq")


def test_registering_a_name_twice_raises(scratch_registry):
    with pytest.raises(ValueError, match="'gmu' is already registered by mmfuse.fusions.gated.GMU"):

        @mmfuse.register_fusion("gmu", kind="vector", modalities="2", paper="x")
        class Again(nn.Module):
            pass


def test_register_validates_its_arguments(scratch_registry):
    with pytest.raises(ValueError, match="kind must be one of"):
        mmfuse.register_fusion("x1", kind="tensor", modalities="2", paper="p")
    with pytest.raises(ValueError, match="modalities must look like"):
        mmfuse.register_fusion("x2", kind="vector", modalities="two", paper="p")


def test_a_new_registration_is_listed_and_creatable(scratch_registry):
    @mmfuse.register_fusion("my_sum", kind="vector", modalities="2+", paper="me", export=False)
    class MySum(VectorFusion):
        def fuse(self, *xs):
            return sum(xs)

        def expected_num_parameters(self):
            return 0

    assert "my_sum" in mmfuse.list_fusions("my_*")
    info = mmfuse.fusion_info("my_sum")
    assert (info.min_modalities, info.max_modalities, info.export, info.compile) == (2, None, False, True)
    assert info.accepts(5) and not info.accepts(1)
    f = mmfuse.create_fusion("my_sum", in_dims=(3, 3), out_dim=3)
    with pytest.raises(ValueError, match=r"my_sum: expected 2 inputs with last dims \(3, 3\)"):
        import torch

        f(torch.randn(2, 3), torch.randn(2, 4))


def test_modalities_bounds():
    assert mmfuse.fusion_info("mrn").max_modalities == 2
    assert mmfuse.fusion_info("gmu").max_modalities is None
    assert not mmfuse.fusion_info("mrn").accepts(3)


def test_families():
    assert mmfuse.fusion_info("concat").family == "simple"
    assert mmfuse.fusion_info("gmu").family == "gated"
    assert mmfuse.fusion_info("mfh").family == mmfuse.fusion_info("lmf").family == "bilinear"
    assert mmfuse.fusion_info("san").family == "attention"
    assert mmfuse.fusion_info("mcan").family == "transformer"
    assert all(mmfuse.fusion_info(n).family != "other" for n in mmfuse.list_fusions())
