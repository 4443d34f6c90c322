"""The LightningModule around a task model: loss by task kind, AdamW + warm-up schedules, metrics.

Losses (``train.loss: auto`` picks by task):

    classification   cross-entropy on class ids (-1 = ignored), optional label smoothing
    multilabel       BCE-with-logits, summed over classes, averaged over samples; the targets are
                     multi-hot (MM-IMDb) or soft VQA scores (VQA v2)
    regression       L1 (auto; MOSI convention) or MSE

Metrics, computed over the whole split from sums that are all-reduced across processes (so N
processes report what one would), logged as ``<split>/<name>`` (``val/accuracy``, ``test/mae``)::

    classification   loss, accuracy, f1_macro (over the classes seen in targets or predictions);
                     Sort-of-CLEVR adds acc_<qtype> (acc_shape ... acc_count), acc_non_relational,
                     acc_relational
    multilabel       loss, f1_micro, f1_macro (threshold 0.5), and on VQA v2 vqa_accuracy: the mean
                     soft score of the arg-max answer (= the official accuracy for in-vocab answers)
    regression       loss, mae, mse, pearson, acc2 (sign agreement, y >= 0 vs y < 0),
                     acc2_nonzero (the same over y != 0)

Dropout is re-seeded from ``(train.seed, epoch, batch index, rank)`` before every training
step, so a resumed run draws the same masks as an uninterrupted one.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError

__all__ = ["TaskModule", "WarmupSchedule", "compute_metrics", "primary_metric"]

_MAX_F1_CLASSES = 4096


def _scaled_groups(model: torch.nn.Module, scales: dict[str, float], lr: float, weight_decay: float) -> list[dict]:
    """Parameter groups with ``lr * scale`` per ``train.lr_scale`` prefix (the longest that matches
    a parameter's name at a dot), weight decay on >= 2-d parameters only, as without scales."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    under = lambda n, k: n == k or n.startswith(k + ".")  # noqa: E731
    unused = [k for k in scales if not any(under(n, k) for n, _ in named)]
    if unused:
        tops = sorted({".".join(n.split(".")[:2]) for n, _ in named})
        raise ConfigError(f"train.lr_scale: no parameter under {unused}; the model's parts include {tops}")
    by_key: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for n, p in named:
        best = max((k for k in scales if under(n, k)), key=len, default=None)
        scale = scales[best] if best is not None else 1.0
        by_key.setdefault((weight_decay if p.dim() >= 2 else 0.0, scale), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr": lr * scale} for (wd, scale), ps in by_key.items()]


class WarmupSchedule:
    """LR factor per optimizer step: linear warm-up to 1, then cosine / linear decay or constant.

    ``factor(s) = (s + 1) / warmup`` for ``s < warmup``; then with ``p = (s - warmup) / (total - warmup)``
    clipped to [0, 1]: cosine ``m + (1 - m) (1 + cos(pi p)) / 2``, linear ``m + (1 - m)(1 - p)``,
    constant ``1``; ``m = min_ratio``. A plain object, so ``LambdaLR.state_dict()`` stores its
    fields (ints, floats, a str) and loads with ``weights_only=True``.
    """

    def __init__(self, warmup_steps: int, total_steps: int, kind: str = "cosine", min_ratio: float = 0.0) -> None:
        if kind not in ("cosine", "linear", "constant"):
            raise ValueError(f"WarmupSchedule: kind must be cosine, linear or constant, got {kind!r}")
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.kind, self.min_ratio = kind, float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(self.total_steps - self.warmup_steps, 1)
        p = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        m = self.min_ratio
        if self.kind == "cosine":
            return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p))
        return m + (1 - m) * (1 - p)


