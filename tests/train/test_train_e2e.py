"""Tiny end-to-end runs per task kind, ``evaluate``, metrics against references, schedules."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import train_helpers as h
from mmfuse.train import ConfigError, evaluate, load, train
from mmfuse.train.module import WarmupSchedule, compute_metrics


def run(tmp_path, config):
    result = train(config, run_dir=tmp_path / "run")
    for name, value in result.metrics.items():
        assert isinstance(value, float), name
    return result


def check_saved(result):
    folder = result.checkpoint
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "metrics.json", "info.json"}
    assert json.loads((folder / "metrics.json").read_text()) == pytest.approx(result.metrics, nan_ok=True)
    assert (result.run_dir / "last.ckpt").is_file()
    assert (result.run_dir / "csv" / "metrics.csv").is_file()
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert result.seconds > 0 and result.samples_per_s > 0 and result.params > 0


def test_sort_of_clevr_regions_classification(tmp_path):
    cfg = h.tiny_config("sort-of-clevr")
    cfg["train"]["early_stopping"] = {"patience": 3}
    result = run(tmp_path, cfg)
    check_saved(result)
    m = result.metrics
    names = ["shape", "left", "top", "closest", "furthest", "count", "non_relational", "relational"]
    assert all(f"test/acc_{n}" in m for n in names)
    assert 0.0 <= m["test/accuracy"] <= 1.0 and math.isfinite(m["test/loss"])
    # overall accuracy is the question-weighted mean of the two kinds (2 + 2 questions per image)
    assert m["test/accuracy"] == pytest.approx((m["test/acc_relational"] + m["test/acc_non_relational"]) / 2)
    saved = json.loads((result.checkpoint / "config.json").read_text())
    assert saved["model"]["inputs"]["v"]["in_dim"] == 10  # 'auto' was filled from the data
    assert list(saved["model"]["inputs"]) == ["v", "q"]  # the fusion's input order is kept
    assert evaluate(result.checkpoint) == pytest.approx({k: v for k, v in m.items() if k.startswith("test/")})


def test_interactions_classification_learns(tmp_path):
    cfg = h.tiny_config("interactions")  # order 1: additive, learnable by any fusion
    cfg["train"].update(max_epochs=3, lr=1e-2)
    result = run(tmp_path, cfg)
    check_saved(result)
    assert result.metrics["test/accuracy"] > 0.75
    assert evaluate(result.run_dir, split="val") == pytest.approx({k: v for k, v in result.metrics.items() if k.startswith("val/")})


def test_max_minutes_stops_training_and_still_tests(tmp_path):
    cfg = h.tiny_config("interactions")
    cfg["train"].update(max_epochs=200, max_minutes=1e-6)  # the budget is spent after the first step
    result = run(tmp_path, cfg)
    steps = json.loads((result.run_dir / "run.json").read_text())["global_step"]
    full = run(tmp_path / "full", {**cfg, "train": {**cfg["train"], "max_epochs": 2, "max_minutes": None}})
    full_steps = json.loads((full.run_dir / "run.json").read_text())["global_step"]
    assert 1 <= steps < full_steps  # 200 epochs were asked for; the time budget ended fit early
    assert math.isfinite(result.metrics["test/loss"])  # and the test split was still evaluated


def test_mosi_regression(tmp_path):
    cfg = h.tiny_config("mosi", path=str(h.write_mosi(tmp_path / "mosi.pkl")))
    result = run(tmp_path, cfg)
    m = result.metrics
    assert {"test/mae", "test/mse", "test/pearson", "test/acc2", "test/acc2_nonzero"} <= set(m)
    assert m["test/loss"] == pytest.approx(m["test/mae"], rel=1e-5)  # L1 loss by default
    other = tmp_path / "other.pkl"
    h.write_mosi(other, seed=5)
    moved = evaluate(result.checkpoint, {"path": str(other)})
    assert moved.keys() == {k for k in m if k.startswith("test/")} and moved != {k: m[k] for k in moved}


def test_mmimdb_multilabel(tmp_path):
    path, splits = h.write_mmimdb(tmp_path / "mm.hdf5")
    result = run(tmp_path, h.tiny_config("mmimdb", path=str(path), splits=splits))
    assert {"test/f1_micro", "test/f1_macro", "val/f1_micro"} <= set(result.metrics)


def test_vqa2_soft_targets(tmp_path):
    root = h.write_vqa(tmp_path / "vqa")
    result = run(tmp_path, h.tiny_config("vqa2", path=str(root), feature_dim=8, max_boxes=6))
    assert 0.0 <= result.metrics["test/vqa_accuracy"] <= 1.0
    info = json.loads((result.checkpoint / "info.json").read_text())
    assert info["answer_vocab"] and info["word_vocab"][:2] == ["<pad>", "<unk>"]


def test_image_folder_from_pixels(tmp_path):
    result = run(tmp_path, h.tiny_config("image-folder", path=str(h.write_image_folder(tmp_path / "img"))))
    assert "test/accuracy" in result.metrics


def test_incompatible_model_config_stops_before_training(tmp_path):
    cfg = h.tiny_config("interactions")
    cfg["model"]["inputs"]["a"]["in_dim"] = 5  # the data has 4 features
    with pytest.raises(ConfigError, match=r"^model\.inputs\.a\.in_dim: 5, but"):
        train(cfg, run_dir=tmp_path / "run")
    cfg = h.tiny_config("interactions")
    cfg["model"]["inputs"]["a"]["key"] = "x7"
    with pytest.raises(ConfigError, match=r"^model\.inputs\.a\.key: the interactions batches have no 'x7'"):
        train(cfg, run_dir=tmp_path / "run")
    cfg = h.tiny_config("interactions")
    cfg["model"]["task"] = {"kind": "classification", "num_outputs": 3}
    with pytest.raises(ConfigError, match=r"^model\.task\.num_outputs"):
        train(cfg, run_dir=tmp_path / "run")
    cfg = h.tiny_config("sort-of-clevr")  # region batches carry no image ids to group by
    cfg["model"]["inputs"]["v"]["group_key"] = "image_id"
    with pytest.raises(ConfigError, match=r"^model\.inputs\.v\.group_key: the sort-of-clevr batches have no 'image_id'"):
        train(cfg, run_dir=tmp_path / "run")
    cfg = h.tiny_config("interactions")
    cfg["train"]["early_stopping"] = {"monitor": "val/mae"}
    with pytest.raises(ConfigError, match=r"^train\.early_stopping\.monitor"):
        train(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_unknown_fusion_is_named(tmp_path, models):
    if models != "real":
        pytest.skip("the stand-in model does not check fusion names")
    cfg = h.tiny_config("interactions")
    cfg["model"]["fusion"]["name"] = "mbl"
    with pytest.raises(ValueError, match=r"model\.fusion\.name"):
        train(cfg, run_dir=tmp_path / "run")


def test_resume_refuses_a_different_config(tmp_path):
    cfg = h.tiny_config("interactions")
    cfg["train"]["max_epochs"] = 1
    train(cfg, run_dir=tmp_path / "run")
    cfg["data"]["batch_size"] = 8
    with pytest.raises(ConfigError, match=r"^data\.batch_size: .*last\.ckpt was written by a run with 16"):
        train(cfg, run_dir=tmp_path / "run")


def test_rerunning_a_finished_run_resumes_without_training(tmp_path):
    cfg = h.tiny_config("interactions")
    cfg["train"]["max_epochs"] = 1
    first = train(cfg, run_dir=tmp_path / "run")
    again = train(cfg, run_dir=tmp_path / "run")
    assert again.start_step > 0 and again.samples_per_s == 0.0
    assert again.metrics == pytest.approx(first.metrics)


# ----------------------------------------------------------------------------- metrics


def _sums(kind, logits, target, qtype=None, names=None, soft=False):
    """Run a TaskModule's accumulation on one batch and return the metrics."""
    from mmfuse.train.module import TaskModule

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = {"task": {"kind": kind, "num_outputs": logits.shape[1]}}

        def forward(self, batch):
            return h.ModelOutput(batch["logits"])

    info = {"task": {"kind": kind, "num_outputs": logits.shape[1]}, "target_key": "y", "soft_targets": soft,
            "qtype_names": names, "relational_qtypes": [1] if names else None}
    cfg = {"model": {}, "train": {"loss": "auto", "label_smoothing": 0.0, "seed": 0}}
    module = TaskModule(Fixed(), cfg, info)
    module._start("test")
    batch = {"logits": logits, "y": target}
    if qtype is not None:
        batch["qtype"] = qtype
    module._update("test", batch)
    sums = module._sums["test"].reduced()
    return compute_metrics(sums, kind, soft_targets=soft, qtype_names=names, relational_qtypes=info["relational_qtypes"])


