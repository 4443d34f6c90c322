"""MFAS: progressive fusion-architecture search with a surrogate model.

Papers: Pérez-Rúa, Vielzeuf, Pateux, Baccouche & Jurie, "MFAS: Multimodal Fusion Architecture
Search", CVPR 2019; Liu et al., "Progressive Neural Architecture Search", ECCV 2018 (PNAS).

The unimodal backbones are trained first and frozen (:mod:`mmfuse.search.backbones`), so every
configuration trains only its fusion layers and classifier on cached features: a few seconds
on a CPU. The search (:func:`search`) follows MFAS's sequential model-based optimisation:

1. ``E`` iterations; each grows configurations from ``L = 1`` to ``max_layers``.
2. Step ``L``: the candidates are every one-layer configuration (``L = 1``), or the ``expand_top``
   best configurations of length ``L - 1`` seen so far, each followed by every possible layer.
   Candidates already evaluated are dropped.
3. Until the surrogate has data, ``K`` candidates are drawn uniformly; afterwards ``K`` are drawn
   without replacement with probabilities ``softmax(z / T)``, z the surrogate's predictions
   standardised over the candidates, ``T`` the temperature, lowered geometrically from
   ``temperature_start`` to ``temperature_end`` over the ``E * max_layers`` steps.
4. Each drawn configuration is trained briefly and scored (validation accuracy), logged, and
   the surrogate is refitted on every score so far.

The search stops at its budget (configurations and / or minutes). Every evaluation is appended
to a JSON-lines log, one whole line per ``write`` on an ``O_APPEND`` descriptor followed by
``fsync``; a rerun on the same log replays the search, reading every logged configuration's
score instead of training it again, so a killed search resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import make_activation
from .space import Configuration, SearchSpace
from .surrogate import Surrogate

__all__ = [
    "FusionNet",
    "SearchLog",
    "SearchSettings",
    "SearchResult",
    "Evaluation",
    "train_fusion",
    "evaluate_accuracy",
    "search",
    "random_search",
    "config_seed",
]

Features = Sequence[Sequence[Tensor]]  # features[m][i]: Tensor[N, D_{m,i}], layer i of backbone m


class FusionNet(nn.Module):
    """The fusion network of one MFAS configuration, plus its classifier.

    Layer l reads ``f^m_{i_{l,m}}`` (layer ``i_{l,m}`` of backbone m) for every modality and the
    previous fusion state ``h_{l-1}`` (absent for l = 1)::

        concat:        h_l = σ_l(W_l [f^1; ..; f^M; h_{l-1}] + b_l)
        weighted_sum:  h_l = σ_l(Σ_m α_{l,m} (P_{l,m} f^m + b_{l,m}) + α_{l,h} h_{l-1})

    α are free learned scalars (starting at ``1 / terms``); logits ``= W_c h_L + b_c``.

    Args:
        space: the search space; config: the configuration to build.
        feature_dims: ``feature_dims[m][i]`` = width of layer i of backbone m.
        hidden_dim: width of every ``h_l``; num_classes: C.

    Shapes: ``forward(features)`` with ``features[m][i]`` a ``Tensor[B, D_{m,i}]`` (entries
    the configuration does not read may be ``None``) -> ``Tensor[B, C]``.
    """

    def __init__(
        self,
        space: SearchSpace,
        config: Configuration,
        feature_dims: Sequence[Sequence[int]],
        hidden_dim: int,
        num_classes: int,
    ):
        super().__init__()
        self.config = space.check(config)
        if len(feature_dims) != space.num_modalities or any(
            len(d) != n for d, n in zip(feature_dims, space.num_feature_layers)
        ):
            raise ValueError(
                f"FusionNet: feature_dims must give {space.num_feature_layers} layer widths per modality, "
                f"got {[len(d) for d in feature_dims]}"
            )
        self.hidden_dim = hidden_dim
        self.blocks = nn.ModuleList()
        self.activations = nn.ModuleList()
        self.alphas = nn.ParameterDict()  # layer index -> α of a weighted-sum layer
        for l, layer in enumerate(self.config):
            dims = [feature_dims[m][i] for m, i in enumerate(layer.feature_layers)]
            if layer.combine == "concat":
                self.blocks.append(nn.Linear(sum(dims) + (hidden_dim if l else 0), hidden_dim))
            else:
                self.blocks.append(nn.ModuleList(nn.Linear(d, hidden_dim) for d in dims))
                terms = len(dims) + (1 if l else 0)
                self.alphas[str(l)] = nn.Parameter(torch.full((terms,), 1.0 / terms))
            self.activations.append(make_activation(layer.activation, "FusionNet"))
        self.classifier = nn.Linear(hidden_dim, num_classes)

    @property
    def reads(self) -> list[tuple[int, int]]:
        """The ``(modality, layer)`` features this configuration reads."""
        return sorted({(m, i) for layer in self.config for m, i in enumerate(layer.feature_layers)})

    def forward(self, features: Features) -> Tensor:
        h: Tensor | None = None
        for l, (layer, block, act) in enumerate(zip(self.config, self.blocks, self.activations)):
            xs = [features[m][i] for m, i in enumerate(layer.feature_layers)]
            if layer.combine == "concat":
                z = block(torch.cat(xs if h is None else [*xs, h], dim=-1))
            else:
                alpha = self.alphas[str(l)]
                z = sum(alpha[m] * proj(x) for m, (proj, x) in enumerate(zip(block, xs)))
                if h is not None:
                    z = z + alpha[-1] * h
            h = act(z)
        return self.classifier(h)


def _select(features: Features, rows: Tensor, reads: Sequence[tuple[int, int]]) -> list[list[Tensor | None]]:
    out: list[list[Tensor | None]] = [[None] * len(f) for f in features]
    for m, i in reads:
        out[m][i] = features[m][i][rows]
    return out


@torch.no_grad()
def evaluate_accuracy(model: FusionNet, features: Features, labels: Tensor, batch_size: int = 2048) -> float:
    """Accuracy of ``model`` on cached features."""
    model.eval()
    n = labels.shape[0]
    correct = 0
    for rows in torch.arange(n).split(batch_size):
        correct += int((model(_select(features, rows, model.reads)).argmax(-1) == labels[rows]).sum())
    return correct / max(1, n)


def train_fusion(
    model: FusionNet,
    features: Features,
    labels: Tensor,
    *,
    epochs: int,
    lr: float = 3e-3,
    batch_size: int = 128,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> FusionNet:
    """Train ``model`` (fusion layers + classifier) on frozen features with AdamW and a cosine schedule."""
    n = labels.shape[0]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    reads = model.reads
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(n, generator=g).split(batch_size):
            loss = F.cross_entropy(model(_select(features, rows, reads)), labels[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def config_seed(key: str, seed: int) -> int:
    """A training seed from a configuration key and the search seed (stable across runs and machines)."""
    h = 0
    for ch in f"{seed}|{key}":
        h = (h * 1_000_003 + ord(ch)) % (2**31 - 1)
    return h


# --------------------------------------------------------------------------- the log


class SearchLog:
    """Append-only JSON-lines log of a search: a header line, then one line per evaluation.

    ``{"type": "header", "fingerprint": {...}}`` identifies the search (space, task, training
    settings); a rerun with a different fingerprint raises ``ValueError`` instead of mixing
    scores. Evaluation lines: ``{"type": "eval", "key", "config", "score", "seconds", "params",
    "iteration", "step", "temperature"}``.

    Each line is written with one ``os.write`` on an ``O_APPEND`` descriptor and fsynced. A
    torn last line (a kill mid-write) is dropped when the log is opened.
    """

    def __init__(self, path: str | os.PathLike[str], fingerprint: Mapping[str, Any]):
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.records: dict[str, dict[str, Any]] = {}
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append({"type": "header", "fingerprint": self.fingerprint})
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        parsed = []
        for n, line in enumerate(complete):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                if n == len(complete) - 1 and not tail:
                    complete = complete[:-1]  # a torn line that happened to end in a newline
                    break
                raise ValueError(f"{self.path}: line {n + 1} is not JSON; the log is damaged") from None
        if tail or len(parsed) != len(complete):  # a torn last line: rewrite the log without it, atomically
            from ..data._io import atomic_write_bytes

            atomic_write_bytes(self.path, b"".join(line + b"\n" for line in complete))
        if not parsed or parsed[0].get("type") != "header":
            raise ValueError(f"{self.path}: expected a search log starting with a header line")
        if parsed[0].get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.path}: this log belongs to a different search (its settings differ); "
                f"use another output folder. Logged: {parsed[0].get('fingerprint')}, now: {self.fingerprint}"
            )
        for rec in parsed[1:]:
            if rec.get("type") == "eval":
                self.records[rec["key"]] = rec

    def _append(self, record: Mapping[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def add(self, record: Mapping[str, Any]) -> None:
        rec = {"type": "eval", **record}
        self._append(rec)
        self.records[rec["key"]] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)


# --------------------------------------------------------------------------- the search


@dataclass
class SearchSettings:
    """Knobs of :func:`search` (defaults: a few minutes on one CPU core for the interaction task).

    Attributes:
        configs_per_step: K, configurations trained per step.
        iterations: E, passes of progressive growth from L = 1 to ``max_layers``.
        expand_top: configurations of length L - 1 expanded at step L (default K).
        temperature_start, temperature_end: the sampling temperature, lowered geometrically.
        budget_configs: stop after this many evaluations (None: no limit).
        budget_minutes: stop starting new evaluations after this many minutes (None: no limit).
        surrogate_epochs, surrogate_lr, surrogate_embed_dim, surrogate_hidden_dim: the surrogate.
        seed: sampling seed (training seeds derive from it and the configuration).
    """

    configs_per_step: int = 12
    iterations: int = 2
    expand_top: int | None = None
    temperature_start: float = 2.0
    temperature_end: float = 0.2
    budget_configs: int | None = None
    budget_minutes: float | None = None
    surrogate_epochs: int = 300
    surrogate_lr: float = 1e-2
    surrogate_embed_dim: int = 16
    surrogate_hidden_dim: int = 32
    seed: int = 0

    def temperature(self, step: int, steps: int) -> float:
        if steps <= 1:
            return self.temperature_start
        return self.temperature_start * (self.temperature_end / self.temperature_start) ** (step / (steps - 1))


@dataclass
class Evaluation:
    """One evaluated configuration."""

    key: str
    config: Configuration
    score: float
    seconds: float
    cached: bool
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """What :func:`search` returns: every evaluation of this run, in order, and the ranking."""

    evaluations: list[Evaluation]
    stopped_by: str  # "done", "budget_configs" or "budget_minutes"
    surrogate: Surrogate | None

    def ranked(self) -> list[Evaluation]:
        """Evaluations by decreasing score (ties: shorter configuration, then earlier)."""
        order = sorted(range(len(self.evaluations)), key=lambda i: (-self.evaluations[i].score, len(self.evaluations[i].config), i))
        return [self.evaluations[i] for i in order]

    @property
    def best(self) -> Evaluation:
        if not self.evaluations:
            raise ValueError("SearchResult: no configuration was evaluated")
        return self.ranked()[0]

    @property
    def trained(self) -> int:
        """Evaluations trained in this run (not read from the log)."""
        return sum(not e.cached for e in self.evaluations)


EvaluateFn = Callable[[Configuration], Mapping[str, Any]]


class _Budget(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def search(
    space: SearchSpace,
    evaluate: EvaluateFn,
    settings: SearchSettings,
    log: SearchLog | None = None,
    progress: Callable[[Evaluation, int], None] | None = None,
) -> SearchResult:
    """Run the progressive MFAS search.

    Args:
        space: the search space.
        evaluate: ``config -> {"score": float, ...}`` (trains the configuration briefly and
            returns its validation accuracy; extra JSON-ready entries are logged).
        settings: K, E, temperatures, budget, surrogate knobs.
        log: where evaluations are appended and read back on a rerun (None: no log).
        progress: called after every evaluation with it and the number done so far.

    Returns:
        A :class:`SearchResult`; ``result.best`` is the configuration the search returns.
    """
    k = settings.configs_per_step
    top = settings.expand_top or k
    if k < 1 or top < 1 or settings.iterations < 1:
        raise ValueError(f"search: configs_per_step, expand_top and iterations must be >= 1, got {k}, {top}, {settings.iterations}")
    rng = np.random.default_rng(settings.seed)
    surrogate = Surrogate(space, settings.surrogate_embed_dim, settings.surrogate_hidden_dim)
    fitted = False
    done: dict[str, Evaluation] = {}
    evaluations: list[Evaluation] = []
    start = time.perf_counter()
    steps = settings.iterations * space.max_layers
    stopped_by = "done"

    def run_one(config: Configuration, meta: dict[str, Any]) -> None:
        if settings.budget_configs is not None and len(evaluations) >= settings.budget_configs:
            raise _Budget("budget_configs")
        key = space.key(config)
        if log is not None and key in log:
            rec = log.records[key]
            ev = Evaluation(key, config, float(rec["score"]), float(rec.get("seconds", 0.0)), True, rec)
        else:
            if settings.budget_minutes is not None and time.perf_counter() - start > 60.0 * settings.budget_minutes:
                raise _Budget("budget_minutes")
            t0 = time.perf_counter()
            out = dict(evaluate(config))
            seconds = time.perf_counter() - t0
            rec = {**out, "key": key, "config": space.to_json(config), "score": float(out["score"]), "seconds": round(seconds, 3), **meta}
            if log is not None:
                log.add(rec)
            ev = Evaluation(key, config, float(out["score"]), seconds, False, rec)
        done[key] = ev
        evaluations.append(ev)
        if progress is not None:
            progress(ev, len(evaluations))

    try:
        step = 0
        for it in range(settings.iterations):
            for length in range(1, space.max_layers + 1):
                temp = settings.temperature(step, steps)
                if length == 1:
                    candidates = [(layer,) for layer in space.layers()]
                else:
                    parents = sorted((e for e in done.values() if len(e.config) == length - 1), key=lambda e: (-e.score, e.key))[:top]
                    candidates = [c for p in parents for c in space.expand(p.config)]
                candidates = [c for c in candidates if space.key(c) not in done]
                if candidates:
                    n = min(k, len(candidates))
                    if fitted:
                        z = surrogate.predict(candidates)
                        z = (z - z.mean()) / (z.std() + 1e-12)
                        p = np.exp((z - z.max()) / temp)
                        p /= p.sum()
                        n = min(n, int((p > 0).sum()))
                        chosen = rng.choice(len(candidates), size=n, replace=False, p=p)
                    else:
                        chosen = rng.choice(len(candidates), size=n, replace=False)
                    for j in chosen:
                        run_one(candidates[int(j)], {"iteration": it, "step": step, "temperature": round(temp, 6)})
                    if len(done) >= 2:
                        keys = sorted(done)
                        surrogate.fit(
                            [done[x].config for x in keys],
                            [done[x].score for x in keys],
                            epochs=settings.surrogate_epochs,
                            lr=settings.surrogate_lr,
                            seed=settings.seed,
                        )
                        fitted = True
                step += 1
    except _Budget as b:
        stopped_by = b.reason
    return SearchResult(evaluations, stopped_by, surrogate if fitted else None)


def random_search(
    space: SearchSpace,
    evaluate: EvaluateFn,
    num_configs: int,
    seed: int = 0,
    progress: Callable[[Evaluation, int], None] | None = None,
) -> SearchResult:
    """The baseline: ``num_configs`` distinct configurations drawn uniformly (length uniform in
    1..max_layers, then each layer uniform), each trained like the search's."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    evaluations: list[Evaluation] = []
    while len(evaluations) < min(num_configs, space.size()):
        config = space.sample(rng, int(rng.integers(1, space.max_layers + 1)))
        key = space.key(config)
        if key in seen:
            continue
        seen.add(key)
        t0 = time.perf_counter()
        out = dict(evaluate(config))
        ev = Evaluation(key, config, float(out["score"]), time.perf_counter() - t0, False, out)
        evaluations.append(ev)
        if progress is not None:
            progress(ev, len(evaluations))
    return SearchResult(evaluations, "done", None)
