"""Loggers that survive resumption.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when a new process opens a run dir that already holds one, so a
run resumed from its ``last.ckpt`` (requeue, interruption, the recipe's reruns) loses every metric logged before.
:class:`ResumableCSVLogger` appends instead: the rows already written stay, and a resumed run adds its rows after
them (steps replayed since the last checkpoint appear twice, the later rows being the resumed run's).

W&B: :class:`ResumableWandbLogger` makes the history step (``_step``) the trainer's global step, so a resumed run
(same id, ``resume="allow"``) continues it where the checkpoint left off, also offline, where W&B cannot ask its
server for the last step and would start again at 0; :func:`finish_wandb_runs` ends the runs cleanly before a
requeue.
"""

import csv

from lightning.fabric.utilities.logger import _add_prefix
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingExperimentWriter(ExperimentWriter):
    """``ExperimentWriter`` that keeps an existing ``metrics.csv`` and continues it with the same columns."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose run dir's ``metrics.csv`` is continued, not deleted, by a resumed run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class ResumableWandbLogger(WandbLogger):
    """``WandbLogger`` that logs every row at W&B step = the trainer's global step (module docstring). Rows of one
    step (training and validation metrics, images) merge into one history row."""

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        if step is None:
            super().log_metrics(metrics, step)
            return
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        self.experiment.log(dict(metrics) | {"trainer/global_step": step}, step=step)


def finish_wandb_runs(trainer) -> None:
    """Finish (flush and close) the W&B run of each W&B logger that started one, then stop W&B's service process:
    before a requeue, whose ``scontrol requeue`` ends every process of the job, so that the attempt's run is complete
    on disk and W&B's exit hook finds no service to lose its connection to (``ConnectionResetError``)."""
    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger) and logger._experiment]
    for logger in loggers:
        logger._experiment.finish()
    if loggers:
        import wandb

        wandb.teardown()
