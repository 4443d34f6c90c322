"""Answer one question about one image with a saved model (``mmfuse predict``).

Works for models trained on Sort-of-CLEVR (from pixels, or on object-level region features:
the objects are read back from the image with
:func:`mmfuse.data.sort_of_clevr.detect_objects`) and on image-folder VQA (pixels).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import sort_of_clevr as soc

__all__ = ["predict"]


def _read_image(path: str | os.PathLike[str], size: int | None) -> np.ndarray:
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"predict: image {str(p)!r} does not exist")
    with Image.open(p) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _tokens(question: str, vocab: list[str]) -> tuple[torch.Tensor, list[str]]:
    words = soc.tokenize(question)
    index = {w: i for i, w in enumerate(vocab)}
    unk = index.get("<unk>", 1)
    ids = [index.get(w, unk) for w in words]
    if not ids:
        raise ValueError("predict: the question has no words")
    return torch.tensor([ids]), words


def _build_batch(config: dict[str, Any], info: dict[str, Any], image: np.ndarray, question: str):
    """The model's batch for one (image, question), and what the overlay needs."""
    batch: dict[str, torch.Tensor] = {}
    extra: dict[str, Any] = {"words": soc.tokenize(question)}
    keys = {spec.get("key") for spec in config["model"]["inputs"].values()}
    if "image" in keys:
        batch["image"] = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)
    if "regions" in keys:
        if info.get("dataset") != "sort-of-clevr":
            raise ValueError("predict: region features can only be read back from Sort-of-CLEVR images")
        det = soc.detect_objects(image)
        if not det["region_mask"].any():
            raise ValueError("predict: no Sort-of-CLEVR object found in the image")
        batch["regions"] = torch.from_numpy(det["regions"]).unsqueeze(0)
        batch["region_mask"] = torch.from_numpy(det["region_mask"]).unsqueeze(0)
        extra["centres"] = det["centres"]
    if "question_tokens" in keys:
        tokens, words = _tokens(question, list(info.get("word_vocab") or soc.WORD_VOCAB))
        batch["question_tokens"] = tokens
        batch["question_mask"] = torch.ones_like(tokens, dtype=torch.bool)
        extra["words"] = words
    if "question_bits" in keys:
        batch["question_bits"] = torch.from_numpy(soc.question_bits(*soc.parse_question(question))).unsqueeze(0)
    return batch, extra


@torch.no_grad()
def predict(
    checkpoint: str | os.PathLike[str],
    image: str | os.PathLike[str],
    question: str,
    *,
    attention_path: str | os.PathLike[str] | None = None,
    top: int = 3,
) -> dict[str, Any]:
    """Answer ``question`` about ``image``.

    Returns:
        ``{"answer": str, "top": [(answer, probability), ...], "attention": path or None}``.
    """
    from .train.checkpoint import load, read_config, read_info

    model = load(checkpoint).eval()
    config, info = read_config(checkpoint), read_info(checkpoint)
    dataset = info.get("dataset")
    if dataset not in ("sort-of-clevr", "image-folder"):
        raise ValueError(f"predict: models trained on {dataset!r} take no image file; expected sort-of-clevr or image-folder")
    size = soc.IMAGE_SIZE if dataset == "sort-of-clevr" else int(info.get("inputs", {}).get("image", {}).get("image_size", 224))
    img = _read_image(image, size)
    batch, extra = _build_batch(config, info, img, question)
    out = model(batch)
    probs = torch.softmax(out.logits.float(), dim=-1)[0]
    vocab = list(info.get("answer_vocab") or [str(i) for i in range(probs.numel())])
    best = torch.topk(probs, k=min(top, probs.numel()))
    ranked = [(vocab[i], float(p)) for p, i in zip(best.values.tolist(), best.indices.tolist())]
    saved = None
    if attention_path is not None:
        from .models.encoders import CNNEncoder
        from .viz import cnn_layout, plot_attention

        att = out.attention
        kwargs: dict[str, Any] = {}
        if att is not None and att.v_attn is not None:
            weights = att.v_attn[0].float().mean(0).numpy()
            cnn = next((model.encoders[n] for n, spec in config["model"]["inputs"].items()
                        if spec.get("key") == "image" and isinstance(model.encoders[n], CNNEncoder)), None)
            if "centres" in extra:
                kwargs.update(region_weights=weights, region_centres=extra["centres"])
            elif cnn is not None:  # keypoints where they are, or cells over the pixels they see
                kwargs.update(region_weights=weights, **cnn_layout(cnn, batch["image"]))
            else:
                side = int(round(len(weights) ** 0.5))
                if side * side == len(weights):
                    kwargs.update(region_weights=weights, grid=(side, side))
        if att is not None and att.q_attn is not None and att.q_attn.shape[-1] == len(extra["words"]):
            kwargs["word_weights"] = att.q_attn[0].float().mean(0).numpy()
        title = f"{question}\n{ranked[0][0]} ({100 * ranked[0][1]:.0f}%)"
        if att is None:
            title += "  [this fusion has no attention maps]"
        saved = plot_attention(img, attention_path, words=extra["words"], title=title, **kwargs)
    return {"answer": ranked[0][0], "top": ranked, "attention": saved}
