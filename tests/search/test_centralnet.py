"""CentralNet against an explicit computation with its own weights; its auxiliary losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mmfuse
from mmfuse.search.centralnet import CentralNet, CentralNetOutput, centralnet_loss


def _lin(layer, x):
    return x @ layer.weight.T + layer.bias


def reference(f: CentralNet, xs):
    """The docstring's equations, level by level, with plain loops and the module's weights."""
    m, n = len(xs), len(f.hidden_dims)
    act = torch.relu
    h = [[None] * (n + 1) for _ in range(m)]  # h[m][i]: level i + 1
    for k in range(m):
        prev = xs[k]
        for i in range(n + 1):
            prev = _lin(f.unimodal[k][i], prev)
            if i < n:
                prev = act(prev)
            h[k][i] = prev
    z = sum(f.a_modal[0, k] * h[k][0] for k in range(m))
    for i in range(1, n + 1):
        c = _lin(f.central[i - 1], z)
        if i < n:
            c = act(c)
        z = f.a_central[i - 1] * c + sum(f.a_modal[i, k] * h[k][i] for k in range(m))
    return z, [h[k][n] for k in range(m)]


@pytest.mark.parametrize("m, hidden", [(2, (6,)), (3, (6, 5)), (3, (4, 7, 3))])
def test_matches_the_reference_with_its_weights(m, hidden):
    torch.manual_seed(0)
    dims = (5, 7, 3)[:m]
    f = CentralNet(dims, 4, hidden_dims=hidden)
    with torch.no_grad():  # scalars away from their initial means
        f.a_modal.copy_(torch.randn_like(f.a_modal))
        f.a_central.copy_(torch.randn_like(f.a_central))
    xs = [torch.randn(6, d) for d in dims]
    z, uni = reference(f, xs)
    out = f.forward_with_aux(*xs)
    assert isinstance(out, CentralNetOutput) and len(out.unimodal) == m
    torch.testing.assert_close(out.fused, z)
    for a, b in zip(out.unimodal, uni):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(f(*xs), z)


def test_initial_scalars_are_means():
    f = CentralNet((5, 7, 3), 4, hidden_dims=(6, 5))
    torch.testing.assert_close(f.a_modal[0], torch.full((3,), 1 / 3))
    torch.testing.assert_close(f.a_modal[1:], torch.full((2, 3), 1 / 4))
    torch.testing.assert_close(f.a_central, torch.full((2,), 1 / 4))


def test_aux_losses():
    torch.manual_seed(1)
    f = CentralNet((5, 7, 3), 4, hidden_dims=(6,))
    xs = [torch.randn(8, d) for d in (5, 7, 3)]
    y = torch.randint(0, 4, (8,))
    out = f.forward_with_aux(*xs)
    central = F.cross_entropy(out.fused, y)
    uni = [F.cross_entropy(u, y) for u in out.unimodal]
    torch.testing.assert_close(centralnet_loss(out, y), central + sum(uni))
    torch.testing.assert_close(centralnet_loss(out, y, aux_weights=(0.5, 0.0, 2.0)), central + 0.5 * uni[0] + 2.0 * uni[2])
    torch.testing.assert_close(centralnet_loss(out, y, aux_weights=0.0), central)
    reg = centralnet_loss(out, torch.randn(8, 4), loss_fn=F.mse_loss)
    assert reg.dim() == 0
    with pytest.raises(ValueError, match="expected 3 aux_weights \\(one per modality\\), got 2"):
        centralnet_loss(out, y, aux_weights=(1.0, 1.0))


def test_aux_losses_reach_the_unimodal_heads_and_every_parameter_learns():
    torch.manual_seed(2)
    f = CentralNet((5, 7), 3, hidden_dims=(6, 4))
    xs = [torch.randn(8, 5), torch.randn(8, 7)]
    y = torch.randint(0, 3, (8,))
    # the unimodal losses alone train the unimodal networks and not the central one
    only_aux = f.forward_with_aux(*xs)
    sum(F.cross_entropy(u, y) for u in only_aux.unimodal).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in f.central.parameters())
    assert all(p.grad.abs().sum() > 0 for p in f.unimodal.parameters())
    f.zero_grad(set_to_none=True)
    centralnet_loss(f.forward_with_aux(*xs), y).backward()
    names = {n for n, _ in f.named_parameters()}
    assert {"a_modal", "a_central", "central.0.weight", "unimodal.1.2.bias"} <= names
    for n, p in f.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    assert sum(p.numel() for p in f.parameters()) == f.expected_num_parameters()
    # explicit count: unimodal (5+1)*6 + (6+1)*4 + (4+1)*3 and (7+1)*6 + 28 + 15; central 28 + 15; scalars 2*3 + 2
    assert f.expected_num_parameters() == (36 + 28 + 15) + (48 + 28 + 15) + (28 + 15) + 6 + 2


def test_registered_as_a_vector_fusion():
    info = mmfuse.fusion_info("centralnet")
    assert info.kind == "vector" and info.cls is CentralNet and "Vielzeuf" in info.paper
    assert info.family == "search" and info.accepts(2) and info.accepts(5)
    f = mmfuse.create_fusion("centralnet", in_dims=(3, 4), out_dim=2, **info.tiny)
    assert f(torch.randn(2, 3), torch.randn(2, 4)).shape == (2, 2)


def test_bad_input():
    f = CentralNet((5, 7), 3, hidden_dims=(4,))
    with pytest.raises(ValueError, match=r"centralnet: expected 2 inputs with last dims \(5, 7\)"):
        f.forward_with_aux(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="hidden_dims must be a non-empty list of positive ints, got \\(\\)"):
        CentralNet((5, 7), 3, hidden_dims=())
    with pytest.raises(ValueError, match="centralnet.*hidden_dims\\[1\\]"):
        CentralNet((5, 7), 3, hidden_dims=(4, 0))
    with pytest.raises(ValueError, match=r"centralnet: expected at least 2 input dims, got 1: \(5,\)"):
        CentralNet((5,), 3)
