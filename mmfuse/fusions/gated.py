"""Attention-like vector fusions: gating, multimodal residual learning, dynamic parameters.

Papers:
- Arevalo et al., "Gated multimodal units for information fusion", ICLR workshop 2017
  (reference code: johnarevalo/gmu-mmimdb).
- Kim et al., "Multimodal residual learning for visual QA", NIPS 2016 (jnhwkim/nips-mrn-vqa).
- Noh, Seo & Han, "Image question answering using convolutional neural network with dynamic
  parameter prediction", CVPR 2016 (DPPnet).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._registry import register_fusion
from ..functional import check_positive
from ..layers import ConcatLinear, dropout_or_identity
from ._base import VectorFusion

__all__ = ["GMU", "MRN", "DPP"]


@register_fusion(
    "gmu",
    kind="vector",
    modalities="2+",
    paper="Arevalo et al., ICLR-W 2017 (Gated Multimodal Unit)",
)
class GMU(VectorFusion):
    """Gated Multimodal Unit: a learned, feature-wise convex mix of the modalities.

    ``h_m = tanh(W_m x_m)``. Two modalities (the bimodal unit of the paper):
    ``z = sigmoid(W_z [x_1; x_2])``, ``h = z ⊙ h_1 + (1 − z) ⊙ h_2``. M modalities (the paper's
    general form): ``z_m = sigmoid(W_zm [x_1; ..; x_M])``, ``h = sum_m z_m ⊙ h_m``; with
    ``gate="softmax"`` the gates are a softmax over the modalities per feature instead.

    The paper's equations and its code have no biases (``bias=False``). The authors' code gates
    the projected features (``W_z`` applied to ``[W_1 x_1; W_2 x_2]``); this follows the paper
    and gates the raw inputs.

    Args:
        in_dims: ``(D_1, .., D_M)``, M >= 2.
        out_dim: width of ``h``.
        gate: ``"sigmoid"`` (the paper) or ``"softmax"`` (over modalities).
        bias: add biases to ``W_m`` and ``W_z``.
        dropout_output: dropout on ``h``.

    Parameters: ``sum_m (D_m + b) * out_dim + (sum_m D_m + b) * G`` with ``b = int(bias)``,
    ``G = out_dim`` for two modalities with sigmoid gates, else ``M * out_dim``.

    Example::

        f = GMU((3, 5, 7), 4)
        h = f(torch.randn(2, 6, 3), torch.randn(2, 6, 5), torch.randn(2, 1, 7))  # [2, 6, 4]
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        gate: str = "sigmoid",
        bias: bool = False,
        dropout_output: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_dims, out_dim, dropout_output=dropout_output)
        if gate not in ("sigmoid", "softmax"):
            raise ValueError(f"gmu: gate must be 'sigmoid' or 'softmax', got {gate!r}")
        self.gate, self.bias = gate, bool(bias)
        kw = dict(device=device, dtype=dtype)
        self.projections = nn.ModuleList(nn.Linear(d, out_dim, bias=bias, **kw) for d in self.in_dims)
        self.single_gate = gate == "sigmoid" and len(self.in_dims) == 2
        gates = out_dim if self.single_gate else len(self.in_dims) * out_dim
        self.gate_proj = ConcatLinear(self.in_dims, gates, bias=bias, **kw)
        self.drop_out = dropout_or_identity(dropout_output)

    def gates(self, *xs: Tensor) -> Tensor:
        """The gates ``z``: ``Tensor[..., out_dim]`` (bimodal sigmoid) or ``Tensor[..., M, out_dim]``."""
        logits = self.gate_proj(*xs)
        if self.single_gate:
            return torch.sigmoid(logits)
        logits = logits.unflatten(-1, (len(self.in_dims), self.out_dim))  # [..., M, out]
        return torch.sigmoid(logits) if self.gate == "sigmoid" else torch.softmax(logits, dim=-2)

    def fuse(self, *xs: Tensor) -> Tensor:
        hs = [torch.tanh(p(x)) for p, x in zip(self.projections, xs)]
        z = self.gates(*xs)
        if self.single_gate:
            h = z * hs[0] + (1 - z) * hs[1]
        else:
            h = None
            for m, hm in enumerate(hs):
                term = z[..., m, :] * hm
                h = term if h is None else h + term
        return self.drop_out(h)

    def expected_num_parameters(self) -> int:
        b, o = int(self.bias), self.out_dim
        g = o if self.single_gate else len(self.in_dims) * o
        return sum((d + b) * o for d in self.in_dims) + (sum(self.in_dims) + b) * g