def _seed_generators(seed: int, device: torch.device) -> None:
    """Seed the CPU generator and, for a model on an accelerator, that device's generator.

    ``torch.manual_seed`` would also queue seeds for CUDA, XPU and MTIA, formatting a stack trace
    for each one that is not initialised, far slower than seeding one generator. The generators
    seeded here are the ones the model draws dropout from."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        torch.cuda.default_generators[index].manual_seed(seed)
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)  # mps, xpu: their current device
        (backend.manual_seed if hasattr(backend, "manual_seed") else torch.manual_seed)(seed)


def _adam(cls: type, groups: list[dict[str, Any]], fused: bool = True, **kwargs: Any) -> torch.optim.Optimizer:
    """``cls(groups, **kwargs)``, the fused implementation where this torch has it for the
    parameters' device and dtype (CUDA; the CPU since torch 2.4), else the default one.

    The fused step is one kernel over all tensors: on the CPU it took 0.80 ms per step for the main
    job's LXMERT (85 tensors, 348k parameters) against 3.26 ms for the default per-tensor loop,
    and 0.15-0.30 ms against 0.59-1.52 ms for the other entries (``benchmarks/optimizer_step.py``,
    docs/BENCHMARKS.md). Same update rule, rounding aside. Not with ``16-mixed``: Lightning's
    gradient scaler refuses to clip gradients for an optimizer that unscales them itself.
    """
    if fused:
        try:
            return cls(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):  # this torch / device / dtype has no fused kernel
            pass
    return cls(groups, **kwargs)


def primary_metric(kind: str, soft_targets: bool = False) -> tuple[str, str]:
    """The metric that early stopping and tables watch by default, and its mode."""
    if soft_targets:
        return "vqa_accuracy", "max"
    return {"classification": ("accuracy", "max"), "multilabel": ("f1_micro", "max"),
            "regression": ("mae", "min")}[kind]


def _loss_name(loss: str, kind: str) -> str:
    if loss == "auto":
        return {"classification": "ce", "multilabel": "bce", "regression": "l1"}[kind]
    allowed = {"classification": ("ce",), "multilabel": ("bce",), "regression": ("mse", "l1")}[kind]
    if loss not in allowed:
        raise ConfigError(f"train.loss: {loss!r} does not fit a {kind} task; use one of {list(allowed)} or 'auto'")
    return loss


class _Sums:
    """Named float64 sums over a split; a fixed layout, so ranks can all-reduce one vector."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], device: torch.device) -> None:
        self.values = {k: torch.zeros(s, dtype=torch.float64, device=device) for k, s in shapes.items()}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        self.values[name] += torch.as_tensor(value).detach().to(self.values[name])

    def reduced(self) -> dict[str, torch.Tensor]:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return {k: v.cpu() for k, v in self.values.items()}
        names = list(self.values)
        flat = torch.cat([self.values[k].reshape(-1) for k in names])
        torch.distributed.all_reduce(flat)
        out, start = {}, 0
        for k in names:
            n = self.values[k].numel()
            out[k] = flat[start : start + n].reshape(self.values[k].shape).cpu()
            start += n
        return out


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-12), torch.zeros_like(denom))


def compute_metrics(sums: Mapping[str, torch.Tensor], kind: str, *, soft_targets: bool = False,
                    qtype_names: list[str] | None = None, relational_qtypes: list[int] | None = None) -> dict[str, float]:
    """Metrics from summed statistics (see the module docstring for the names)."""
    count = float(sums["count"])
    div = lambda a, b: float(a) / float(b) if float(b) > 0 else float("nan")  # noqa: E731
    out = {"loss": div(sums["loss_sum"], sums["loss_count"])}
    if kind == "classification":
        out["accuracy"] = div(sums["correct"], count)
        if "tp" in sums:
            tp, fp, fn = sums["tp"], sums["fp"], sums["fn"]
            seen = (tp + fp + fn) > 0
            out["f1_macro"] = float(_f1(tp, fp, fn)[seen].mean()) if bool(seen.any()) else float("nan")
        if qtype_names:
            qc, qn = sums["qtype_correct"], sums["qtype_count"]
            for i, name in enumerate(qtype_names):
                out[f"acc_{name}"] = div(qc[i], qn[i])
            rel = [i for i in (relational_qtypes or []) if i < len(qtype_names)]
            non = [i for i in range(len(qtype_names)) if i not in rel]
            out["acc_non_relational"] = div(qc[non].sum(), qn[non].sum())
            out["acc_relational"] = div(qc[rel].sum(), qn[rel].sum()) if rel else float("nan")
    elif kind == "multilabel":
        tp, fp, fn = sums["tp"], sums["fp"], sums["fn"]
        out["f1_micro"] = float(_f1(tp.sum(), fp.sum(), fn.sum()))
        out["f1_macro"] = float(_f1(tp, fp, fn).mean())
        if soft_targets:
            out["vqa_accuracy"] = div(sums["soft_score"], count)
    else:
        n = float(sums["n_values"])
        out["mae"] = div(sums["abs_err"], n)
        out["mse"] = div(sums["sq_err"], n)
        sx, sy, sxx, syy, sxy = (float(sums[k]) for k in ("sx", "sy", "sxx", "syy", "sxy"))
        var = (n * sxx - sx * sx) * (n * syy - sy * sy)
        out["pearson"] = (n * sxy - sx * sy) / math.sqrt(var) if var > 0 else float("nan")
        out["acc2"] = div(sums["sign_correct"], n)
        out["acc2_nonzero"] = div(sums["nz_correct"], sums["nz_count"])
    return out


