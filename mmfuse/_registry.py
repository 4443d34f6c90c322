"""One registry for every fusion method, vector and attention alike.

A fusion class registers itself with :func:`register_fusion`; users build it by name with
:func:`create_fusion`, discover names with :func:`list_fusions` and read what it supports
with :func:`fusion_info`. Tests select fusions through the capability flags of
:class:`FusionInfo`, never through hand-kept lists, so a newly registered fusion is
covered by the contract suite the moment it is registered.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

__all__ = [
    "FusionInfo",
    "register_fusion",
    "create_fusion",
    "list_fusions",
    "fusion_info",
]

KINDS = ("vector", "attention")

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class FusionInfo:
    """What the registry knows about one fusion.

    Attributes:
        name: registry name, e.g. ``"mfh"``.
        cls: the ``nn.Module`` subclass.
        kind: ``"vector"`` (M tensors ``[..., D_m] -> [..., out_dim]``) or ``"attention"``.
        modalities: ``"2"``, ``"3"`` (exactly) or ``"2+"`` (two or more).
        paper: short citation of the paper the implementation follows.
        compile: ``torch.compile(fullgraph=True)`` is supported.
        export: ``torch.export.export`` is supported.
        order_free: attention fusions only: the output is invariant to permuting regions.
        tiny: constructor knobs that make a small, fast instance (used by the contract
            tests and handy for debugging), e.g. ``{"hidden_dim": 8}``.
    """

    name: str
    cls: type
    kind: str
    modalities: str
    paper: str
    compile: bool = True
    export: bool = True
    order_free: bool = True
    tiny: dict[str, Any] = field(default_factory=dict)

    @property
    def min_modalities(self) -> int:
        return int(self.modalities.rstrip("+"))

    @property
    def max_modalities(self) -> int | None:
        """Largest number of inputs, or ``None`` when unbounded."""
        return None if self.modalities.endswith("+") else int(self.modalities)

    @property
    def family(self) -> str:
        """The survey's family, from the module that defines the class: ``"simple"``,
        ``"gated"``, ``"bilinear"``, ``"attention"``, ``"bilinear attention"``, ``"transformer"``, ``"relational"``
        (``"other"`` for fusions defined outside mmfuse)."""
        module = self.cls.__module__
        for prefix, family in _FAMILIES:
            if module.startswith(prefix):
                return family
        return "other"

    def accepts(self, num_modalities: int) -> bool:
        hi = self.max_modalities
        return num_modalities >= self.min_modalities and (hi is None or num_modalities <= hi)


_REGISTRY: dict[str, FusionInfo] = {}

_FAMILIES = (
    ("mmfuse.fusions.simple", "simple"),
    ("mmfuse.fusions.gated", "gated"),
    ("mmfuse.fusions.bilinear", "bilinear"),
    ("mmfuse.fusions.factorized", "bilinear"),
    ("mmfuse.attention.bilinear_attention", "bilinear attention"),
    ("mmfuse.attention.ban", "bilinear attention"),
    ("mmfuse.attention.transformer", "transformer"),
    ("mmfuse.attention.relational", "relational"),
    ("mmfuse.attention", "attention"),
    ("mmfuse.search", "search"),
)


def _check_modalities(modalities: str) -> None:
    body = modalities[:-1] if modalities.endswith("+") else modalities
    if not body.isdigit() or int(body) < 1:
        raise ValueError(f"modalities must look like '2', '3' or '2+', got {modalities!r}")


def register_fusion(
    name: str,
    *,
    kind: str,
    modalities: str,
    paper: str,
    compile: bool = True,
    export: bool = True,
    order_free: bool = True,
    tiny: dict[str, Any] | None = None,
) -> Callable[[T], T]:
    """Class decorator that adds a fusion to the registry under ``name``.

    Example::

        @register_fusion("mfh", kind="vector", modalities="2+", paper="Yu et al., TNNLS 2018")
        class MFH(VectorFusion): ...

    Raises:
        ValueError: ``name`` is taken, ``kind`` is unknown or ``modalities`` is malformed.
    """
    if kind not in KINDS:
        raise ValueError(f"register_fusion({name!r}): kind must be one of {KINDS}, got {kind!r}")
    _check_modalities(modalities)

    def decorator(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(
                f"register_fusion: name {name!r} is already registered "
                f"by {_REGISTRY[name].cls.__module__}.{_REGISTRY[name].cls.__qualname__}"
            )
        _REGISTRY[name] = FusionInfo(
            name=name,
            cls=cls,
            kind=kind,
            modalities=modalities,
            paper=paper,
            compile=compile,
            export=export,
            order_free=order_free,
            tiny=dict(tiny or {}),
        )
        cls.fusion_name = name  # type: ignore[attr-defined]
        cls.modalities = modalities  # type: ignore[attr-defined]
        return cls

    return decorator


def _lookup(name: str) -> FusionInfo:
    if not isinstance(name, str):
        raise ValueError(f"fusion name must be a str, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.4)
        hint = f"closest: {', '.join(close)}" if close else f"known: {', '.join(sorted(_REGISTRY))}"
        raise ValueError(f"unknown fusion {name!r}; {hint}") from None


def create_fusion(name: str, **kwargs: Any):
    """Build the fusion registered as ``name`` with the constructor arguments ``kwargs``.

    Example::

        f = create_fusion("gmu", in_dims=(2048, 300), out_dim=512)
    """
    return _lookup(name).cls(**kwargs)


def list_fusions(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Sorted registry names matching the fnmatch ``pattern`` and, if given, ``kind``."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"list_fusions: kind must be one of {KINDS} or None, got {kind!r}")
    return sorted(
        n
        for n, info in _REGISTRY.items()
        if fnmatch.fnmatchcase(n, pattern) and (kind is None or info.kind == kind)
    )


def select_fusions(patterns: str, names: Sequence[str] | None = None, *, option: str = "--fusions") -> list[str]:
    """The fusions that comma-separated fnmatch ``patterns`` pick, in the order the patterns come
    (each pattern's matches in registry order, every name once).

    ``names`` are the candidates (default: every registered fusion). Every pattern has to match
    one of them: a typo such as ``"tuckr,block"`` raises rather than quietly dropping Tucker. The
    ValueError names ``option`` and the closest candidates.

    Example::

        select_fusions("tucker,mf*")  # ["tucker", "mfb", "mfb_coattention", "mfh", "mfh_coattention"]
    """
    if not isinstance(patterns, str):
        raise ValueError(f"{option}: expected comma-separated fusion names or patterns, got {type(patterns).__name__}")
    pool = sorted(_REGISTRY) if names is None else list(names)
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    if not pats:
        raise ValueError(f"{option}: expected comma-separated fusion names or patterns, got {patterns!r}")
    out: list[str] = []
    for pat in pats:
        hits = [n for n in pool if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            close = difflib.get_close_matches(pat, pool, n=3, cutoff=0.4)
            hint = f"closest: {', '.join(close)}" if close else f"known: {', '.join(pool)}"
            raise ValueError(f"{option}: no fusion matches {pat!r}; {hint}")
        out.extend(n for n in hits if n not in out)
    return out


def fusion_info(name: str) -> FusionInfo:
    """The :class:`FusionInfo` of ``name`` (kind, modalities, paper, capability flags)."""
    return _lookup(name)
