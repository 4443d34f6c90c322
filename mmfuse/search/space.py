"""The MFAS search space: sequences of fusion layers over frozen unimodal backbones.

Paper: Pérez-Rúa, Vielzeuf, Pateux, Baccouche & Jurie, "MFAS: Multimodal Fusion Architecture
Search", CVPR 2019 (section 3.1). A configuration is a sequence of L fusion layers; layer l
chooses, for every modality m, which hidden layer ``i_{l,m}`` of that modality's backbone it
reads, a nonlinearity ``σ_l`` and how it combines its inputs::

    concat:        h_l = σ_l(W_l [f^1_{i_{l,1}}; ..; f^M_{i_{l,M}}; h_{l-1}] + b_l)
    weighted_sum:  h_l = σ_l(Σ_m α_{l,m} P_{l,m} f^m_{i_{l,m}} + α_{l,h} h_{l-1})

(``h_0`` is absent; the classifier reads ``h_L``). The paper fuses two modalities with
layer choices and activations; the weighted-sum / concat choice follows the survey's
description of MFAS; M >= 2 modalities are allowed here.

Encoding. One layer is the tuple of slot choices ``(i_1, .., i_M, act, combine)``; its index
is the mixed-radix number of those choices (the first slot varies slowest), so the layers of
the space are enumerated in index order ``0 .. layer_size - 1``. A configuration of length L
is the tuple of its layer indices; there are ``layer_size ** L`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ACTIVATIONS", "COMBINES", "FusionLayer", "Configuration", "SearchSpace"]

ACTIVATIONS = ("relu", "sigmoid", "leaky_relu", "tanh", "identity")
COMBINES = ("concat", "weighted_sum")


@dataclass(frozen=True)
class FusionLayer:
    """One fusion layer: a backbone layer per modality, a nonlinearity, a combine operation."""

    feature_layers: tuple[int, ...]
    activation: str
    combine: str

    def key(self) -> str:
        """``"1-3-0:relu:concat"``: feature layers (0-based), activation, combine."""
        return f"{'-'.join(str(i) for i in self.feature_layers)}:{self.activation}:{self.combine}"

    def to_json(self) -> dict[str, Any]:
        return {"feature_layers": list(self.feature_layers), "activation": self.activation, "combine": self.combine}


Configuration = tuple[FusionLayer, ...]


class SearchSpace:
    """Every fusion-layer sequence of length 1 .. ``max_layers`` over M backbones.

    Args:
        num_feature_layers: hidden layers each backbone exposes, ``(n_1, .., n_M)``, M >= 2.
        activations: nonlinearity choices (names of :func:`mmfuse.layers.make_activation`).
        combines: combine choices, a subset of ``("concat", "weighted_sum")``.
        max_layers: largest L.

    Size: ``layer_size = n_1 * .. * n_M * len(activations) * len(combines)`` layers;
    ``layer_size ** L`` configurations of length L.

    Example::

        space = SearchSpace((4, 4, 4), activations=("relu", "sigmoid"), max_layers=3)
        space.layer_size                  # 4*4*4*2*2 = 256
        space.decode((0, 255))            # two FusionLayers
    """

    def __init__(
        self,
        num_feature_layers: Sequence[int],
        activations: Sequence[str] = ("relu", "sigmoid", "leaky_relu"),
        combines: Sequence[str] = COMBINES,
        max_layers: int = 3,
    ):
        n = tuple(num_feature_layers) if isinstance(num_feature_layers, Sequence) else ()
        if len(n) < 2 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in n):
            raise ValueError(
                f"SearchSpace: num_feature_layers must be >= 2 positive ints (one per modality), got {num_feature_layers!r}"
            )
        for what, values, known in (("activations", activations, ACTIVATIONS), ("combines", combines, COMBINES)):
            if isinstance(values, str) or not values or len(set(values)) != len(values) or any(v not in known for v in values):
                raise ValueError(f"SearchSpace: {what} must be distinct names from {known}, got {values!r}")
        if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
            raise ValueError(f"SearchSpace: max_layers must be an int >= 1, got {max_layers!r}")
        self.num_feature_layers = n
        self.activations = tuple(activations)
        self.combines = tuple(combines)
        self.max_layers = max_layers

    # ------------------------------------------------------------------ sizes

    @property
    def num_modalities(self) -> int:
        return len(self.num_feature_layers)

    @property
    def slot_sizes(self) -> tuple[int, ...]:
        """Choices per slot of a layer: ``(n_1, .., n_M, len(activations), len(combines))``."""
        return (*self.num_feature_layers, len(self.activations), len(self.combines))

    @property
    def layer_size(self) -> int:
        return math.prod(self.slot_sizes)

    def size(self, num_layers: int | None = None) -> int:
        """Configurations of exactly ``num_layers`` layers, or of any length 1..max_layers."""
        if num_layers is None:
            return sum(self.layer_size**k for k in range(1, self.max_layers + 1))
        self._check_length(num_layers)
        return self.layer_size**num_layers

    def _check_length(self, num_layers: int) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= self.max_layers:
            raise ValueError(f"SearchSpace: expected a number of layers in 1..{self.max_layers}, got {num_layers!r}")

    # ------------------------------------------------------------------ layers

    def layer_slots(self, layer: FusionLayer) -> tuple[int, ...]:
        """The slot choices of ``layer``: ``(i_1, .., i_M, act index, combine index)``."""
        self.check_layer(layer)
        return (*layer.feature_layers, self.activations.index(layer.activation), self.combines.index(layer.combine))

    def decode_layer(self, index: int) -> FusionLayer:
        """The layer with mixed-radix ``index`` in ``0 .. layer_size - 1``."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.layer_size:
            raise ValueError(f"SearchSpace: layer index must be an int in 0..{self.layer_size - 1}, got {index!r}")
        slots = []
        rest = int(index)
        for size in reversed(self.slot_sizes):
            rest, s = divmod(rest, size)
            slots.append(s)
        slots.reverse()
        m = self.num_modalities
        return FusionLayer(tuple(slots[:m]), self.activations[slots[m]], self.combines[slots[m + 1]])

    def encode_layer(self, layer: FusionLayer) -> int:
        index = 0
        for s, size in zip(self.layer_slots(layer), self.slot_sizes):
            index = index * size + s
        return index

    def layers(self) -> Iterator[FusionLayer]:
        """Every layer, in index order."""
        return (self.decode_layer(i) for i in range(self.layer_size))

    def check_layer(self, layer: FusionLayer) -> None:
        if not isinstance(layer, FusionLayer):
            raise ValueError(f"SearchSpace: expected a FusionLayer, got {type(layer).__name__}")
        fl = layer.feature_layers
        if len(fl) != self.num_modalities or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i, n in zip(fl, self.num_feature_layers)
        ):
            raise ValueError(
                f"SearchSpace: feature_layers must be {self.num_modalities} ints below {self.num_feature_layers}, got {fl!r}"
            )
        if layer.activation not in self.activations:
            raise ValueError(f"SearchSpace: activation must be one of {self.activations}, got {layer.activation!r}")
        if layer.combine not in self.combines:
            raise ValueError(f"SearchSpace: combine must be one of {self.combines}, got {layer.combine!r}")

    # ------------------------------------------------------------------ configurations

    def check(self, config: Configuration) -> Configuration:
        """``config`` as a tuple, after checking its length and every layer."""
        if isinstance(config, FusionLayer) or not isinstance(config, Sequence):
            raise ValueError(f"SearchSpace: a configuration is a sequence of FusionLayers, got {type(config).__name__}")
        self._check_length(len(config))
        for layer in config:
            self.check_layer(layer)
        return tuple(config)

    def encode(self, config: Configuration) -> tuple[int, ...]:
        """Layer indices of ``config``."""
        return tuple(self.encode_layer(layer) for layer in self.check(config))

    def decode(self, indices: Sequence[int]) -> Configuration:
        """The configuration whose layers have these indices."""
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise ValueError(f"SearchSpace: expected a sequence of layer indices, got {type(indices).__name__}")
        self._check_length(len(indices))
        return tuple(self.decode_layer(i) for i in indices)

    def configurations(self, num_layers: int) -> Iterator[Configuration]:
        """Every configuration of ``num_layers`` layers, in lexicographic index order."""
        self._check_length(num_layers)
        for flat in range(self.size(num_layers)):
            idx = []
            for _ in range(num_layers):
                flat, i = divmod(flat, self.layer_size)
                idx.append(i)
            yield self.decode(idx[::-1])

    def sample(self, rng: np.random.Generator, num_layers: int) -> Configuration:
        """A configuration of ``num_layers`` layers drawn uniformly."""
        self._check_length(num_layers)
        return self.decode([int(i) for i in rng.integers(0, self.layer_size, size=num_layers)])

    def expand(self, config: Configuration) -> list[Configuration]:
        """``config`` followed by each possible next layer (``layer_size`` configurations)."""
        config = self.check(config)
        if len(config) >= self.max_layers:
            raise ValueError(f"SearchSpace: cannot expand a configuration of {len(config)} layers (max_layers={self.max_layers})")
        return [(*config, layer) for layer in self.layers()]

    def slots(self, config: Configuration) -> np.ndarray:
        """The slot choices of every layer: int64 ``[L, M + 2]`` (the surrogate's input)."""
        return np.asarray([self.layer_slots(layer) for layer in self.check(config)], dtype=np.int64)

    # ------------------------------------------------------------------ names and JSON

    def key(self, config: Configuration) -> str:
        """A readable unique name: layer keys joined by ``/``, e.g. ``"1-3-0:relu:concat/0-0-2:sigmoid:concat"``."""
        return "/".join(layer.key() for layer in self.check(config))

    def from_key(self, key: str) -> Configuration:
        """Inverse of :meth:`key`; a malformed key raises ``ValueError`` quoting it."""
        layers = []
        for part in str(key).split("/"):
            try:
                fl, act, comb = part.split(":")
                layers.append(FusionLayer(tuple(int(i) for i in fl.split("-")), act, comb))
            except ValueError:
                raise ValueError(f"SearchSpace: malformed configuration key {key!r} (layer {part!r})") from None
        return self.check(layers)

    def to_json(self, config: Configuration) -> list[dict[str, Any]]:
        return [layer.to_json() for layer in self.check(config)]

    def from_json(self, data: Sequence[Mapping[str, Any]]) -> Configuration:
        try:
            layers = [FusionLayer(tuple(d["feature_layers"]), d["activation"], d["combine"]) for d in data]
        except (KeyError, TypeError):
            raise ValueError(f"SearchSpace: malformed configuration {data!r}") from None
        return self.check(layers)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (stored with a search so a resume can check it is the same space)."""
        return {
            "num_feature_layers": list(self.num_feature_layers),
            "activations": list(self.activations),
            "combines": list(self.combines),
            "max_layers": self.max_layers,
        }

    def __repr__(self) -> str:
        return (
            f"SearchSpace(num_feature_layers={self.num_feature_layers}, activations={self.activations}, "
            f"combines={self.combines}, max_layers={self.max_layers})"
        )
