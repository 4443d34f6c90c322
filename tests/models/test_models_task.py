"""Task models on a fake Sort-of-CLEVR batch: vector and attention fusions, gradients, config."""

from __future__ import annotations

import json

import pytest
import torch

import mmfuse
from mmfuse.attention._base import AttentionOutput
from mmfuse.models import ModelOutput, TaskModel, build_model
from model_helpers import Q_GRU, V_REGIONS, soc_batch, soc_config


def assert_every_parameter_learns(model: torch.nn.Module, out: ModelOutput, target: torch.Tensor) -> None:
    loss = torch.nn.functional.cross_entropy(out.logits, target)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_vector_fusion_model():
    torch.manual_seed(0)
    model = build_model(soc_config({"name": "mlb", "out_dim": 12, "hidden_dim": 8, "dropout_input": 0.0}))
    assert isinstance(model, TaskModel) and model.fusion_kind == "vector"
    assert list(model.encoders) == ["v", "q"] and model.fusion.in_dims == (16, 16)
    batch = soc_batch()
    out = model(batch)
    assert isinstance(out, ModelOutput) and out.attention is None
    assert out.logits.shape == (4, 10)
    assert_every_parameter_learns(model, out, batch["answer"])


def test_attention_fusion_model():
    torch.manual_seed(0)
    fusion = {"name": "mcan", "out_dim": 12, "hidden_dim": 8, "heads": 2, "ffn_dim": 16, "num_layers": 1,
              "flat_mlp_dim": 8, "dropout": 0.0}
    model = build_model(soc_config(fusion))
    assert model.fusion_kind == "attention"
    batch = soc_batch()
    out = model(batch)
    assert out.logits.shape == (4, 10)
    assert isinstance(out.attention, AttentionOutput)
    v_attn = out.attention.v_attn  # [B, G, K]
    assert v_attn.shape == (4, 1, 6)
    assert (v_attn[-1, :, -2:] == 0).all()  # the padded regions of the last scene get no attention
    assert_every_parameter_learns(model, out, batch["answer"])


def test_attention_fusion_gets_words_and_masks_or_the_question_vector(monkeypatch):
    seen = {}

    def spy(module, args, kwargs):
        seen["q"] = args[1]
        seen["q_mask"] = kwargs.get("q_mask")
        seen["v_mask"] = kwargs.get("v_mask")

    batch = soc_batch()
    words = build_model(soc_config({"name": "soft_attention", "out_dim": 8, "hidden_dim": 8}))
    words.fusion.register_forward_pre_hook(spy, with_kwargs=True)
    words(batch)
    assert seen["q"].shape == (4, 13, 16) and torch.equal(seen["q_mask"], batch["question_mask"])
    assert torch.equal(seen["v_mask"], batch["region_mask"])

    vec = build_model(soc_config({"name": "soft_attention", "out_dim": 8, "hidden_dim": 8}, q={**Q_GRU, "feed": "vector"}))
    vec.fusion.register_forward_pre_hook(spy, with_kwargs=True)
    vec(batch)
    q_enc = vec.encoders["q"](batch["question_tokens"], batch["question_mask"])
    assert seen["q"].shape == (4, 16) and seen["q_mask"] is None
    torch.testing.assert_close(seen["q"], q_enc.vec)

    bits = build_model(soc_config({"name": "san", "out_dim": 8, "hidden_dim": 8},
                                  q={"encoder": "bits", "key": "question_bits", "dim": 16}))
    bits.fusion.register_forward_pre_hook(spy, with_kwargs=True)
    assert bits(batch).logits.shape == (4, 10)
    assert seen["q"].shape == (4, 16) and seen["q_mask"] is None


def _tiny_fusion(name: str) -> dict:
    info = mmfuse.fusion_info(name)
    knobs = {k: list(v) if isinstance(v, tuple) else v for k, v in info.tiny.items()}
    return {"name": name, "out_dim": 6, **knobs}


@pytest.mark.parametrize("name", mmfuse.list_fusions())
def test_every_registered_fusion_plugs_in(name):
    """Any registered fusion (two modalities) builds into a model that runs forward and backward."""
    info = mmfuse.fusion_info(name)
    if not info.accepts(2):
        pytest.skip(f"{name} takes {info.modalities} modalities")
    torch.manual_seed(0)
    q = {**Q_GRU, "dim": 8}
    model = build_model(soc_config(_tiny_fusion(name), v={**V_REGIONS, "dim": 8}, q=q))
    batch = soc_batch(b=3, length=5)  # high_order's tiny knobs: at most 6 regions and 5 words
    out = model(batch)
    assert out.logits.shape == (3, 10) and torch.isfinite(out.logits).all()
    assert (out.attention is None) == (info.kind == "vector")
    out.logits.sum().backward()
    assert all(p.grad is not None for p in model.encoders.parameters())


