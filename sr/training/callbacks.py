"""Callbacks shared by every training stage, and image logging that works with any configured logger."""

import io
import logging
import math
import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from sr.io import remove_stale_temporaries, write_bytes_atomic, write_image
from sr.training.loggers import finish_wandb_runs

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
        # a run resumed from its own checkpoint (requeued, extended) replaces its own earlier export
        resumes_here = trainer.ckpt_path is not None and Path(trainer.ckpt_path).resolve().is_relative_to(
            self.output_dir.resolve()
        )
        if existing and not self.overwrite and not resumes_here:
            raise FileExistsError(
                f"{existing[0]}: already exists; choose another run dir or set callbacks.exporter.overwrite=true"
            )

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and hasattr(pl_module, "export"):
            path = pl_module.export(self.output_dir)
            log.info("trainable weights written to %s", path)
            print(f"[export] trainable weights: {path}")


class SubmititRequeue:
    """The preemption / time-limit signal of a submitit job (``SIGUSR2`` unless ``$SUBMITIT_PREEMPT_SIGNAL``),
    turned into a request that training honours at the end of the current batch.

    submitit's own handler checkpoints the submission, requeues the SLURM job and exits at once, in the middle of
    whatever runs. When training starts, :meth:`install` replaces it by one that only records the signal;
    :class:`RunCheckpoint` then saves ``last.ckpt`` at the next batch end and calls :meth:`requeue`, which hands the
    signal to submitit's handler. Lightning puts back the handlers it found when fit ends, submitit's included (a
    signal before the first batch reaches submitit directly: nothing trained yet). Outside a submitit job nothing is
    installed.
    """

    def __init__(self):
        self.signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
        self.received = False
        self._submitit_handler = None

    def install(self) -> None:
        handler = signal.getsignal(self.signum)
        if callable(handler) and getattr(handler, "__module__", "").startswith("submitit"):
            self._submitit_handler = handler
            signal.signal(self.signum, self._record)

    def _record(self, signum, frame) -> None:
        log.warning("received %s: saving a checkpoint at the end of this batch, then requeueing",
                    signal.Signals(signum).name)
        self.received = True

    def requested(self, trainer: L.Trainer) -> bool:
        """Whether any rank received the signal (a collective: every rank calls it at the same batch)."""
        if self._submitit_handler is None:
            return False
        return trainer.strategy.reduce_boolean_decision(self.received, all=False)

    def requeue(self) -> None:
        """submitit requeues the job (rank 0) and the process ends; the requeued job resumes from ``last.ckpt``."""
        handler, self._submitit_handler = self._submitit_handler, None
        signal.signal(self.signum, handler)
        handler(self.signum, None)  # rank 0: requeue + sys.exit
        raise SystemExit(-1)  # the other ranks end too; the requeue restarts every task


class DurableCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose saves are atomic in the checkpoint's own folder: a temporary file beside
    it, ``fsync``, ``os.replace`` (:func:`sr.io.write_bytes_atomic`). A job killed during the write leaves the previous
    checkpoint whole. (Lightning's own save writes through an fsspec transaction, whose temporary file is in the
    system temp dir: on another file system the final move is a copy, and a kill during it left an empty or cut
    ``last.ckpt`` and a complete copy in the temp dir.) Each save first removes the temporary files of killed saves.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        remove_stale_temporaries(Path(path).parent)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes_atomic(path, buffer.getbuffer(), overwrite=True, durable=True)


def use_durable_checkpoints(trainer: L.Trainer) -> None:
    """Save through :class:`DurableCheckpointIO` unless the trainer was given a checkpoint plugin of its own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = DurableCheckpointIO()


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is always the newest state of the run, saved where a resume is exact.

    On top of the periodic checkpoints it saves ``last.ckpt`` at the end of the final training batch (``max_steps``
    reached or ``trainer.should_stop`` set; Lightning's own end-of-training save happens after the epoch bookkeeping,
    and resuming from it skipped the rest of the epoch)
    and, in a submitit job, at the end of the batch during which the preemption / time-limit signal arrived, before
    the job is requeued (:class:`SubmititRequeue`). Configure it with ``enable_version_counter=False``: a resumed run
    overwrites its own ``last.ckpt`` instead of writing ``last-v1.ckpt`` beside a stale one.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requeue_signal = SubmititRequeue()
        self._start_step = 0

    @property
    def last_checkpoint_path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.requeue_signal.install()  # after Lightning registered its own handlers (it restores them at the end)
        self._start_step = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        # a resumed run that trained no further keeps the checkpoint it resumed from (Lightning would save the
        # state after its end-of-epoch bookkeeping, from which a later extension would skip a partial epoch)
        if trainer.ckpt_path is None or trainer.global_step != self._start_step:
            super().on_train_end(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        requeue = self.requeue_signal.requested(trainer)
        final = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step  # the module may stop itself
        if (requeue or final) and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if requeue:
            print(f"[train] step {trainer.global_step}: saved {self.last_checkpoint_path}; requeueing", flush=True)
            # this batch's metrics, which Lightning logs only after the callbacks' batch end, are not lost
            trainer._logger_connector.update_train_step_metrics()
            finish_wandb_runs(trainer)
            self.requeue_signal.requeue()
