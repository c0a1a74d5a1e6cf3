"""Hydra launcher plugin of this project (Hydra instantiates launchers from the ``hydra_plugins`` package only)."""

import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import OmegaConf, open_dict

from sr.commands.launch import (
    check_partition,
    failure_message,
    job_failure,
    swept_overrides,
    wait_for_jobs,
)
from sr.errors import ConfigError, describe

log = logging.getLogger(__name__)


def _validators() -> dict:
    """The config check of each command (``hydra.job.name``) that can run through this launcher."""
    from sr.validation import validate_eval, validate_train

    return {"train": validate_train, "eval": validate_eval}


class SlurmLauncher(SubmititSlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher that first refuses a request the partition cannot satisfy and a job
    config its command would refuse, records a failing job's one-line error as the job's result, and waits for the
    jobs without accounting, reporting every failed job (``sr.commands.launch``: sizes, limits, waiting and messages)."""

    def __call__(self, *args, **kwargs) -> JobReturn:
        """In the job: a command's ``SystemExit`` (its one-line error) becomes an error result submitit writes."""
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as exit:
            failure = job_failure(exit)
            if failure is None:  # requeued by submitit: the next attempt writes the result
                raise
            raise failure from None

    def launch(self, job_overrides, initial_job_idx):
        """hydra-submitit-launcher's ``launch`` with the checks above before submission and :func:`wait_for_jobs`
        instead of its unbounded wait."""
        import submitit

        cpu_override = "device=cpu" if "device" in self.config else "trainer=cpu"  # eval.py: device decides the GPU
        check_partition(self.params, cpu_override)
        self._validate_jobs(job_overrides, initial_job_idx)
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        common = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in common else f"{self._EXECUTOR}_{key}": value
                                      for key, value in self.params.items()
                                      if key not in ("submitit_folder", "max_num_timeout")})
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        numbered = list(enumerate(job_overrides, initial_job_idx))
        for number, overrides in numbered:
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
        jobs = executor.map_array(self, *zip(*[(list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}",
                                                Singleton.get_state()) for number, overrides in numbered]))
        returns, failures = [], []
        names = swept_overrides(job_overrides)
        for (number, _), name, job, ended in zip(numbered, names, jobs, wait_for_jobs(jobs), strict=True):
            problem = ended or self._result_problem(job, returns)
            if problem:
                failures.append(f"{self.config.hydra.job.name}: job #{number} ({name}) failed: {problem} "
                                f"(log: {job.paths.stderr})")
        if failures:
            print("\n".join(failures), file=sys.stderr)
            raise SystemExit(1)
        return returns

    @staticmethod
    def _result_problem(job, returns: list) -> str | None:
        """Append ``job``'s ``JobReturn`` to ``returns``; the job's one-line error if it failed."""
        from submitit.core.utils import pickle_load

        outcome, result = pickle_load(job.paths.result_pickle)
        if outcome == "error":
            return failure_message(result)
        returns.append(result)
        return describe(result._return_value) if result.status == JobStatus.FAILED else None

    def _validate_jobs(self, job_overrides, initial_job_idx) -> None:
        """Every job's config checked as its command would check it (in the job dir it will get), before submission:
        one line naming each bad key."""
        validate = _validators().get(self.config.hydra.job.name)
        if validate is None:
            return
        problems = []
        hydra_config = HydraConfig.instance()
        previous = hydra_config.cfg
        names = swept_overrides(job_overrides)
        for (number, overrides), name in zip(enumerate(job_overrides, initial_job_idx), names, strict=True):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.num = number
                cfg.hydra.runtime.output_dir = str(Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir))
            try:
                hydra_config.set_config(cfg)  # ${hydra:runtime.output_dir} is the job's dir
                validate(cfg)
            except ConfigError as error:
                problems.append(f"job #{number} ({name}): {error}")
            finally:
                hydra_config.cfg = previous
        if problems:
            raise SystemExit(f"{self.config.hydra.job.name}: error: nothing submitted: " + "; ".join(problems))
