r"""Robustness of a trained task model to a noisy or a missing modality (MultiBench's protocol).

After training, the test set is evaluated with one modality corrupted at a time (Liang et al.,
"MultiBench: Multiscale Benchmarks for Multimodal Representation Learning", NeurIPS 2021
Datasets and Benchmarks):

- **noise**: Gaussian noise added to the modality's features at the levels
  :data:`NOISE_LEVELS` (0 = clean, then 10 increasing levels). The noise std is ``level × σ_m``,
  where ``σ_m`` is the standard deviation of that modality's features over the clean test set,
  so a level means the same signal-to-noise ratio for every modality and model;
- **missing**: the modality's features zeroed; a sequence (regions, words) is also masked out
  entirely, so attention fusions give it zero weight (the attention contract: a fully-masked
  row gives finite output).

Where the corruption acts: on the encoder's output, the features the fusion reads (the
:class:`~mmfuse.models.encoders.Encoded` ``seq`` / ``mask`` / ``vec`` of the input, through a
forward hook on ``model.encoders[name]``). That works for every modality, token ids included,
and measures the fusion under identical encoders; on the interaction tasks the encoder is the
identity, so this is noise on the raw vectors. Sequence noise is added at valid positions only.

Definitions (MultiBench §3 and its ``eval_scripts/robustness.py``), for an accuracy curve
``a_0 .. a_n`` at levels ``l_0 = 0 < l_1 < .. < l_n``:

- **relative robustness** — the accuracy kept under imperfection: the area under the
  accuracy-vs-imperfection curve, with the levels mapped to ``t_i = l_i / l_n`` in [0, 1]
  (MultiBench's levels are 0, 0.1, .., 1 already)::

      RR = Σ_{i<n} (t_{i+1} - t_i) (a_i + a_{i+1}) / 2

  For accuracies in [0, 1], RR is in [0, 1]; a flat curve gives its clean accuracy.
- **effective robustness** (after Taori et al., 2020) — the rate of the accuracy drop after
  equalising clean accuracy with a baseline ``b`` (MultiBench: late fusion, unimodal encoders + concatenation + an MLP; here ``concat_mlp``,
  the same; a baseline at chance has a flat curve and would make every model that learned the task
  look fragile):
  the baseline's curve shifted to start at ``a_0``, ``β_i = b_i + (a_0 - b_0)``, and::

      ER = Σ_i (a_i - β_i) = Σ_i [(a_i - a_0) - (b_i - b_0)]

  ER > 0: the model loses accuracy more slowly than the baseline; the baseline itself has 0.

MultiBench shows both after min-max normalisation across the methods of a task
(:func:`maxmin_normalize`); the leaderboard reports the raw values.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..models.encoders import Encoded

__all__ = [
    "NOISE_LEVELS",
    "accuracy",
    "corrupted",
    "effective_robustness",
    "evaluate_robustness",
    "feature_stds",
    "maxmin_normalize",
    "missing_accuracy",
    "noise_curve",
    "relative_robustness",
]

NOISE_LEVELS: tuple[float, ...] = tuple(i / 10 for i in range(11))
"""Noise std as a multiple of the feature std: 0 (clean) and 10 levels, 0.1 .. 1.0."""


# --------------------------------------------------------------------------- the two measures


def _curve(values: Sequence[float], what: str) -> list[float]:
    vals = [float(v) for v in values]
    if len(vals) < 2 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what}: expected at least 2 finite accuracies, got {list(values)!r}")
    return vals


def relative_robustness(accuracies: Sequence[float], levels: Sequence[float] | None = None) -> float:
    """Area under accuracy vs level, levels mapped to [0, 1] (see the module docstring).

    Args:
        accuracies: ``a_0 .. a_n``, ``a_0`` the clean accuracy.
        levels: increasing ``l_0 = 0 .. l_n`` (default: evenly spaced).
    """
    acc = _curve(accuracies, "relative_robustness")
    if levels is None:
        levels = [i / (len(acc) - 1) for i in range(len(acc))]
    lv = [float(x) for x in levels]
    if len(lv) != len(acc):
        raise ValueError(f"relative_robustness: {len(acc)} accuracies but {len(lv)} levels")
    if lv[0] != 0.0 or any(b <= a for a, b in zip(lv, lv[1:])):
        raise ValueError(f"relative_robustness: levels must increase from 0, got {lv}")
    t = [x / lv[-1] for x in lv]
    return sum((t[i + 1] - t[i]) * (acc[i] + acc[i + 1]) / 2 for i in range(len(acc) - 1))


def effective_robustness(accuracies: Sequence[float], baseline: Sequence[float]) -> float:
    """``Σ_i [(a_i - a_0) - (b_i - b_0)]``: accuracy kept beyond the clean-equalised baseline."""
    acc = _curve(accuracies, "effective_robustness")
    base = _curve(baseline, "effective_robustness baseline")
    if len(acc) != len(base):
        raise ValueError(f"effective_robustness: curves of {len(acc)} and {len(base)} points")
    return sum((a - acc[0]) - (b - base[0]) for a, b in zip(acc, base))


def maxmin_normalize(values: Mapping[str, float]) -> dict[str, float]:
    """MultiBench's display scale: ``(v - min) / (max - min)`` over the methods (0.5 if all equal)."""
    lo, hi = min(values.values()), max(values.values())
    return {k: (0.5 if hi == lo else (v - lo) / (hi - lo)) for k, v in values.items()}