def test_classification_metrics_against_numpy():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(50, 4)))
    target = torch.from_numpy(rng.integers(0, 4, 50))
    qtype = torch.from_numpy(rng.integers(0, 2, 50))
    m = _sums("classification", logits, target, qtype, ["a", "b"])
    pred = logits.argmax(1).numpy()
    y = target.numpy()
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["acc_a"] == pytest.approx((pred == y)[qtype.numpy() == 0].mean())
    assert m["acc_relational"] == pytest.approx(m["acc_b"])
    f1s = []
    for c in sorted(set(y) | set(pred)):
        tp, fp, fn = ((pred == c) & (y == c)).sum(), ((pred == c) & (y != c)).sum(), ((pred != c) & (y == c)).sum()
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert m["f1_macro"] == pytest.approx(np.mean(f1s))
    assert m["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item())


def test_multilabel_and_vqa_metrics():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-1.0, 1.0, -2.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.9, 0.3]])
    m = _sums("multilabel", logits, target, soft=True)
    # predictions: {0, 2} and {1}; truths (> 0.5): {0} and {1} -> tp 2, fp 1, fn 0
    assert m["f1_micro"] == pytest.approx(2 * 2 / (2 * 2 + 1))
    assert m["f1_macro"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert m["vqa_accuracy"] == pytest.approx((1.0 + 0.9) / 2)


def test_regression_metrics_against_numpy():
    rng = np.random.default_rng(1)
    pred = rng.normal(size=40)
    y = np.round(pred + rng.normal(scale=0.5, size=40), 1)
    y[:3] = 0.0
    m = _sums("regression", torch.from_numpy(pred[:, None]), torch.from_numpy(y))
    assert m["mae"] == pytest.approx(np.abs(pred - y).mean())
    assert m["mse"] == pytest.approx(((pred - y) ** 2).mean())
    assert m["pearson"] == pytest.approx(np.corrcoef(pred, y)[0, 1])
    assert m["acc2"] == pytest.approx(((pred >= 0) == (y >= 0)).mean())
    nz = y != 0
    assert m["acc2_nonzero"] == pytest.approx(((pred[nz] >= 0) == (y[nz] >= 0)).mean())


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_warmup_schedule(kind):
    s = WarmupSchedule(4, 20, kind, min_ratio=0.1)
    assert [s(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s(4) == pytest.approx(1.0)
    assert s(20) == pytest.approx(1.0 if kind == "constant" else 0.1)
    if kind == "cosine":
        assert s(12) == pytest.approx(0.1 + 0.9 * 0.5)
    if kind == "linear":
        assert s(12) == pytest.approx(0.1 + 0.9 * 0.5)
    values = [s(i) for i in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def _has_cpu_fused_adam() -> bool:
    try:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("cls", [torch.optim.AdamW, torch.optim.Adam])
def test_fused_adam_takes_the_steps_of_the_default_one(cls):
    """_adam picks the fused kernel where torch has it (the CPU since 2.4) and it follows the same
    update rule as the per-tensor loop: ten steps with weight decay, two groups, agree to rounding."""
    from mmfuse.train.module import _adam

    torch.manual_seed(0)
    init = [torch.randn(5, 3), torch.randn(3), torch.randn(4, 4)]
    grads = [[torch.randn_like(p) for p in init] for _ in range(10)]
    finals = []
    for fused in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in init]
        groups = [{"params": [params[0], params[2]], "weight_decay": 0.1}, {"params": [params[1]], "weight_decay": 0.0}]
        opt = _adam(cls, groups, fused=fused, lr=1e-2, betas=(0.9, 0.99))
        assert bool(opt.defaults.get("fused")) == (fused and _has_cpu_fused_adam())
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        finals.append([p.detach().clone() for p in params])
    for a, b, p0 in zip(*finals, init):
        assert not torch.equal(a, p0)  # the steps moved the weights
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_adam_falls_back_where_torch_has_no_kernel(monkeypatch):
    from mmfuse.train import module

    calls = []

    class NoFused(torch.optim.AdamW):
        def __init__(self, params, fused=None, **kw):
            calls.append(fused)
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
            super().__init__(params, **kw)

    opt = module._adam(NoFused, [{"params": [torch.nn.Parameter(torch.zeros(2))]}], lr=1e-3)
    assert calls == [True, None] and isinstance(opt, NoFused)
    calls.clear()
    module._adam(NoFused, [{"params": [torch.nn.Parameter(torch.zeros(2))]}], fused=False, lr=1e-3)
    assert calls == [None]  # 16-mixed asks for the default one directly


def test_loaded_model_runs_in_eval_mode(tmp_path):
    cfg = h.tiny_config("interactions")
    cfg["train"]["max_epochs"] = 1
    result = train(cfg, run_dir=tmp_path / "run")
    model = load(result.checkpoint)
    assert not model.training


def test_lightnings_litlogger_advert_is_not_printed(tmp_path):
    """Lightning's rank-zero messages still come through, its "try litlogger" tip does not."""
    import logging

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler, level = Collect(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        cfg = h.tiny_config("interactions")
        cfg["train"]["max_epochs"] = 1
        train(cfg, run_dir=tmp_path / "run")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert any("GPU available" in m for m in seen), seen  # the handler does see Lightning's messages
    assert not any("litlogger" in m for m in seen), seen


def test_lr_scale_groups_parameters_by_prefix():
    """train.lr_scale: the longest prefix at a dot wins, decay stays on >= 2-d parameters, the
    unscaled rest keeps lr, and a prefix that names no parameter is refused."""
    from mmfuse.train.module import _scaled_groups

    model = torch.nn.ModuleDict({
        "enc": torch.nn.ModuleDict({"a": torch.nn.Linear(2, 3), "ab": torch.nn.Linear(3, 3)}),
        "head": torch.nn.Linear(3, 1),
    })
    groups = _scaled_groups(model, {"enc": 0.5, "enc.a": 0.1}, lr=1e-3, weight_decay=0.01)
    got = {(g["lr"], g["weight_decay"]): {id(p) for p in g["params"]} for g in groups}
    ids = lambda *ps: {id(p) for p in ps}  # noqa: E731
    assert got[(1e-3 * 0.1, 0.01)] == ids(model["enc"]["a"].weight)
    assert got[(1e-3 * 0.1, 0.0)] == ids(model["enc"]["a"].bias)
    assert got[(1e-3 * 0.5, 0.01)] == ids(model["enc"]["ab"].weight)  # "enc.a" is not a prefix of "enc.ab"
    assert got[(1e-3, 0.01)] == ids(model["head"].weight) and got[(1e-3, 0.0)] == ids(model["head"].bias)
    with pytest.raises(ConfigError, match=r"no parameter under \['enc.c'\]"):
        _scaled_groups(model, {"enc.c": 2.0}, lr=1e-3, weight_decay=0.0)


def test_lr_scale_config_and_override():
    from mmfuse.train.config import _validate_train as validate_train
    from mmfuse.train.config import apply_overrides

    cfg = apply_overrides({"train": {}}, ["train.lr_scale.encoders.v=0.5", "train.lr_scale.fusion=2"])
    assert validate_train(cfg["train"])["lr_scale"] == {"encoders.v": 0.5, "fusion": 2.0}
    assert validate_train({"lr_scale": {"head": 1}})["lr_scale"] == {"head": 1.0}
    for bad in ({"head": 0}, {"head": "x"}, [0.5]):
        with pytest.raises(ConfigError, match="train.lr_scale"):
            validate_train({"lr_scale": bad})


def test_step_seeding_draws_what_torch_manual_seed_draws():
    """The per-step reseed touches only the model's generators; on the CPU its dropout masks are
    the ones ``torch.manual_seed`` gives (so resumed runs and older runs draw the same)."""
    from mmfuse.train.module import _seed_generators

    torch.manual_seed(1234)
    want = torch.nn.functional.dropout(torch.ones(64), 0.5)
    torch.manual_seed(7)
    _seed_generators(1234, torch.device("cpu"))
    got = torch.nn.functional.dropout(torch.ones(64), 0.5)
    assert torch.equal(got, want)
    _seed_generators(1235, torch.device("cpu"))
    assert not torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5), want)


def test_train_values_are_logged_only_where_something_reads_them(tmp_path, monkeypatch):
    """Without a progress bar, ``train/loss`` and ``train/lr`` go through ``self.log`` on the
    loggers' steps only (every ``log_every_n_steps``-th), and the CSV log holds the same rows as
    when every step logged. With the bar, every step logs (the bar shows the last value)."""
    import csv

    from mmfuse.train.module import TaskModule

    calls: list[str] = []
    original = TaskModule.log

    def counting(self, name, *args, **kwargs):
        calls.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(TaskModule, "log", counting)
    logged, n_calls = {}, {}
    for bar in (True, False):
        calls.clear()
        cfg = h.tiny_config("interactions")
        cfg["train"].update(max_epochs=2, log_every_n_steps=3, progress_bar=bar)
        result = train(cfg, run_dir=tmp_path / f"run_{bar}")
        with open(result.run_dir / "csv" / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
        logged[bar] = {int(r["step"]): (float(r["train/loss"]), float(r["train/lr"])) for r in rows}
        n_calls[bar] = calls.count("train/loss")
        assert calls.count("train/lr") == n_calls[bar]
    steps = sorted(logged[False])
    assert len(steps) >= 3 and all((s + 1) % 3 == 0 for s in steps), steps
    assert sorted(logged[True]) == steps
    for s in steps:
        assert logged[False][s] == pytest.approx(logged[True][s], rel=1e-5)
    assert n_calls[False] == len(steps)
    assert n_calls[True] >= 3 * len(steps)  # every step


def test_logged_lr_is_the_unscaled_rate_under_lr_scale(tmp_path):
    """``train/lr`` is ``train.lr`` times the schedule, whatever ``train.lr_scale`` does to the
    groups (here every parameter runs at a quarter of it)."""
    import csv

    def logged_lr(cfg, name):
        result = train(cfg, run_dir=tmp_path / name)
        with open(result.run_dir / "csv" / "metrics.csv") as f:
            return result, {int(r["step"]): float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr")}

    cfg = h.tiny_config("interactions")
    cfg["train"].update(max_epochs=1, warmup_steps=3)
    plain, want = logged_lr(cfg, "plain")
    tops = sorted({n.split(".")[0] for n, _ in load(plain.checkpoint).named_parameters()})
    cfg["train"]["lr_scale"] = {t: 0.25 for t in tops}
    _, got = logged_lr(cfg, "scaled")
    assert len(want) >= 3 and got == pytest.approx(want)
    assert want[0] == pytest.approx(cfg["train"]["lr"] / 3)  # warm-up step 1 of 3
