"""mmfuse.viz.gallery and `mmfuse viz`: the maps drawn are the model's, one PNG per question."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mmfuse
from mmfuse.attention._base import AttentionOutput
from mmfuse.cli import main
from mmfuse.data import sort_of_clevr as soc
from mmfuse.viz.gallery import attention_gallery, attention_panels, gallery_data, select_questions


def direct_call(model_dir, root, index):
    """The model's output on test question ``index``, from a batch built here from the raw arrays."""
    a = soc.load_sort_of_clevr(root).splits["test"]
    img, q = divmod(index, a["qtype"].shape[1])
    length = int(a["question_len"][img, q])
    batch = {
        "regions": torch.from_numpy(a["regions"][img : img + 1]),
        "region_mask": torch.from_numpy(a["region_mask"][img : img + 1]),
        "question_tokens": torch.from_numpy(a["question_tokens"][img : img + 1, q, :length].astype(np.int64)),
        "question_mask": torch.ones(1, length, dtype=torch.bool),
    }
    with torch.no_grad():
        return mmfuse.load(model_dir)(batch), a, img, q


def test_dan_maps_are_the_models_hop_maps(dan_model, soc_root):
    items = gallery_data(dan_model, n=6, seed=1)
    assert len(items) == 6
    for item in items:
        out, a, img, q = direct_call(dan_model, soc_root, item.index)
        hops = out.attention.extras["v_attn_hops"][0].numpy()  # [2, K]
        words = out.attention.extras["q_attn_hops"][0].numpy()  # [2, T]
        assert item.region_labels == ["hop 1", "hop 2"] and item.word_labels == ["hop 1", "hop 2"]
        np.testing.assert_array_equal(item.region_maps, hops)
        np.testing.assert_array_equal(item.word_maps, words)
        assert not np.allclose(hops[0], hops[1])  # two different hops, not one map twice
        np.testing.assert_allclose(item.region_maps.sum(-1), 1.0, atol=1e-5)
        probs = torch.softmax(out.logits[0], -1)
        assert item.predicted == soc.ANSWER_VOCAB[int(probs.argmax())]
        assert item.probability == pytest.approx(float(probs.max()), abs=1e-6)
        assert item.answer == soc.ANSWER_VOCAB[int(a["answer"][img, q])]
        assert item.qtype == int(a["qtype"][img, q]) and item.relational == (item.qtype >= 3)
        assert item.words == soc.tokenize(item.question) and len(item.words) == item.word_maps.shape[1]
        assert item.question == " ".join(soc.WORD_VOCAB[t] for t in a["question_tokens"][img, q] if t)
        np.testing.assert_array_equal(item.image, a["images"][img])
        # each region row is drawn at its own object: the colour bit of the row names the object
        colour = a["regions"][img, :, :6].argmax(-1)
        np.testing.assert_array_equal(item.region_centres, a["object_xy"][img][colour])
        np.testing.assert_allclose(item.region_centres / 74.0, a["regions"][img, :, 8:], atol=1e-6)


def test_pixel_cells_are_drawn_over_the_pixels_they_see(pixel_cells_model, tmp_path):
    (item,) = gallery_data(pixel_cells_model, n=1)
    assert item.grid == (10, 10) and item.cell_size == 8.0 and item.region_centres is None  # 75 -> 38 -> 19 -> 10
    assert item.region_maps.shape == (2, 100)
    assert attention_gallery(pixel_cells_model, tmp_path / "viz", n=1)[0].stat().st_size > 0


