"""Loggers that survive resumption.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when a new process opens a run dir that already holds one, so a
run resumed from its ``last.ckpt`` (requeue, interruption, the recipe's reruns) loses every metric logged before.
:class:`ResumableCSVLogger` appends instead: the rows already written stay, and a resumed run adds its rows after
them (steps replayed since the last checkpoint appear twice, the later rows being the resumed run's).
"""

import csv

from lightning.pytorch.loggers import CSVLogger
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