class TaskModule(L.LightningModule):
    """Trains and evaluates a task model (``model(batch) -> ModelOutput(logits, attention)``).

    Args:
        model: the task model; ``model.config["task"]`` gives ``kind`` and ``num_outputs``.
        config: the full, validated run config (``train`` is read here; all of it is stored in
            the resume checkpoint as ``hyper_parameters["config"]``).
        info: the data module's ``info`` (target key, soft targets, question types).
    """

    def __init__(self, model: nn.Module, config: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.run_config = dict(config)
        self.train_config = dict(config["train"])
        task = dict(getattr(model, "config", {}).get("task") or config["model"].get("task") or info["task"])
        self.kind = task.get("kind", info["task"]["kind"])
        if self.kind not in ("classification", "multilabel", "regression"):
            raise ConfigError(f"model.task.kind: expected classification, multilabel or regression, got {self.kind!r}")
        self.num_outputs = int(task.get("num_outputs", info["task"]["num_outputs"]))
        self.target_key = info["target_key"]
        self.soft_targets = bool(info.get("soft_targets", False))
        self.qtype_names = list(info.get("qtype_names") or [])
        self.relational_qtypes = list(info.get("relational_qtypes") or [])
        self.loss_name = _loss_name(self.train_config["loss"], self.kind)
        self.metrics: dict[str, dict[str, float]] = {}
        self.train_samples = 0
        self.last_encoder_loss: torch.Tensor | None = None  # the encoders' self-supervised losses, for the log
        self._sums: dict[str, _Sums] = {}
        self.save_hyperparameters({"config": self.run_config}, logger=False)

    # ------------------------------------------------------------------ forward / loss

    def forward(self, batch: Mapping[str, Any]) -> Any:
        return self.model(batch)

    def _logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        out = self.model(batch)
        return self._check_logits(out.logits if hasattr(out, "logits") else out)

    def _check_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[-1] != self.num_outputs:
            raise ValueError(f"TaskModule: expected logits [B, {self.num_outputs}], got {tuple(logits.shape)}")
        return logits

    def _target(self, batch: Mapping[str, Any], logits: torch.Tensor) -> torch.Tensor:
        target = batch[self.target_key]
        if self.kind == "regression":
            return target.to(logits.dtype).reshape(logits.shape)
        if self.kind == "multilabel":
            return target.to(logits.dtype)
        return target.long()

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.loss_name == "ce":
            return F.cross_entropy(logits, target, ignore_index=-1, label_smoothing=self.train_config["label_smoothing"])
        if self.loss_name == "bce":
            return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").sum(-1).mean()
        if self.loss_name == "mse":
            return F.mse_loss(logits, target.float())
        return F.l1_loss(logits, target.float())

    # ------------------------------------------------------------------ training

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed = (self.train_config["seed"] * 1_000_003 + self.current_epoch * 100_003 + batch_idx) * 64 + self.global_rank
        _seed_generators(seed % (2**63 - 1), self.device)

    def training_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        """``(loss, batch size)``: the task loss, plus ``train.aux_loss_weight`` times the losses of
        the model's auxiliary logits where it has them (CentralNet: ``L_c + β Σ_m L_m``), plus the
        encoders' self-supervised losses (logged as ``train/aux_loss``)."""
        out = self.model(batch)
        logits = self._check_logits(out.logits if hasattr(out, "logits") else out)
        target = self._target(batch, logits)
        loss = self._loss(logits, target)
        aux = getattr(out, "aux_logits", ())
        weight = self.train_config.get("aux_loss_weight", 1.0)
        if aux and weight > 0:
            loss = loss + weight * sum(self._loss(self._check_logits(a), target) for a in aux)
        encoder_losses = getattr(out, "aux_losses", ())
        self.last_encoder_loss = None
        if encoder_losses:
            extra = sum(a.float() for a in encoder_losses)
            self.last_encoder_loss = extra.detach()
            loss = loss + extra
        return loss, int(logits.shape[0])

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, size = self.training_loss(batch)
        self.train_samples += size
        if not self._step_logged():
            return loss
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        if self.last_encoder_loss is not None:
            self.log("train/aux_loss", self.last_encoder_loss, on_step=True, on_epoch=False, batch_size=size)
        self.log("train/lr", self._scheduled_lr(), on_step=True, on_epoch=False, batch_size=size)
        return loss

    def _scheduled_lr(self) -> float:
        """``train.lr`` times the schedule's current factor: the rate of the parameters that
        ``train.lr_scale`` leaves alone (each scaled group runs at its multiple of it)."""
        group = self.optimizers().param_groups[0]
        return self.train_config["lr"] * group["lr"] / group.get("initial_lr", group["lr"]) if group["lr"] else 0.0

    def _step_logged(self) -> bool:
        """Whether this step's ``train/*`` values reach anything: the loggers write on every
        ``log_every_n_steps``-th step (Lightning's test, the one its own LearningRateMonitor uses),
        the progress bar shows every step. The other steps skip ``self.log``: with the per-step
        reseed, it was about a quarter of a small leaderboard entry's training time
        (docs/BENCHMARKS.md, "Per-step overhead")."""
        trainer = self._trainer
        if trainer is None or trainer.progress_bar_callback is not None:
            return True
        connector = getattr(trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.train_config
        scales = t.get("lr_scale") or {}
        if scales:
            groups = _scaled_groups(self.model, scales, t["lr"], t["weight_decay"])
        else:
            decay, no_decay = [], []
            for p in self.model.parameters():
                if p.requires_grad:
                    (decay if p.dim() >= 2 else no_decay).append(p)
            groups = [g for g in ({"params": decay, "weight_decay": t["weight_decay"]},
                                  {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        if t["optimizer"] in ("adamw", "adam"):
            cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
            opt = _adam(cls, groups, lr=t["lr"], betas=tuple(t["betas"]),
                        fused=str(t.get("precision", "32")) != "16-mixed")
        else:
            opt = torch.optim.SGD(groups, lr=t["lr"], momentum=t["momentum"])
        schedule = WarmupSchedule(t["warmup_steps"], self._total_steps(), t["schedule"], t["min_lr_ratio"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def _total_steps(self) -> int:
        """Optimizer steps of the whole run, for the LR schedule.

        Counted from the data module rather than with ``trainer.estimated_stepping_batches``:
        that property builds the train loader early, before a resume has restored the loops,
        and Lightning then never hands the loader its saved position.
        """
        trainer = self.trainer
        count = getattr(trainer.datamodule, "train_batches_per_epoch", None)
        if count is None:
            return int(trainer.estimated_stepping_batches)
        per_epoch = math.ceil(count() / max(trainer.accumulate_grad_batches, 1))
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        total = per_epoch * max_epochs if max_epochs > 0 else None
        if trainer.max_steps > 0:
            total = trainer.max_steps if total is None else min(total, trainer.max_steps)
        return max(int(total or 1), 1)

    # ------------------------------------------------------------------ evaluation

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"loss_sum": (), "loss_count": (), "count": ()}
        c = self.num_outputs
        if self.kind == "classification":
            shapes["correct"] = ()
            if c <= _MAX_F1_CLASSES:
                shapes.update(tp=(c,), fp=(c,), fn=(c,))
            if self.qtype_names:
                shapes.update(qtype_correct=(len(self.qtype_names),), qtype_count=(len(self.qtype_names),))
        elif self.kind == "multilabel":
            shapes.update(tp=(c,), fp=(c,), fn=(c,), soft_score=())
        else:
            for k in ("n_values", "abs_err", "sq_err", "sx", "sy", "sxx", "syy", "sxy", "sign_correct", "nz_correct", "nz_count"):
                shapes[k] = ()
        return shapes

    def _start(self, stage: str) -> None:
        self._sums[stage] = _Sums(self._shapes(), self.device)

    def _update(self, stage: str, batch: Mapping[str, Any]) -> None:
        logits = self._logits(batch)
        target = self._target(batch, logits)
        loss = self._loss(logits, target)
        s = self._sums[stage]
        b = int(logits.shape[0])
        s.add("count", b)
        if self.kind == "classification":
            valid = target >= 0
            n_valid = int(valid.sum())
            s.add("loss_sum", loss.double() * n_valid)
            s.add("loss_count", n_valid)
            pred = logits.argmax(-1)
            right = (pred == target) & valid
            s.add("correct", right.sum())
            if "tp" in s.values:
                c = self.num_outputs
                t_valid = target[valid]
                s.add("tp", torch.bincount(pred[right], minlength=c)[:c])
                s.add("fp", torch.bincount(pred[~right], minlength=c)[:c])
                s.add("fn", torch.bincount(t_valid[pred[valid] != t_valid], minlength=c)[:c])
            if self.qtype_names and "qtype" in batch:
                qt = batch["qtype"].long()
                k = len(self.qtype_names)
                s.add("qtype_correct", torch.bincount(qt[right], minlength=k)[:k])
                s.add("qtype_count", torch.bincount(qt, minlength=k)[:k])
        elif self.kind == "multilabel":
            s.add("loss_sum", loss.double() * b)
            s.add("loss_count", b)
            pred = logits > 0
            truth = target > 0.5
            s.add("tp", (pred & truth).sum(0))
            s.add("fp", (pred & ~truth).sum(0))
            s.add("fn", (~pred & truth).sum(0))
            s.add("soft_score", target.gather(1, logits.argmax(-1, keepdim=True)).sum())
        else:
            s.add("loss_sum", loss.double() * b)
            s.add("loss_count", b)
            p, y = logits.double().reshape(-1), target.double().reshape(-1)
            err = p - y
            s.add("n_values", y.numel())
            s.add("abs_err", err.abs().sum())
            s.add("sq_err", (err * err).sum())
            s.add("sx", p.sum())
            s.add("sy", y.sum())
            s.add("sxx", (p * p).sum())
            s.add("syy", (y * y).sum())
            s.add("sxy", (p * y).sum())
            s.add("sign_correct", ((p >= 0) == (y >= 0)).sum())
            nz = y != 0
            s.add("nz_count", nz.sum())
            s.add("nz_correct", ((p[nz] >= 0) == (y[nz] >= 0)).sum())

    def _finish(self, stage: str) -> dict[str, float]:
        sums = self._sums.pop(stage).reduced()
        metrics = compute_metrics(sums, self.kind, soft_targets=self.soft_targets, qtype_names=self.qtype_names,
                                  relational_qtypes=self.relational_qtypes)
        metrics = {f"{stage}/{k}": v for k, v in metrics.items()}
        with warnings.catch_warnings():  # values are already reduced over ranks: no sync needed
            warnings.filterwarnings("ignore", ".*sync_dist=True.*")
            for name, value in metrics.items():
                self.log(name, value, on_step=False, on_epoch=True, prog_bar=name.endswith(("accuracy", "mae")),
                         sync_dist=False, rank_zero_only=False)
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._start("val")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._update("val", batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self._finish("val")
        if not self.trainer.sanity_checking:
            self.metrics["val"] = metrics

    def on_test_epoch_start(self) -> None:
        self._start("test")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._update("test", batch)

    def on_test_epoch_end(self) -> None:
        self.metrics["test"] = self._finish("test")