@register_fusion(
    "mrn",
    kind="vector",
    modalities="2",
    paper="Kim et al., NIPS 2016 (Multimodal Residual Networks)",
)
class MRN(VectorFusion):
    """Multimodal Residual Network: residual learning on the question, image as the joint branch.

    Inputs ``(v, q)``. ``H_0 = q``; for ``l = 1..L``:
    ``H_l = S_l(H_{l-1}) + F_l(H_{l-1}, v)`` with the linear shortcut ``S_l`` and the joint
    residual ``F_l(h, v) = tanh(W_1 h) ⊙ tanh(W_3 tanh(W_2 v))`` (the image branch has two
    layers, ``W_2: Dv -> Dv``, as in the paper's Figure 3(b) and its code). The output is
    ``H_L`` (the answer classifier is the task head's job). Dropout ``dropout_input`` precedes
    every Linear, as in jnhwkim/nips-mrn-vqa (0.5).

    Args:
        in_dims: ``(Dv, Dq)``.
        out_dim: width of ``H`` (the paper's common embedding, 1200).
        num_layers: L (3 in the paper).
        dropout_input: before every Linear.

    Parameters: per layer ``l`` with input width ``h_l`` (``Dq`` for ``l = 1``, else
    ``out_dim``): ``2 (h_l + 1) out_dim + (Dv + 1) Dv + (Dv + 1) out_dim``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        num_layers: int = 3,
        dropout_input: float = 0.5,
        device=None,
        dtype=None,
    ):
        super().__init__(in_dims, out_dim, dropout_input=dropout_input)
        check_positive("mrn", num_layers=num_layers)
        self.num_layers = num_layers
        dv, dq = self.in_dims
        kw = dict(device=device, dtype=dtype)
        widths = [dq] + [out_dim] * (num_layers - 1)
        self.q_proj = nn.ModuleList(nn.Linear(h, out_dim, **kw) for h in widths)  # W_1
        self.v_hidden = nn.ModuleList(nn.Linear(dv, dv, **kw) for _ in widths)  # W_2
        self.v_proj = nn.ModuleList(nn.Linear(dv, out_dim, **kw) for _ in widths)  # W_3
        self.shortcut = nn.ModuleList(nn.Linear(h, out_dim, **kw) for h in widths)  # S_l
        self.drop = dropout_or_identity(dropout_input)

    def fuse(self, v: Tensor, q: Tensor) -> Tensor:
        h = q
        for w1, w2, w3, s in zip(self.q_proj, self.v_hidden, self.v_proj, self.shortcut):
            v_branch = torch.tanh(w3(self.drop(torch.tanh(w2(self.drop(v))))))
            h = s(self.drop(h)) + torch.tanh(w1(self.drop(h))) * v_branch
        return h

    def expected_num_parameters(self) -> int:
        dv, dq = self.in_dims
        o = self.out_dim
        widths = [dq] + [o] * (self.num_layers - 1)
        return sum(2 * (h + 1) * o + (dv + 1) * dv + (dv + 1) * o for h in widths)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_layers={self.num_layers}"


@register_fusion(
    "dpp",
    kind="vector",
    modalities="2",
    paper="Noh et al., CVPR 2016 (DPPnet)",
    tiny={"hash_size": 16},
)
class DPP(VectorFusion):
    """Dynamic parameter layer with weight hashing (DPPnet).

    Inputs ``(x, q)``: ``x`` the features transformed (the image), ``q`` the features that
    predict the weights (the question). A parameter vector ``p = W_p q + b_p`` of ``hash_size``
    entries fills the dynamic weight matrix through fixed hashes,
    ``W(q)[m, n] = p[h(m, n)] · ξ(m, n)`` with ``h: [out_dim] × [Dx] -> [0, hash_size)`` and the
    sign hash ``ξ ∈ {−1, +1}``; the output is ``z = W(q) x + b`` with a static learned bias ``b``.
    The hashes are drawn once from ``hash_seed`` and saved as buffers (part of the state dict).

    Memory: the dynamic weights take ``N · out_dim · Dx`` floats for ``N`` distinct questions
    (the paper: P = 40000, a 2000 × 2000 dynamic layer).

    Args:
        in_dims: ``(Dx, Dq)``.
        out_dim: rows of the dynamic matrix.
        hash_size: P, the number of free parameters predicted per question.
        hash_seed: seed of the hash functions.

    Parameters: ``(Dq + 1) * hash_size + out_dim``.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hash_size: int = 40000,
        hash_seed: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_dims, out_dim)
        check_positive("dpp", hash_size=hash_size)
        self.hash_size, self.hash_seed = hash_size, hash_seed
        dx, dq = self.in_dims
        kw = dict(device=device, dtype=dtype)
        self.param_net = nn.Linear(dq, hash_size, **kw)
        self.bias = nn.Parameter(torch.zeros(out_dim, **kw))
        gen = torch.Generator().manual_seed(hash_seed)
        index = torch.randint(hash_size, (out_dim * dx,), generator=gen)
        sign = torch.randint(2, (out_dim, dx), generator=gen) * 2 - 1
        self.register_buffer("hash_index", index.to(device))
        self.register_buffer("hash_sign", sign.to(device=device, dtype=dtype or torch.get_default_dtype()))

    def dynamic_weight(self, q: Tensor) -> Tensor:
        """``W(q)``: Tensor[..., Dq] -> Tensor[..., out_dim, Dx]."""
        p = self.param_net(q)  # [..., P]
        w = p.index_select(-1, self.hash_index) if p.dim() == 1 else p[..., self.hash_index]
        return w.unflatten(-1, (self.out_dim, self.in_dims[0])) * self.hash_sign.to(p.dtype)

    def fuse(self, x: Tensor, q: Tensor) -> Tensor:
        w = self.dynamic_weight(q)  # [..., out, Dx]
        return torch.einsum("...on,...n->...o", w, x) + self.bias

    def expected_num_parameters(self) -> int:
        return (self.in_dims[1] + 1) * self.hash_size + self.out_dim

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hash_size={self.hash_size}"
