"""Task models: per-modality encoders + any registered fusion + an MLP head.

A model is built from the ``model:`` section of a config (a plain dict, e.g. from YAML)::

    model:
      task: {kind: classification, num_outputs: 10}   # classification | multilabel | regression
      inputs:                                         # ordered: the fusion's modality order
        v: {encoder: regions, key: regions, mask_key: region_mask, in_dim: 10, dim: 64}
        q: {encoder: gru, key: question_tokens, mask_key: question_mask, vocab_size: 46, dim: 64}
      fusion: {name: mlb, out_dim: 128, hidden_dim: 64}   # registry name + its knobs
      head: {hidden_dims: [128], dropout: 0.1, activation: relu}

- A vector fusion gets every input's pooled vector, in order (``in_dims`` = the encoders' dims).
- An attention fusion gets exactly two inputs: the first (``v``) as a sequence with its mask;
  the second (``q``) as a sequence with its mask when its encoder makes one, else as its
  vector. ``feed: vector`` on the second input hands it the vector instead (e.g. the final
  GRU state for SAN / Up-Down, which score regions against one question vector); ``feed`` is
  ignored by vector fusions, so a config can switch fusion family by its name alone.
- ``fusion.out_dim`` is required unless the fusion's own default is ``None`` (``concat``).
- Each input reads ``batch[key]`` (``key`` defaults to the input's name) and, if set,
  ``batch[mask_key]``; the encoder's own keys are listed in :mod:`mmfuse.models.encoders`.
- ``group_key`` (optional): rows with equal ``batch[group_key]`` carry the same input (the
  questions of one image), so the encoder runs once per distinct value and its outputs are
  gathered back to the rows; a batch without that key is encoded row by row as usual.
- ``norm`` (``none`` | ``layer``, default ``none``): a LayerNorm (with its own gain and bias) on
  the encoder's outputs, each sequence row and the vector normalised separately (padded rows
  stay zero). On Sort-of-CLEVR a bag of words averages the colour word with seven others, and
  attention over the regions sits at the shape-count plateau for thousands of steps; with ``layer`` on
  both inputs (the question fed as a vector) 7 of the 21 attention fusions answered the
  non-relational questions within 1,120 steps, against 1 without (docs/BENCHMARKS.md).

Every key is checked before any module is built; a bad one raises :class:`ConfigError` naming
it (``model.inputs.q.vocab_size: expected a positive int, got 0``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._registry import FusionInfo, create_fusion, fusion_info
from ..attention._base import AttentionOutput
from ..layers import MLP
from .config import (
    ConfigError,
    Field,
    activation_name,
    check_section,
    choice,
    int_list,
    json_ready,
    mapping,
    optional,
    positive_int,
    probability,
    string,
    unknown_key,
)
from .encoders import ENCODERS, Encoded, Encoder

__all__ = ["ModelOutput", "TaskModel", "build_model", "normalize_model_config", "INPUT_NORMS", "TASK_KINDS"]

TASK_KINDS = ("classification", "multilabel", "regression")
INPUT_NORMS = ("none", "layer")  # an input's ``norm``

_TASK_FIELDS = {"kind": Field(choice(*TASK_KINDS)), "num_outputs": Field(positive_int)}
_HEAD_FIELDS = {
    "hidden_dims": Field(int_list, []),
    "dropout": Field(probability, 0.0),
    "activation": Field(activation_name, "relu"),
}
_INPUT_FIELDS = {
    "encoder": Field(string),
    "key": Field(optional(string), None),
    "mask_key": Field(optional(string), None),
    "group_key": Field(optional(string), None),
    "feed": Field(choice("auto", "sequence", "vector"), "auto"),
    "norm": Field(choice(*INPUT_NORMS), "none"),
}
_SECTIONS = ("task", "inputs", "fusion", "head")
# constructor arguments the model sets itself
_RESERVED_KNOBS = ("in_dims", "v_dim", "q_dim", "device", "dtype")


class ModelOutput(NamedTuple):
    """``logits``: Tensor[B, num_outputs]; ``attention``: the attention fusion's maps, or None;
    ``aux_logits``: per-modality logits of a fusion with auxiliary outputs (CentralNet's unimodal
    networks, each through the same head), empty otherwise; the trainer adds their losses,
    weighted by ``train.aux_loss_weight``; ``aux_losses``: the encoders' self-supervised losses
    (``Encoded.aux_loss``, already weighted), which the trainer adds as they are."""

    logits: Tensor
    attention: AttentionOutput | None
    aux_logits: tuple[Tensor, ...] = ()
    aux_losses: tuple[Tensor, ...] = ()


def _model_section(config: Any) -> Mapping[str, Any]:
    """The ``model:`` section of a full config, or ``config`` itself when it is that section."""
    section = mapping("model", config)
    if any(k in section for k in ("inputs", "fusion", "task")):
        return section
    if "model" in section:
        return mapping("model", section["model"])
    raise ConfigError("model", "missing required section (with task, inputs, fusion and head)")


def _check_input(key: str, name: str, value: Any) -> dict[str, Any]:
    if not name or "." in name:
        raise ConfigError(key, f"input names must be non-empty and contain no '.', got {name!r}")
    raw = mapping(key, value)
    if "encoder" not in raw:
        raise ConfigError(f"{key}.encoder", f"missing required key; expected one of {', '.join(ENCODERS)}")
    enc_name = raw["encoder"]
    if enc_name not in ENCODERS:
        raise ConfigError(f"{key}.encoder", f"unknown encoder {enc_name!r}; expected one of {', '.join(ENCODERS)}")
    cls = ENCODERS[enc_name]
    common = check_section(key, raw, _INPUT_FIELDS, skip=list(cls.fields))
    own = check_section(key, raw, cls.fields, skip=list(_INPUT_FIELDS))
    cls.validate(key, own)
    if common["key"] is None:
        common["key"] = name
    if common["feed"] == "sequence" and not cls.produces_sequence(own):
        raise ConfigError(f"{key}.feed", f"encoder {enc_name!r} makes no sequence; use feed: vector or auto")
    return {**common, **own}


def _fusion_parameters(info: FusionInfo) -> tuple[dict[str, inspect.Parameter], bool]:
    params = dict(inspect.signature(info.cls.__init__).parameters)
    params.pop("self", None)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    params = {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return params, var_kw


def _check_fusion(value: Any) -> tuple[dict[str, Any], FusionInfo]:
    raw = mapping("model.fusion", value)
    if "name" not in raw:
        raise ConfigError("model.fusion.name", "missing required key")
    name = string("model.fusion.name", raw["name"])
    try:
        info = fusion_info(name)
    except ValueError as err:
        raise ConfigError("model.fusion.name", str(err)) from None
    params, var_kw = _fusion_parameters(info)
    known = [k for k in params if k not in _RESERVED_KNOBS]
    out: dict[str, Any] = {"name": name}
    for knob, v in raw.items():
        if knob == "name":
            continue
        if knob in _RESERVED_KNOBS:
            raise ConfigError(f"model.fusion.{knob}", "is set by the model from its encoders; remove it")
        if knob not in params and not var_kw:
            raise unknown_key("model.fusion", knob, known)
        out[knob] = json_ready(f"model.fusion.{knob}", v)
    if "out_dim" not in out:
        default = params["out_dim"].default if "out_dim" in params else inspect.Parameter.empty
        if default is not None:
            raise ConfigError("model.fusion.out_dim", f"missing required key (the {name!r} fusion's output width)")
        out["out_dim"] = None
    if out["out_dim"] is not None:
        positive_int("model.fusion.out_dim", out["out_dim"])
    return out, info


def normalize_model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``model:`` section (or a full config holding one) and fill in every default.

    Returns:
        The normalised section ``{"task", "inputs", "fusion", "head"}``, JSON-ready.
    Raises:
        ConfigError: naming the dotted key of the first problem found.
    """
    section = _model_section(config)
    for k in section:
        if k not in _SECTIONS:
            raise unknown_key("model", k, _SECTIONS)
    for k in ("task", "inputs", "fusion"):
        if k not in section:
            raise ConfigError(f"model.{k}", "missing required section")
    task = check_section("model.task", section["task"], _TASK_FIELDS)
    head = check_section("model.head", section.get("head") or {}, _HEAD_FIELDS)

    raw_inputs = mapping("model.inputs", section["inputs"])
    if not raw_inputs:
        raise ConfigError("model.inputs", "expected at least one input")
    inputs = {name: _check_input(f"model.inputs.{name}", name, v) for name, v in raw_inputs.items()}
    fusion, info = _check_fusion(section["fusion"])

    names = list(inputs)
    if info.kind == "attention":
        if len(names) != 2:
            raise ConfigError(
                "model.inputs",
                f"attention fusion {info.name!r} takes exactly 2 inputs (regions / steps first, then the "
                f"question), got {len(names)}: {names}",
            )
        v_name, q_name = names
        v_cfg = inputs[v_name]
        if not ENCODERS[v_cfg["encoder"]].produces_sequence(v_cfg):
            raise ConfigError(
                f"model.inputs.{v_name}.encoder",
                f"the first input of attention fusion {info.name!r} must be a sequence, but encoder "
                f"{v_cfg['encoder']!r} makes only a vector",
            )
        if v_cfg["feed"] == "vector":
            raise ConfigError(
                f"model.inputs.{v_name}.feed", f"the first input of attention fusion {info.name!r} is fed as a sequence"
            )
    elif not info.accepts(len(names)):
        want = info.modalities.replace("+", " or more")
        raise ConfigError(
            "model.inputs", f"vector fusion {info.name!r} takes {want} inputs, got {len(names)}: {names}"
        )
    return {"task": task, "inputs": inputs, "fusion": fusion, "head": head}