# --------------------------------------------------------------------------- corrupting a modality


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _encoder(model: nn.Module, modality: str) -> nn.Module:
    encoders = getattr(model, "encoders", None)
    if encoders is None or modality not in encoders:
        known = list(encoders) if encoders is not None else []
        raise ValueError(f"robustness: the model has no input {modality!r}; its inputs are {known}")
    return encoders[modality]


def _noise(like: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    return std * torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)


@contextlib.contextmanager
def corrupted(
    model: nn.Module,
    modality: str,
    *,
    noise_std: Mapping[str, float] | None = None,
    missing: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[None]:
    """Within the block, ``model.encoders[modality]``'s output is corrupted.

    Args:
        model: a :class:`~mmfuse.models.TaskModel` (anything with ``encoders`` returning
            :class:`~mmfuse.models.encoders.Encoded`).
        modality: the input name (``"v"``, ``"q"``, ``"x0"``, ...).
        noise_std: absolute noise stds ``{"vec": s, "seq": s}`` added to the vector and the
            valid sequence positions (a missing key: that part is left clean).
        missing: zero the vector and the sequence and mask every position out.
        generator: the noise's CPU random generator (reproducible curves).
    """
    if missing and noise_std:
        raise ValueError("robustness: corrupt a modality with noise or as missing, not both")
    encoder = _encoder(model, modality)

    def hook(module: nn.Module, args: Any, out: Encoded) -> Encoded:
        seq, mask, vec = out.seq, out.mask, out.vec
        if missing:
            return Encoded(None if seq is None else torch.zeros_like(seq),
                           None if mask is None else torch.zeros_like(mask), torch.zeros_like(vec), out.aux_loss)
        if noise_std:
            if seq is not None and noise_std.get("seq") is not None:
                keep = mask.unsqueeze(-1).to(seq.dtype) if mask is not None else 1.0
                seq = seq + _noise(seq, noise_std["seq"], generator) * keep  # [B, N, D], padding stays 0
            if noise_std.get("vec") is not None:
                vec = vec + _noise(vec, noise_std["vec"], generator)  # [B, D]
        return Encoded(seq, mask, vec, out.aux_loss)

    handle = encoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable[Mapping[str, Any]], *, target_key: str,
             device: torch.device | str | None = None) -> float:
    """Classification accuracy of ``model(batch).logits`` over ``loader`` (targets < 0 ignored)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    right = total = 0
    for batch in loader:
        batch = _to(batch, device)
        out = model(batch)
        logits = out.logits if hasattr(out, "logits") else out
        target = batch[target_key].long()
        valid = target >= 0
        right += int(((logits.argmax(-1) == target) & valid).sum())
        total += int(valid.sum())
    if total == 0:
        raise ValueError("robustness: the loader has no labelled rows")
    return right / total


@torch.no_grad()
def feature_stds(model: nn.Module, loader: Iterable[Mapping[str, Any]], *,
                 device: torch.device | str | None = None) -> dict[str, dict[str, float]]:
    """Per input: the std of its vector (all entries) and of its sequence (valid positions)
    over ``loader``: ``{"v": {"vec": .., "seq": ..}, "q": {"vec": ..}}``."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    sums: dict[str, dict[str, list[float]]] = {}
    handles = []
    for name, enc in model.encoders.items():
        sums[name] = {}

        def hook(module: nn.Module, args: Any, out: Encoded, name: str = name) -> None:
            parts = {"vec": out.vec.double().reshape(-1)}
            if out.seq is not None:
                valid = out.mask if out.mask is not None else torch.ones(out.seq.shape[:2], dtype=torch.bool,
                                                                           device=out.seq.device)
                parts["seq"] = out.seq[valid].double().reshape(-1)  # [n_valid * D]
            for part, x in parts.items():
                s = sums[name].setdefault(part, [0.0, 0.0, 0.0])
                s[0] += float(x.numel())
                s[1] += float(x.sum())
                s[2] += float((x * x).sum())

        handles.append(enc.register_forward_hook(hook))
    model.eval()
    try:
        for batch in loader:
            model(_to(batch, device))
    finally:
        for h in handles:
            h.remove()
    out: dict[str, dict[str, float]] = {}
    for name, parts in sums.items():
        out[name] = {}
        for part, (n, s, ss) in parts.items():
            mean = s / max(n, 1.0)
            out[name][part] = math.sqrt(max(ss / max(n, 1.0) - mean * mean, 0.0))
    return out


