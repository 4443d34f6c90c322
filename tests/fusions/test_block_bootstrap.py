"""Numerical agreement with block.bootstrap.pytorch 0.1.6 at its VQA2 configurations.

Optional: skipped where block is not installed (it is not a dependency, and CI does not
install it). To run it:
``pip install --no-deps block-bootstrap-pytorch==0.1.6 bootstrap.pytorch``.
Weights are copied from block's modules into mmfuse's; both run in eval mode on 2-D inputs
(block's normalisation and reshapes assume ``[B, D]``). block's MCB calls the removed
``torch.rfft`` and is not compared here (tests/fusions/test_bilinear.py checks MCB against an
explicit count sketch and circular convolution instead).
"""

from __future__ import annotations

import pytest
import torch

import mmfuse

bf = pytest.importorskip("block.models.networks.fusions.fusions", reason="block.bootstrap.pytorch is not installed")

IN_DIMS, OUT = (2400, 2048), 3000


def _copy(dst: torch.nn.Module, src: torch.nn.Module):
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


def _pair(name):
    """(block module, mmfuse module with block's weights) for one fusion."""
    torch.manual_seed(0)
    if name == "linear_sum":
        b = bf.LinearSum(list(IN_DIMS), OUT, mm_dim=1200)
        m = mmfuse.create_fusion(name, in_dims=IN_DIMS, out_dim=OUT, hidden_dim=1200, activation="relu", output_activation="relu")
        for dst, src in zip(m.inputs.linears, (b.linear0, b.linear1)):
            _copy(dst, src)
        _copy(m.head.linear, b.linear_out)
    elif name == "concat_mlp":
        b = bf.ConcatMLP(list(IN_DIMS), OUT, dimensions=[1600, 1600])
        m = mmfuse.create_fusion(name, in_dims=IN_DIMS, out_dim=OUT, hidden_dims=(1600, 1600))
        ours = [m.first] + [l for l in m.rest.modules() if isinstance(l, torch.nn.Linear)]
        for dst, src in zip(ours, b.mlp.linears):
            _copy(dst, src)
    elif name == "mlb":
        b = bf.MLB(list(IN_DIMS), OUT, mm_dim=1200)
        m = mmfuse.create_fusion(
            name, in_dims=IN_DIMS, out_dim=OUT, hidden_dim=1200, activation="relu", output_activation="relu",
            dropout_input=0.0, dropout_pre_lin=0.0,
        )
        for dst, src in zip(m.inputs.linears, (b.linear0, b.linear1)):
            _copy(dst, src)
        _copy(m.head.linear, b.linear_out)
    elif name in ("mfb", "mfh"):
        hidden = 1000 if name == "mfb" else 340
        b = getattr(bf, name.upper())(list(IN_DIMS), OUT, mm_dim=hidden, factor=5, normalize=True)
        m = mmfuse.create_fusion(
            name, in_dims=IN_DIMS, out_dim=OUT, hidden_dim=hidden, factor=5, activation="relu",
            output_activation="relu", normalize=True, dropout_expanded=0.0,
        )
        srcs = [(b.linear0,), (b.linear1,)] if name == "mfb" else [(b.linear0_0, b.linear0_1), (b.linear1_0, b.linear1_1)]
        with torch.no_grad():
            for dst, group in zip(m.inputs.linears, srcs):
                dst.weight.copy_(torch.cat([s.weight for s in group]))
                dst.bias.copy_(torch.cat([s.bias for s in group]))
        _copy(m.head.linear, b.linear_out)
    elif name == "mutan":
        b = bf.Mutan(list(IN_DIMS), OUT, mm_dim=700, rank=10, normalize=True)
        m = mmfuse.create_fusion(
            name, in_dims=IN_DIMS, out_dim=OUT, hidden_dim=700, rank=10, activation=None, normalize=True,
            dropout_input=0.0, dropout_pre_lin=0.0,
        )
        for dst, src in zip(m.inputs.linears, (b.linear0, b.linear1)):
            _copy(dst, src)
        for dst, src in zip(m.rank_terms, (b.merge_linear0, b.merge_linear1)):
            _copy(dst, src)
        _copy(m.head.linear, b.linear_out)
    elif name == "tucker":
        b = bf.Tucker(list(IN_DIMS), OUT, mm_dim=235, normalize=True)
        m = mmfuse.create_fusion(name, in_dims=IN_DIMS, out_dim=OUT, hidden_dim=235, activation=None, normalize=True)
        for dst, src in zip(m.inputs.linears, (b.linear0, b.linear1)):
            _copy(dst, src)
        with torch.no_grad():
            m.core_weight.copy_(b.bilinear.weight)
            m.core_bias.copy_(b.bilinear.bias)
        _copy(m.head.linear, b.linear_out)
    elif name in ("block", "block_tucker"):
        if name == "block":
            b = bf.Block(list(IN_DIMS), OUT, mm_dim=1600, chunks=18, rank=15, dropout_input=0.1)
            m = mmfuse.create_fusion(name, in_dims=IN_DIMS, out_dim=OUT, hidden_dim=1600, chunks=18, rank=15)
        else:
            b = bf.BlockTucker(list(IN_DIMS), OUT, mm_dim=1800, chunks=10, dropout_input=0.1)
            m = mmfuse.create_fusion(name, in_dims=IN_DIMS, out_dim=OUT, hidden_dim=1800, chunks=10)
        assert m.sizes == b.sizes_list
        for dst, src in zip(m.inputs.linears, (b.linear0, b.linear1)):
            _copy(dst, src)
        _copy(m.head.linear, b.linear_out)
        c = 0
        with torch.no_grad():
            for g, (count, _) in enumerate(m.groups):
                for i in range(count):
                    if name == "block":
                        for mod, src in zip(m.merge[g], (b.merge_linears0[c], b.merge_linears1[c])):
                            mod.weight[i].copy_(src.weight.T)
                            mod.bias[i].copy_(src.bias)
                    else:
                        m.core_weights[g][i].copy_(b.bilinears[c].weight)
                        m.core_biases[g][i].copy_(b.bilinears[c].bias)
                    c += 1
    else:  # pragma: no cover
        raise KeyError(name)
    return b.eval(), m.eval()


@pytest.mark.parametrize(
    "name", ["linear_sum", "concat_mlp", "mlb", "mfb", "mfh", "mutan", "tucker", "block", "block_tucker"]
)
def test_outputs_agree_with_block_bootstrap(name):
    b, m = _pair(name)
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in b.parameters())
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(8, d, generator=g) for d in IN_DIMS]
    with torch.no_grad():
        ref = b([t.clone() for t in x])
        out = m(*x)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