def _input_dims(inputs: Mapping[str, Mapping[str, Any]]) -> list[int]:
    return [ENCODERS[c["encoder"]].output_dim(c) for c in inputs.values()]


class TaskModel(nn.Module):
    """Encoders (one per input, in order) + a registered fusion + an MLP head.

    ``forward(batch) -> ModelOutput(logits Tensor[B, num_outputs], attention)``: the batch is a
    dict of tensors keyed as the inputs' ``key`` / ``mask_key``; other keys are ignored.

    Attributes:
        encoders: ``nn.ModuleDict`` input name -> :class:`~mmfuse.models.encoders.Encoder`.
        fusion: the fusion module; ``fusion_kind`` is "vector" or "attention".
        head: ``MLP(fusion.out_dim -> *hidden_dims -> num_outputs)``.
        config: a copy of the normalised ``model:`` section (JSON-ready).

    Example::

        model = build_model(yaml.safe_load(open("configs/soc_mcan.yaml")))
        out = model(batch)                       # out.logits [B, 10]
    """

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        cfg = normalize_model_config(config)
        self._config = cfg
        self.task_kind: str = cfg["task"]["kind"]
        self.num_outputs: int = cfg["task"]["num_outputs"]
        info = fusion_info(cfg["fusion"]["name"])
        self.fusion_kind: str = info.kind
        dims = _input_dims(cfg["inputs"])
        knobs = {k: v for k, v in cfg["fusion"].items() if k != "name"}
        try:  # the fusion checks its own knobs: build it first, so a bad one fails before the rest
            if info.kind == "attention":
                fusion = create_fusion(info.name, v_dim=dims[0], q_dim=dims[1], **knobs)
            else:
                fusion = create_fusion(info.name, in_dims=tuple(dims), **knobs)
        except (ValueError, TypeError) as err:
            raise ConfigError("model.fusion", f"cannot build {info.name!r} on input dims {dims}: {err}") from None
        self.encoders = nn.ModuleDict({name: ENCODERS[c["encoder"]].from_config(c) for name, c in cfg["inputs"].items()})
        # only the inputs with ``norm: layer`` get an entry, so older checkpoints keep their keys
        self.norms = nn.ModuleDict({name: nn.LayerNorm(dim) for (name, c), dim in zip(cfg["inputs"].items(), dims)
                                    if c["norm"] == "layer"})
        self.fusion = fusion
        fused_dim = int(fusion.out_dim)
        head = cfg["head"]
        self.head = MLP(fused_dim, [*head["hidden_dims"], self.num_outputs], head["activation"], head["dropout"])

    @property
    def config(self) -> dict[str, Any]:
        """The normalised ``model:`` section this model was built from (a copy)."""
        return copy.deepcopy(self._config)

    @property
    def batch_keys(self) -> list[str]:
        """Every batch key the model reads (inputs, masks, encoder extras), in order."""
        keys: list[str] = []
        for name, c in self._config["inputs"].items():
            enc = self.encoders[name]
            for k in (c["key"], c["mask_key"], *(c[v] for v in enc.extra_inputs.values())):
                if k is not None and k not in keys:
                    keys.append(k)
        return keys

    def encode(self, batch: Mapping[str, Any]) -> dict[str, Encoded]:
        """Run every encoder on its batch keys: input name -> :class:`Encoded`."""
        out: dict[str, Encoded] = {}
        for name, enc in self.encoders.items():
            c = self._config["inputs"][name]
            x = _get(batch, c["key"], name)
            mask = _get(batch, c["mask_key"], name) if c["mask_key"] else None
            extra = {arg: _get(batch, c[ck], name) for arg, ck in enc.extra_inputs.items() if c[ck]}
            rows = _group_rows(batch.get(c["group_key"])) if c["group_key"] else None
            if rows is None:
                e = self._normed(name, enc(x, mask, **extra))
            else:
                first, inverse = rows  # encode each distinct row once, then gather back
                pick = (lambda t: None if t is None else t[first])
                e = self._normed(name, enc(pick(x), pick(mask), **{k: pick(v) for k, v in extra.items()}))
                e = Encoded(None if e.seq is None else e.seq[inverse],
                            None if e.mask is None else e.mask[inverse], e.vec[inverse], e.aux_loss)
            out[name] = e
        return out

    def _normed(self, name: str, e: Encoded) -> Encoded:
        """``e`` through the input's LayerNorm (``norm: layer``): rows and vector separately,
        padded rows zeroed again (LayerNorm of a zero row is its bias)."""
        if name not in self.norms:
            return e
        norm = self.norms[name]
        seq = e.seq
        if seq is not None:
            seq = norm(seq)
            if e.mask is not None:
                seq = seq * e.mask.unsqueeze(-1).to(seq.dtype)
        return Encoded(seq, e.mask, norm(e.vec), e.aux_loss)

    def forward(self, batch: Mapping[str, Any]) -> ModelOutput:
        encoded = list(self.encode(batch).values())
        aux_losses = tuple(e.aux_loss for e in encoded if e.aux_loss is not None)
        if self.fusion_kind == "attention":
            v, q = encoded
            q_cfg = list(self._config["inputs"].values())[1]
            if q.seq is not None and q_cfg["feed"] != "vector":
                q_in, q_mask = q.seq, q.mask
            else:
                q_in, q_mask = q.vec, None
            att: AttentionOutput | None = self.fusion(v.seq, q_in, v_mask=v.mask, q_mask=q_mask)
            fused = att.fused
        else:
            att = None
            vectors = [e.vec for e in encoded]
            if hasattr(self.fusion, "forward_with_aux"):  # CentralNet: the unimodal outputs too
                out = self.fusion.forward_with_aux(*vectors)
                # the unimodal outputs keep their own leading dims; each is [B, out_dim] here
                return ModelOutput(self.head(out.fused), None, tuple(self.head(u) for u in out.unimodal), aux_losses)
            fused = self.fusion(*vectors)  # [B, out_dim]
        return ModelOutput(self.head(fused), att, (), aux_losses)

    def extra_repr(self) -> str:
        return f"task={self.task_kind}, num_outputs={self.num_outputs}, fusion={self._config['fusion']['name']}"


def _group_rows(ids: Any) -> tuple[Tensor, Tensor] | None:
    """For row ids Tensor[B]: (one row per distinct id, each row's index among them), or None
    where every id is distinct (nothing to share) or there are no ids."""
    if not isinstance(ids, Tensor) or ids.dim() != 1:
        return None
    distinct, inverse = torch.unique(ids, return_inverse=True)
    if len(distinct) == len(ids):
        return None
    first = torch.empty(len(distinct), dtype=torch.long, device=ids.device)
    first.scatter_(0, inverse, torch.arange(len(ids), device=ids.device))  # some row of each id
    return first, inverse


def _get(batch: Mapping[str, Any], key: str, input_name: str) -> Any:
    try:
        return batch[key]
    except KeyError:
        raise KeyError(
            f"input {input_name!r} reads batch[{key!r}], which is missing; batch keys: {sorted(batch)}"
        ) from None


def build_model(config: Mapping[str, Any]) -> TaskModel:
    """Build a :class:`TaskModel` from a ``model:`` section or a full config (``{"model": ...}``).

    Raises:
        ConfigError: a bad key, named in the message, found before anything is built.
        ImportError: an optional encoder's package is missing (``sentence``).
    """
    return TaskModel(config)