def test_pixel_keypoints_are_ringed_where_they_are(pixel_keypoints_model, soc_root):
    items = gallery_data(pixel_keypoints_model, n=2)
    model = mmfuse.load(pixel_keypoints_model)
    a = soc.load_sort_of_clevr(soc_root).splits["test"]
    for item in items:
        assert item.grid is None and item.region_centres.shape == (5, 2) and item.region_maps.shape == (2, 5)
        image = torch.from_numpy(a["images"][item.image_index]).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            g = model.encoders["v"].convs(image)  # [1, C, 19, 19], cell (i, j) centred on pixel (4i, 4j)
            maps = model.encoders["v"].keypoint_maps(g, (75, 75))[0]  # [5, 361]
        pixels = torch.stack(torch.meshgrid(torch.arange(19.0), torch.arange(19.0), indexing="ij"), -1)
        expected = maps @ (4 * pixels.reshape(361, 2).flip(-1))  # expected (x, y) in pixels
        np.testing.assert_allclose(item.region_centres, expected.numpy(), atol=1e-4)


def test_san_hops_without_word_attention(san_model, soc_root):
    (item,) = gallery_data(san_model, n=1, seed=2)
    out, *_ = direct_call(san_model, soc_root, item.index)
    np.testing.assert_array_equal(item.region_maps, out.attention.v_attn[0].numpy())
    assert item.region_labels == ["hop 1", "hop 2"]
    assert item.word_maps is None and item.word_labels == []  # a bag-of-words vector: no word map


class _Fusion:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)


def test_panels_labels_and_lxmert_word_to_region_mean():
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2, 3, 4, generator=g)
    q = torch.rand(2, 3, 5, generator=g)
    region, r_lab, words, w_lab, _ = attention_panels(AttentionOutput(None, v, q, {}), _Fusion(glimpses=3))
    assert region is v and words is q and r_lab == w_lab == ["glimpse 1", "glimpse 2", "glimpse 3"]
    assert attention_panels(AttentionOutput(None, v, None, {}), _Fusion(hops=3))[1] == ["hop 1", "hop 2", "hop 3"]
    assert attention_panels(AttentionOutput(None, v, None, {}), _Fusion(glimpses=2))[1] == ["map 1", "map 2", "map 3"]
    # LXMERT: no region map; each layer's words-to-regions map averaged over the valid words
    q2v = torch.rand(2, 2, 5, 4, generator=g)  # [B, L, T, K]
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    region, labels, words, _, source = attention_panels(AttentionOutput(None, None, q[:, :1], {"q2v_attn": q2v}),
                                                        _Fusion(glimpses=1), mask)
    ref = torch.stack([torch.stack([q2v[b, l, : int(mask[b].sum())].mean(0) for l in range(2)]) for b in range(2)])
    torch.testing.assert_close(region, ref)
    assert labels == ["layer 1: words → regions", "layer 2: words → regions"] and "q2v_attn" in source


def test_selection_per_type_and_random():
    qtypes = np.tile(np.repeat(np.arange(6), 3), (5, 1))  # 5 images x 18 questions, 3 of each type
    picked = select_questions(qtypes, 6, seed=0)
    assert sorted(qtypes.reshape(-1)[picked]) == [0, 1, 2, 3, 4, 5]
    two = qtypes.reshape(-1)[select_questions(qtypes, 2, seed=4)]
    assert sorted(t >= 3 for t in two) == [False, True]  # one non-relational, one relational
    eight = select_questions(qtypes, 8, seed=0)
    assert len(set(eight)) == 8 and np.bincount(qtypes.reshape(-1)[eight], minlength=6).max() == 2
    assert select_questions(qtypes, 6, seed=0) == picked and select_questions(qtypes, 6, seed=1) != picked
    rand = select_questions(qtypes, 10, seed=0, per_type=False)
    assert len(set(rand)) == 10 and rand != select_questions(qtypes, 10, seed=1, per_type=False)
    assert len(select_questions(qtypes[:1], 100)) == 18  # capped at the split's size
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        select_questions(qtypes, 0)


