"""Resume checkpoints (``last.ckpt``): atomic writes, periodic saves, safe reads.

Lightning's own ``_atomic_save`` writes through fsspec's transaction: into a temp file under the
system temp folder, then ``shutil.move`` onto the target, which copies (not renames) when the
temp folder is on another filesystem, and never fsyncs. :class:`AtomicCheckpointIO` writes the
temp file next to the target, fsyncs it and renames it with ``os.replace``, so a SIGKILL at any
moment leaves the previous ``last.ckpt`` or the new one, whole.

Everything mmfuse puts in the checkpoint is tensors, numbers, strings, lists and dicts (the
config, the data loader position, the LR schedule's fields), so it loads with
``torch.load(..., weights_only=True)``; ``train`` resumes with ``trainer.fit(..., weights_only=True)``.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from mmfuse.data._io import atomic_write_bytes

__all__ = ["AtomicCheckpointIO", "PeriodicCheckpoint", "read_resume_state"]

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into memory, then temp file in the same folder + fsync + ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint: storage_options are not supported")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(path), buffer.getbuffer())

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = True) -> dict[str, Any]:
        if weights_only is None:
            weights_only = True
        return super().load_checkpoint(path, map_location=map_location or (lambda storage, loc: storage),
                                       weights_only=weights_only)


def read_resume_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A resume checkpoint's contents, read with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        raise ValueError(f"{path}: not a readable resume checkpoint ({type(err).__name__}: {err})") from err


class PeriodicCheckpoint(Checkpoint):
    """Saves ``<folder>/last.ckpt`` every ``every_n_steps`` optimizer steps, after each validation
    at an epoch end, and when training ends.

    A ``Checkpoint`` subclass, so Lightning runs it after the other callbacks (early stopping has
    updated its state when the file is written) and does not add its default ``ModelCheckpoint``.
    """

    def __init__(self, folder: str | os.PathLike[str], every_n_steps: int | None = None) -> None:
        super().__init__()
        self.path = Path(folder) / LAST
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    def _save(self, trainer: L.Trainer, *, force: bool = False) -> None:
        if trainer.global_step == self._saved_step and not force:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # every rank calls it; rank 0 writes
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        n = self.every_n_steps
        if n and trainer.global_step > 0 and trainer.global_step % n == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # at the end of an epoch only (validation may also run mid-epoch); after validation, so
        # a resume does not run it again
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._save(trainer, force=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"saved_step": self._saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_step = int(state_dict.get("saved_step", -1))
