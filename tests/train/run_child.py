"""Runs ``mmfuse.train.train`` in its own process, for the kill-and-resume and DDP tests.

    python run_child.py CONFIG.json RUN_DIR OUT.json [KILL_AT_STEP]

Uses one intra-op thread (results comparable bit for bit with the test process), the stand-in
model when mmfuse.models is absent, and with KILL_AT_STEP sends itself SIGKILL right after that
optimizer step. Rank 0 writes the metrics and the start step to OUT.json.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

import train_helpers  # noqa: E402
from mmfuse.train import train  # noqa: E402


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    config_path, run_dir, out_path = sys.argv[1:4]
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    train_helpers.use_standin_if_needed()
    config = json.loads(Path(config_path).read_text())
    result = train(config, run_dir=run_dir, callbacks=[KillAt(kill_at)] if kill_at else [])
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        Path(out_path).write_text(json.dumps({"metrics": result.metrics, "start_step": result.start_step}))


if __name__ == "__main__":
    main()
