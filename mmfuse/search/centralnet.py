"""CentralNet: multilayer fusion through a central network of learned weighted sums.

Paper: Vielzeuf, Lechervy, Pateux & Jurie, "CentralNet: a Multilayer Approach for Multimodal
Fusion", ECCV Workshops 2018. Each modality has its own network; a central network runs beside
them, and each of its layers takes a weighted sum, with learned scalars, of its own previous
layer and the unimodal layers at the same depth::

    z_i = a^c_i c_i + Σ_m a^m_i h^m_i,        c_{i+1} = f_{i+1}(z_i)

Training minimises the central loss plus the unimodal losses (``loss = L_c + Σ_m β_m L_m``),
which keeps every unimodal network a classifier of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import register_fusion
from ..fusions._base import VectorFusion, linear_params
from ..functional import check_inputs, check_positive
from ..layers import ActivationArg, make_activation

__all__ = ["CentralNet", "CentralNetOutput", "centralnet_loss"]


class CentralNetOutput(NamedTuple):
    """``fused``: the central output ``Tensor[..., out_dim]``; ``unimodal``: each modality's own
    output ``Tensor[..., out_dim]`` (its leading dims, before broadcasting)."""

    fused: Tensor
    unimodal: tuple[Tensor, ...]


@register_fusion(
    "centralnet",
    kind="vector",
    modalities="2+",
    paper="Vielzeuf et al., ECCV Workshops 2018 (CentralNet)",
    tiny={"hidden_dims": (6, 5)},
)
class CentralNet(VectorFusion):
    """Unimodal MLPs and a central MLP fused at every depth by learned weighted sums.

    With ``H = hidden_dims`` (n levels) and level n + 1 the output (width ``out_dim``)::

        unimodal:  h^m_1 = σ(W^m_1 x_m),  h^m_i = σ(W^m_i h^m_{i-1})  (i <= n),  h^m_{n+1} = W^m_{n+1} h^m_n
        central:   z_1 = Σ_m a^m_1 h^m_1
                   c_i = σ(U_i z_{i-1})  (2 <= i <= n),  c_{n+1} = U_{n+1} z_n
                   z_i = a^c_i c_i + Σ_m a^m_i h^m_i
        output:    z_{n+1};  the unimodal outputs h^m_{n+1} feed the auxiliary losses

    (every W, U has a bias). There is no central term at level 1: the central network starts
    from the weighted sum of the first unimodal layers (its ``h^c_1`` would be 0). The last level
    fuses the networks' outputs, so every unimodal weight reaches the central output; where the
    paper's text leaves the output level open, this is our reading of its figure 1. The scalars
    start at ``1 / terms`` of their level (a mean) and are free (not normalised), as in the paper.

    Use ``out_dim`` = number of classes to read the outputs as logits, as the paper does, and
    :func:`centralnet_loss` for ``L_c + Σ_m β_m L_m``; as a plain vector fusion
    (``forward``) it returns ``z_{n+1}`` only. In a task model (:class:`mmfuse.models.TaskModel`) the
    unimodal outputs also pass through the model's head (``ModelOutput.aux_logits``) and the trainer
    adds ``train.aux_loss_weight`` times their losses.

    Args:
        in_dims: ``(D_1, .., D_M)``, M >= 2; out_dim: width of every output.
        hidden_dims: widths of the n hidden levels (the same for every network), n >= 1.
        activation: σ.

    Shapes: ``Tensor[..., D_m]`` each -> ``Tensor[..., out_dim]``; :meth:`forward_with_aux` also
    gives each modality's ``Tensor[..., out_dim]``.

    Parameters: ``Σ_m [(D_m + 1) H_1 + Σ_{i=2..n} (H_{i-1} + 1) H_i + (H_n + 1) out_dim]``
    ``+ Σ_{i=2..n} (H_{i-1} + 1) H_i + (H_n + 1) out_dim + M (n + 1) + n``.

    Example::

        f = CentralNet((16, 16, 16), out_dim=2, hidden_dims=(64, 32))
        out = f.forward_with_aux(x0, x1, x2)       # out.fused [B, 2], out.unimodal: 3 x [B, 2]
        loss = centralnet_loss(out, labels)
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_dim: int,
        *,
        hidden_dims: Sequence[int] = (64, 64),
        activation: ActivationArg = "relu",
        device=None,
        dtype=None,
    ):
        super().__init__(in_dims, out_dim)
        name = self.fusion_name
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence) or not hidden_dims:
            raise ValueError(f"{name}: hidden_dims must be a non-empty list of positive ints, got {hidden_dims!r}")
        self.hidden_dims = tuple(hidden_dims)
        check_positive(name, **{f"hidden_dims[{i}]": d for i, d in enumerate(self.hidden_dims)})
        kw = dict(device=device, dtype=dtype)
        levels = (*self.hidden_dims, out_dim)  # widths of levels 1 .. n + 1
        self.unimodal = nn.ModuleList(
            nn.ModuleList(nn.Linear(a, b, **kw) for a, b in zip((d, *levels[:-1]), levels)) for d in self.in_dims
        )
        self.central = nn.ModuleList(nn.Linear(a, b, **kw) for a, b in zip(levels[:-1], levels[1:]))
        m, n = len(self.in_dims), len(self.hidden_dims)
        # a_modal[i, m] = a^m_{i+1}; a_central[i] = a^c_{i+2}
        self.a_modal = nn.Parameter(torch.cat([torch.full((1, m), 1.0 / m, **kw), torch.full((n, m), 1.0 / (m + 1), **kw)]))
        self.a_central = nn.Parameter(torch.full((n,), 1.0 / (m + 1), **kw))
        self.activation = make_activation(activation, name)

    def _run(self, xs: Sequence[Tensor]) -> CentralNetOutput:
        n = len(self.hidden_dims)
        hs = list(xs)
        z: Tensor | None = None
        for i in range(n + 1):  # level i + 1
            last = i == n
            hs = [layer[i](h) for layer, h in zip(self.unimodal, hs)]
            if not last:
                hs = [self.activation(h) for h in hs]
            modal = sum(self.a_modal[i, m] * h for m, h in enumerate(hs))
            if z is None:
                z = modal
            else:
                c = self.central[i - 1](z)
                if not last:
                    c = self.activation(c)
                z = self.a_central[i - 1] * c + modal
        return CentralNetOutput(z, tuple(hs))

    def fuse(self, *xs: Tensor) -> Tensor:
        return self._run(xs).fused

    def forward_with_aux(self, *xs: Tensor) -> CentralNetOutput:
        """The central output and every modality's own output (for the auxiliary losses)."""
        check_inputs(self.fusion_name, xs, self.in_dims)
        return self._run(xs)

    def expected_num_parameters(self) -> int:
        levels = (*self.hidden_dims, self.out_dim)
        chain = sum(linear_params(a, b) for a, b in zip(levels[:-1], levels[1:]))
        unimodal = sum(linear_params(d, levels[0]) + chain for d in self.in_dims)
        m, n = len(self.in_dims), len(self.hidden_dims)
        return unimodal + chain + m * (n + 1) + n

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden_dims={self.hidden_dims}"


def centralnet_loss(
    output: CentralNetOutput,
    target: Tensor,
    aux_weights: float | Sequence[float] = 1.0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> Tensor:
    """``L_c + Σ_m β_m L_m``: the loss of the central output plus the weighted unimodal losses.

    Args:
        output: from :meth:`CentralNet.forward_with_aux` (outputs read as logits ``[B, C]``).
        target: what ``loss_fn`` takes, e.g. class ids ``Tensor[B]``.
        aux_weights: β, one float for every modality or one per modality.
        loss_fn: ``(prediction, target) -> scalar``; default cross-entropy.
    """
    m = len(output.unimodal)
    betas = [float(aux_weights)] * m if isinstance(aux_weights, (int, float)) else [float(b) for b in aux_weights]
    if len(betas) != m:
        raise ValueError(f"centralnet_loss: expected {m} aux_weights (one per modality), got {len(betas)}")
    loss = loss_fn(output.fused, target)
    for beta, out in zip(betas, output.unimodal):
        if beta:
            loss = loss + beta * loss_fn(out, target)
    return loss
