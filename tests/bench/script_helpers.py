"""Load a script of benchmarks/ as a module, for the tests of its functions; a tiny from-pixels entry."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from mmfuse.bench.run import entry_config
from mmfuse.data import sort_of_clevr as soc
from mmfuse.models.task import build_model

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as the module ``name``, registered in ``sys.modules``
    first (a dataclass looks its module up there: without it a script with one failed to load
    when its test ran alone)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def pixel_entry(tmp_path: Path, **v: Any) -> tuple[Path, Path]:
    """An untrained from-pixels entry folder (config.json, last.ckpt) on a tiny Sort-of-CLEVR (4
    training and 5 test images): DAN over 4 plain CNN keypoints (no refinement, reconstruction,
    glimpse or standardisation unless ``v`` asks), the CNN settings changed by ``v``; every
    question answered with answer 0. Returns (folder, dataset root)."""
    root = soc.make_sort_of_clevr(tmp_path / "soc", seed=0, n_train=4, n_test=5)
    config = entry_config("dan", {"hidden_dim": 8, "hops": 1}, pixels=True, data_path=str(root))
    config["model"]["inputs"]["v"].update({"num_layers": 2, "refine_layers": 0, "channels": 4, "keypoints": 4,
                                           "reconstruction_weight": 0.0, "reconstruction_only": False,
                                           "keypoint_glimpse": 0, "keypoint_norm": False, **v})
    config["model"]["inputs"]["q"]["vocab_size"] = len(soc.WORD_VOCAB)
    config["model"]["task"]["num_outputs"] = len(soc.ANSWER_VOCAB)
    torch.manual_seed(0)
    model = build_model(config["model"])
    with torch.no_grad():
        head = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.zero_()
        head.bias.copy_(torch.arange(len(soc.ANSWER_VOCAB)) == 0)
    folder = tmp_path / "entry"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, folder / "last.ckpt")
    return folder, root