def test_cnn_pixels_model():
    torch.manual_seed(0)
    v = {"encoder": "cnn", "key": "image", "channels": 8}
    fusion = {"name": "updown", "out_dim": 8, "hidden_dim": 8}
    model = build_model(soc_config(fusion, v=v, q={**Q_GRU, "feed": "vector"}))
    batch = soc_batch(b=2)
    out = model(batch)
    assert out.attention.v_attn.shape == (2, 1, 25)  # a 5x5 grid of cells
    assert_every_parameter_learns(model, out, batch["answer"][:2])


def test_three_modalities_and_regression():
    torch.manual_seed(0)
    config = {
        "task": {"kind": "regression", "num_outputs": 1},
        "inputs": {
            "text": {"encoder": "sequence", "mask_key": "text_mask", "in_dim": 6, "dim": 5, "rnn": "lstm"},
            "audio": {"encoder": "sequence", "in_dim": 4, "dim": 3, "rnn": "mean", "hidden_dims": [4]},
            "vision": {"encoder": "vector", "in_dim": 3},
        },
        "fusion": {"name": "tfn", "out_dim": 4, "hidden_dims": [8]},
    }
    model = build_model(config)
    assert model.fusion.in_dims == (5, 3, 3) and model.batch_keys == ["text", "text_mask", "audio", "vision"]
    batch = {"text": torch.randn(2, 7, 6), "text_mask": torch.ones(2, 7, dtype=torch.bool),
             "audio": torch.randn(2, 7, 4), "vision": torch.randn(2, 3)}
    assert model(batch).logits.shape == (2, 1)


def test_config_is_normalised_json_and_rebuilds_the_same_model():
    config = soc_config({"name": "block", "out_dim": 8, "hidden_dim": 10, "chunks": 2, "rank": 2})
    del config["head"]
    model = build_model({"model": config, "data": {"name": "sort-of-clevr"}, "train": {}})  # a full config
    cfg = model.config
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["head"] == {"hidden_dims": [], "dropout": 0.0, "activation": "relu"}
    assert cfg["inputs"]["q"]["num_layers"] == 1 and cfg["inputs"]["q"]["feed"] == "auto"
    assert cfg["inputs"]["v"]["key"] == "regions"
    cfg["task"]["num_outputs"] = 99  # a copy: the model's own config does not change
    assert model.config["task"]["num_outputs"] == 10
    again = build_model(model.config)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    again.load_state_dict(model.state_dict())
    batch = soc_batch()
    model.eval(), again.eval()
    torch.testing.assert_close(again(batch).logits, model(batch).logits)


def test_key_defaults_to_the_input_name_and_missing_batch_key_is_named():
    config = {
        "task": {"kind": "classification", "num_outputs": 2},
        "inputs": {"x0": {"encoder": "vector", "in_dim": 4}, "x1": {"encoder": "vector", "in_dim": 4}},
        "fusion": {"name": "lmf", "out_dim": 3, "rank": 2},
    }
    model = build_model(config)
    assert model.batch_keys == ["x0", "x1"]
    assert model({"x0": torch.randn(5, 4), "x1": torch.randn(5, 4)}).logits.shape == (5, 2)
    with pytest.raises(KeyError, match=r"input 'x1' reads batch\['x1'\], which is missing"):
        model({"x0": torch.randn(5, 4)})


def test_fusion_without_out_dim_where_the_fusion_allows_it():
    """``concat`` has ``out_dim=None`` (no Linear): the head then reads the concatenation."""
    config = soc_config({"name": "concat"})
    model = build_model(config)
    assert model.config["fusion"] == {"name": "concat", "out_dim": None}
    assert model.head.layers[0].in_features == 32  # 16 + 16
    assert model(soc_batch()).logits.shape == (4, 10)


