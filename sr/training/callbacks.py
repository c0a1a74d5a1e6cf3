"""Callbacks shared by every training stage, and image logging that works with any configured logger."""

import logging
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from sr.io import write_image

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the run stops before that state is checkpointed."""


def log_image(trainer: L.Trainer, key: str, image: torch.Tensor, step: int) -> list[Path]:
    """Send ``image [3, H, W]`` in [0, 1] to every logger: ``wandb.Image`` for W&B, a PNG file for the others.

    PNGs go to ``<logger.log_dir or trainer.default_root_dir>/images/<key>_step<step>.png`` (written atomically);
    returns the PNG paths written.
    """
    written = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image.permute(1, 2, 0).clamp(0, 1).numpy()], step=step)
            continue
        root = Path(getattr(logger, "log_dir", None) or trainer.default_root_dir)
        path = root / "images" / f"{key.replace('/', '_')}_step{step:07d}.png"
        written.append(write_image(path, image.clamp(0, 1), overwrite=True))
    return written


class NonFiniteLossGuard(L.Callback):
    """Stops training with :class:`NonFiniteLossError` as soon as a training loss is NaN or inf.

    Lightning runs ``ModelCheckpoint`` after all other callbacks, so raising here keeps the broken state out of every
    checkpoint; the last good ``last.ckpt`` stays on disk and the exporters (``on_fit_end``) never run.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach().float().item())
        if not math.isfinite(value):
            checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise NonFiniteLossError(
                f"training loss is {value} at global step {trainer.global_step} (batch {batch_idx}); "
                f"stopping. Last good checkpoint: {checkpoint}"
            )


class TrainableWeightsExporter(L.Callback):
    """At the end of fit, ``pl_module.export(output_dir)`` writes the small trainable-weights files.

    The module lists the files it will write in ``export_paths(output_dir)``; existing files are refused at the start
    of fit (before any training time is spent) unless ``overwrite`` is set. Modules without ``export`` (those that
    write their artefacts themselves) are left alone.
    """

    def __init__(self, output_dir: str, overwrite: bool = False):
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite

    def on_fit_start(self, trainer, pl_module) -> None:
        if not hasattr(pl_module, "export"):
            return
        existing = [path for path in pl_module.export_paths(self.output_dir) if path.exists()]
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{existing[0]}: already exists; choose another run dir or set callbacks.exporter.overwrite=true"
            )

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and hasattr(pl_module, "export"):
            path = pl_module.export(self.output_dir)
            log.info("trainable weights written to %s", path)
            print(f"[export] trainable weights: {path}")
