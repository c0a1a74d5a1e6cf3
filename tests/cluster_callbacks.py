"""Callbacks the cluster and multi-node tests put into the runs they start (``+callbacks.<name>._target_=
cluster_callbacks.<Class>``; the runs find this folder on ``PYTHONPATH``)."""

import json
import time
from pathlib import Path

import lightning as L
from safetensors.torch import save_file


class SlowUntilRequeued(L.Callback):
    """Sleeps ``seconds`` after every training batch of an attempt that started from scratch, so that the job's
    time limit arrives while it trains; an attempt that resumes from a checkpoint (the requeued one) runs at full
    speed. Sleeping changes no number of the run."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.slow = False

    def on_train_start(self, trainer, pl_module):
        self.slow = trainer.ckpt_path is None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.slow:
            time.sleep(self.seconds)


class RankLosses(L.Callback):
    """Each rank records its own training loss per optimizer step in ``<run dir>/rank<r>_losses.json`` (merged
    with what an earlier attempt of the same run recorded)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        path = Path(trainer.default_root_dir) / f"rank{trainer.global_rank}_losses.json"
        losses = json.loads(path.read_text()) if path.is_file() else {}
        losses[str(trainer.global_step)] = float(outputs["loss"].detach())
        path.write_text(json.dumps(losses))


class KillAtStep(L.Callback):
    """Every rank raises when training reaches ``step`` (after the checkpoint of the step before): a crash."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class RankWeights(L.Callback):
    """Each rank writes the trainable weights it holds at the end of training to
    ``<run dir>/rank<r>_weights.safetensors``: under DDP every rank must hold the same ones."""

    def on_train_end(self, trainer, pl_module):
        weights = {name: parameter.detach().cpu().contiguous() for name, parameter in pl_module.named_parameters()
                   if parameter.requires_grad}
        save_file(weights, Path(trainer.default_root_dir) / f"rank{trainer.global_rank}_weights.safetensors")