def test_centralnet_model_returns_unimodal_logits_and_the_trainer_adds_their_losses():
    pytest.importorskip("lightning")
    from mmfuse.train.module import TaskModule

    torch.manual_seed(0)
    model = build_model(soc_config({"name": "centralnet", "out_dim": 12, "hidden_dims": [8]}))
    batch = soc_batch()
    out = model(batch)
    v, q = model.encode(batch).values()
    fused = model.fusion.forward_with_aux(v.vec, q.vec)
    torch.testing.assert_close(out.logits, model.head(fused.fused))
    assert len(out.aux_logits) == 2
    for got, unimodal in zip(out.aux_logits, fused.unimodal):
        torch.testing.assert_close(got, model.head(unimodal))  # each modality's own output, same head
    target = batch["answer"]
    ce = torch.nn.functional.cross_entropy
    info = {"task": {"kind": "classification", "num_outputs": 10}, "target_key": "answer"}
    for weight in (1.0, 0.3, 0.0):
        cfg = {"model": {}, "train": {"loss": "auto", "label_smoothing": 0.0, "seed": 0, "aux_loss_weight": weight}}
        loss, size = TaskModule(model, cfg, info).training_loss(batch)
        want = ce(out.logits, target) + weight * sum(ce(a, target) for a in out.aux_logits)
        torch.testing.assert_close(loss, want)
        assert size == 4
    assert build_model(soc_config({"name": "mlb", "out_dim": 12, "hidden_dim": 8}))(batch).aux_logits == ()


def _keypoint_model(**v):
    cfg = {"task": {"kind": "classification", "num_outputs": 6},
           "inputs": {"v": {"encoder": "cnn", "key": "image", "channels": 4, "num_layers": 2, "dim": 8,
                            "group_key": "image_id", "keypoints": 3, "reconstruction_weight": 2.0, **v},
                      "q": {"encoder": "bow", "key": "question_tokens", "mask_key": "question_mask", "vocab_size": 20,
                            "dim": 8, "feed": "vector"}},
           "fusion": {"name": "dan", "out_dim": 8}, "head": {"hidden_dims": [8]}}
    torch.manual_seed(0)
    return build_model(cfg)


def _keypoint_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 1, 1, 2])  # three images, six questions
    return {"image": torch.rand(3, 3, 16, 16, generator=g)[ids], "image_id": ids,
            "question_tokens": torch.randint(1, 20, (6, 5), generator=g), "question_mask": torch.ones(6, 5, dtype=torch.bool),
            "answer": torch.randint(0, 6, (6,), generator=g)}


def test_cnn_reconstruction_loss_reaches_the_trainer_once_per_image():
    pytest.importorskip("lightning")
    from mmfuse.train.module import TaskModule

    model, batch = _keypoint_model().train(), _keypoint_batch()
    enc = model.encoders["v"]
    out = model(batch)
    assert len(out.aux_losses) == 1
    distinct = batch["image"][[0, 2, 5]]  # the group key encodes each image once: the loss is over 3 images
    torch.testing.assert_close(out.aux_losses[0], enc(distinct).aux_loss)
    info = {"task": {"kind": "classification", "num_outputs": 6}, "target_key": "answer"}
    cfg = {"model": {}, "train": {"loss": "auto", "label_smoothing": 0.0, "seed": 0}}
    module = TaskModule(model, cfg, info)
    torch.manual_seed(1)  # the same dropout masks in both
    loss, size = module.training_loss(batch)
    torch.manual_seed(1)
    task = torch.nn.functional.cross_entropy(model(batch).logits, batch["answer"])
    torch.testing.assert_close(loss, task + enc(distinct).aux_loss)
    torch.testing.assert_close(module.last_encoder_loss, enc(distinct).aux_loss.detach())
    assert size == 6
    assert model.eval()(batch).aux_losses == ()  # no loss in evaluation


def test_cnn_reconstruction_only_keeps_the_task_gradient_out_of_the_cnn():
    batch = _keypoint_batch()
    grads = {}
    for only in (False, True):
        model = _keypoint_model(reconstruction_only=only).train()
        out = model(batch)
        torch.nn.functional.cross_entropy(out.logits, batch["answer"]).backward()  # the task loss alone
        enc = model.encoders["v"]
        grads[only] = enc.convs[0].weight.grad
        assert enc.proj[0].weight.grad.abs().sum() > 0  # the projection after the keypoints still learns
        if only:
            model.zero_grad()
            out = model(batch)
            out.aux_losses[0].backward()  # the reconstruction still trains the CNN
            assert enc.convs[0].weight.grad.abs().sum() > 0
    assert grads[False].abs().sum() > 0 and grads[True] is None