def test_gallery_writes_one_png_per_question_and_an_index(dan_model, tmp_path):
    out = tmp_path / "viz"
    paths = attention_gallery(dan_model, out, n=3, seed=5)
    assert len(paths) == 3 and sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in paths), "index.md"])
    items = gallery_data(dan_model, n=3, seed=5)
    index = (out / "index.md").read_text()
    for path, item in zip(paths, items):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
        assert item.qtype_name in path.name and f"test{item.index}" in path.name
        assert f"[{path.name}]({path.name})" in index and item.question in index
    assert "dan" in index.splitlines()[0]


def test_vector_fusion_says_so_and_writes_nothing(concat_model, tmp_path, capsys):
    with pytest.raises(ValueError, match="vector fusion 'concat_mlp', which has no attention maps"):
        attention_gallery(concat_model, tmp_path / "out")
    assert main(["viz", str(concat_model), "--out", str(tmp_path / "cli")]) == 2
    assert "no attention maps" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cli").exists()


def test_cli(dan_model, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["viz", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["viz", str(dan_model), "--out", str(tmp_path / "g"), "--n", "2", "--split", "val", "--random"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(list((tmp_path / "g").glob("*.png"))) == 2 and lines[-1].endswith("index.md")
    assert all("_val" in line for line in lines[:2])
    with pytest.raises(SystemExit):
        main(["viz", str(dan_model), "--n", "0"])
    assert "expected an int >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("fixture", ["pixel_cells_model", "pixel_keypoints_model"])
def test_predict_draws_pixel_regions_where_they_look(fixture, request, soc_root, tmp_path, monkeypatch):
    from PIL import Image

    import mmfuse.viz
    from mmfuse.predict import predict

    folder = request.getfixturevalue(fixture)
    a = soc.load_sort_of_clevr(soc_root).splits["test"]
    Image.fromarray(a["images"][0]).save(tmp_path / "scene.png")
    drawn = {}
    real = mmfuse.viz.plot_attention
    monkeypatch.setattr(mmfuse.viz, "plot_attention", lambda img, path, **kw: drawn.update(kw) or real(img, path, **kw))
    out = predict(folder, tmp_path / "scene.png", "Is the red object on the left?", attention_path=tmp_path / "a.png")
    assert out["attention"].stat().st_size > 5000
    if fixture == "pixel_cells_model":
        assert drawn["grid"] == (10, 10) and drawn["cell_size"] == 8.0 and drawn["region_weights"].shape == (100,)
    else:
        image = torch.from_numpy(a["images"][0]).permute(2, 0, 1)[None].float() / 255
        xy = mmfuse.load(folder).encoders["v"].keypoint_positions(image)[0]  # (-1, 1): pixel p at (2p + 1) / 75 - 1
        np.testing.assert_allclose(drawn["region_centres"], ((xy + 1) * 75 - 1).div(2).detach().numpy(), atol=1e-4)
        assert drawn["region_weights"].shape == (5,) and "grid" not in drawn


@pytest.mark.parametrize("cell_size, extent", [(16.0, (-8.0, 72.0, 72.0, -8.0)), (0.0, (-0.5, 74.5, 74.5, -0.5))])
def test_cells_heat_map_covers_the_pixels_they_see(cell_size, extent):
    """5 x 5 cells of a stride-16 CNN sit on pixels 0, 16, .., 64 (each spanning 16); without a
    cell size they are spread evenly over the 75-pixel image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmfuse.viz.gallery import GalleryItem, _draw_regions

    item = GalleryItem(index=0, image_index=0, qtype=0, qtype_name="shape", relational=False, question="q",
                       words=["q"], image=np.zeros((75, 75, 3), np.uint8), answer="yes", predicted="yes",
                       probability=1.0, region_maps=np.full((1, 25), 0.04), region_labels=["attention"],
                       region_valid=np.ones(25, bool), region_centres=None, grid=(5, 5), word_maps=None,
                       word_labels=[], source="test", cell_size=cell_size)
    fig, ax = plt.subplots()
    _draw_regions(ax, item, item.region_maps[0])
    np.testing.assert_allclose(ax.images[-1].get_extent(), extent)
    plt.close(fig)
