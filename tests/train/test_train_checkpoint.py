"""Safe checkpoints: safetensors round trip, no unpickling in ``load``, atomic writes, resume state."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

import train_helpers as h
from mmfuse.train import build_datamodule, load, load_config, save_model, train
from mmfuse.train import _model
from mmfuse.train.checkpoint import model_folder
from mmfuse.train.resume import AtomicCheckpointIO, read_resume_state


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Sort-of-CLEVR model, trained for one epoch."""
    import pytest as _pytest

    mp = _pytest.MonkeyPatch()
    h.use_standin_if_needed(mp)
    cfg = h.tiny_config("sort-of-clevr")
    cfg["train"].update(max_epochs=1, checkpoint_every_n_steps=3)
    result = train(cfg, run_dir=tmp_path_factory.mktemp("ckpt") / "run")
    yield result
    mp.undo()


def test_safetensors_round_trip_gives_identical_outputs(trained):
    cfg = load_config(json.loads((trained.checkpoint / "config.json").read_text()))
    dm = build_datamodule(cfg["data"])
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    first, second = load(trained.checkpoint), load(trained.checkpoint)
    assert first is not second
    with torch.no_grad():
        assert torch.equal(first(batch).logits, second(batch).logits)
    rebuilt = _model.build_model(cfg["model"])  # fresh weights differ ...
    with torch.no_grad():
        assert not torch.equal(rebuilt(batch).logits, first(batch).logits)
    state = first.state_dict()
    for k, v in rebuilt.state_dict().items():  # ... and the saved ones are loaded in full
        assert v.shape == state[k].shape


def test_load_never_unpickles(trained, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during mmfuse load")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = load(trained.checkpoint)
    assert sum(p.numel() for p in model.parameters()) == trained.params


def test_load_accepts_the_run_folder_and_files_in_the_model_folder(trained):
    assert model_folder(trained.run_dir) == trained.checkpoint
    assert model_folder(trained.checkpoint / "config.json") == trained.checkpoint


def test_load_rejects_mismatched_weights(trained, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(trained.checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["head"]["hidden_dims"] = [7]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match"):
        load(copy)
    (copy / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="safetensors"):
        load(copy)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an mmfuse model folder"):
        load(tmp_path / "empty")


def test_save_model_replaces_the_folder_atomically(trained, tmp_path):
    model = load(trained.checkpoint)
    config = json.loads((trained.checkpoint / "config.json").read_text())
    target = tmp_path / "saved"
    save_model(model, config, target, {"test/accuracy": 0.5})
    save_model(model, config, target)  # again: the old folder is replaced, no metrics this time
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folders left"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not mmfuse model files"):
        save_model(model, config, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_save_model_handles_tied_weights(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = torch.nn.Linear(3, 3)
            self.b.weight = self.a.weight
            self.config = {"kind": "tied"}

    save_model(Tied(), {"model": {}}, tmp_path / "tied")
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "tied" / "model.safetensors"))
    assert torch.equal(state["a.weight"], state["b.weight"])


def test_resume_state_loads_with_weights_only(trained):
    state = read_resume_state(trained.run_dir / "last.ckpt")  # torch.load(weights_only=True)
    assert state["global_step"] > 0
    assert state["hyper_parameters"]["config"]["data"]["name"] == "sort-of-clevr"
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0] == {"epoch": 0, "batches": state["global_step"]}
    assert state["lr_schedulers"][0]["lr_lambdas"][0]["kind"] == "cosine"
    assert {"optimizer_states", "callbacks", "state_dict"} <= set(state)


def test_read_resume_state_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="not a readable resume checkpoint"):
        read_resume_state(path)


def test_atomic_checkpoint_io_writes_next_to_the_target(tmp_path, monkeypatch):
    import os

    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.path.dirname(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, tmp_path / "last.ckpt")
    assert seen == [(str(tmp_path), str(tmp_path / "last.ckpt"))]
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")["w"], torch.ones(2))