def _pixel_model(group_key):
    cfg = {"task": {"kind": "classification", "num_outputs": 6},
           "inputs": {"v": {"encoder": "cnn", "key": "image", "channels": 4, "num_layers": 3, "dim": 8, "group_key": group_key},
                      "q": {"encoder": "bow", "key": "question_tokens", "mask_key": "question_mask", "vocab_size": 20,
                            "dim": 8, "feed": "vector"}},
           "fusion": {"name": "dan", "out_dim": 8}, "head": {"hidden_dims": [8]}}
    torch.manual_seed(0)
    return build_model(cfg).double().eval()


def test_group_key_encodes_each_image_once_with_the_same_result():
    grouped, plain = _pixel_model("image_id"), _pixel_model(None)
    plain.load_state_dict(grouped.state_dict())
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 20, 20, generator=g, dtype=torch.float64)
    ids = torch.tensor([2, 0, 0, 1, 2, 0])
    batch = {"image": images[ids], "image_id": ids, "question_tokens": torch.randint(1, 20, (6, 5), generator=g),
             "question_mask": torch.ones(6, 5, dtype=torch.bool)}
    calls = []
    grouped.encoders["v"].register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    out, ref = grouped(batch), plain(batch)
    assert calls == [3]  # one CNN pass per distinct image
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-12)
    out.logits.square().sum().backward()
    ref.logits.square().sum().backward()
    for (name, p), q in zip(grouped.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    # without the key in the batch, or with every id distinct, rows are encoded one by one
    calls.clear()
    grouped({k: v for k, v in batch.items() if k != "image_id"})
    grouped({**batch, "image_id": torch.arange(6)})
    assert calls == [6, 6]


def test_norm_layer_normalises_each_row_and_the_vector_and_keeps_padding_zero():
    torch.manual_seed(0)
    fusion = {"name": "soft_attention", "out_dim": 12, "hidden_dim": 8}
    normed = build_model(soc_config(fusion, v={**V_REGIONS, "norm": "layer"}, q={**Q_GRU, "norm": "layer"})).double()
    plain = build_model(soc_config(fusion)).double()
    assert set(normed.norms) == {"v", "q"} and len(plain.norms) == 0
    assert not any(k.startswith("norms.") for k in plain.state_dict())  # older checkpoints keep loading
    missing = plain.load_state_dict(normed.state_dict(), strict=False)
    assert sorted(missing.unexpected_keys) == ["norms.q.bias", "norms.q.weight", "norms.v.bias", "norms.v.weight"]
    with torch.no_grad():  # a gain and bias that are not the identity, so the test sees them
        for norm in normed.norms.values():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in soc_batch().items()}
    got, raw = normed.encode(batch), plain.encode(batch)
    for name in ("v", "q"):
        g, w, b = normed.norms[name].weight, normed.norms[name].bias, 1e-5
        def ref(x):  # LayerNorm written out: (x - mean) / sqrt(var + eps) * gain + bias
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            return (x - mu) / torch.sqrt(var + b) * g + w
        mask = raw[name].mask.unsqueeze(-1).double()
        torch.testing.assert_close(got[name].seq, ref(raw[name].seq) * mask)
        torch.testing.assert_close(got[name].vec, ref(raw[name].vec))
    assert (got["v"].seq[-1, -2:] == 0).all()  # the padded regions of the last scene
    out = normed(batch)
    assert_every_parameter_learns(normed, out, batch["answer"])


def test_norm_layer_with_group_key_matches_row_by_row():
    cfg = soc_config({"name": "mlb", "out_dim": 12, "hidden_dim": 8, "dropout_input": 0.0},
                     v={**V_REGIONS, "norm": "layer", "group_key": "image_id"}, q={**Q_GRU, "norm": "layer"})
    torch.manual_seed(0)
    model = build_model(cfg).double().eval()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in soc_batch().items()}
    batch["regions"][1] = batch["regions"][0]
    batch["region_mask"][1] = batch["region_mask"][0]
    grouped = model({**batch, "image_id": torch.tensor([0, 0, 1, 2])}).logits
    torch.testing.assert_close(grouped, model(batch).logits, rtol=0, atol=1e-12)


def test_norm_rejects_an_unknown_value():
    from mmfuse.models import ConfigError
    with pytest.raises(ConfigError, match=r"model\.inputs\.q\.norm.*batch"):
        build_model(soc_config({"name": "mlb", "out_dim": 12}, q={**Q_GRU, "norm": "batch"}))