def noise_curve(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    modality: str,
    *,
    target_key: str,
    stds: Mapping[str, float],
    levels: Sequence[float] = NOISE_LEVELS,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> list[float]:
    """Accuracy with ``modality`` noised at each level (std = level × ``stds[part]``)."""
    accs = []
    for i, level in enumerate(levels):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 101 * i + sum(map(ord, modality)))
        noise = {part: float(level) * s for part, s in stds.items()}
        with corrupted(model, modality, noise_std=noise, generator=g):
            accs.append(accuracy(model, loader, target_key=target_key, device=device))
    return accs


def missing_accuracy(model: nn.Module, loader: Iterable[Mapping[str, Any]], modality: str, *, target_key: str,
                     device: torch.device | str | None = None) -> float:
    """Accuracy with ``modality`` zeroed (and its sequence masked out)."""
    with corrupted(model, modality, missing=True):
        return accuracy(model, loader, target_key=target_key, device=device)


def evaluate_robustness(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    *,
    target_key: str,
    levels: Sequence[float] = NOISE_LEVELS,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Noise curves and missing-modality accuracy for every input of ``model``.

    Returns (JSON-ready)::

        {"levels": [...], "clean": acc,
         "modalities": {"v": {"feature_std": {"vec": .., "seq": ..}, "noise": [acc per level],
                              "missing": acc, "relative": RR}, ...}}
    """
    levels = [float(x) for x in levels]
    if len(levels) < 2 or levels[0] != 0.0:
        raise ValueError(f"robustness: levels must start at 0 and have at least 2 entries, got {levels}")
    loader = list(loader)  # the same batches for every evaluation
    stds = feature_stds(model, loader, device=device)
    out: dict[str, Any] = {"levels": levels, "clean": accuracy(model, loader, target_key=target_key, device=device),
                           "modalities": {}}
    for name in model.encoders:
        curve = noise_curve(model, loader, name, target_key=target_key, stds=stds[name], levels=levels, seed=seed,
                            device=device)
        out["modalities"][name] = {
            "feature_std": stds[name],
            "noise": curve,
            "missing": missing_accuracy(model, loader, name, target_key=target_key, device=device),
            "relative": relative_robustness(curve, levels),
        }
    return out
