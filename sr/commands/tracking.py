"""Weights & Biases identity of a training run: one W&B run per job (the eval table: ``sr.commands.report.wandb_log``).

Training (``logger=wandb``): :func:`wandb_run_identity` names each job's W&B run from its Hydra overrides, groups the
jobs of one sweep, and derives the run id from the run dir, so that every sweep job gets its own W&B run (also
when the basic launcher runs them in one process) and a requeued SLURM job continues its run instead of starting a
new one. The run's config is the resolved config plus the Hydra overrides and the job number (``train.record_run``).
"""

import hashlib
from collections.abc import Sequence
from pathlib import Path


def wandb_run_identity(run_dir: Path, experiment_name: str, overrides: Sequence[str], job_num: int | None) -> dict:
    """``{"name", "group", "id"}`` of the W&B run of one training run dir.

    A sweep job (``job_num`` set) is named ``<experiment>#<job> <its overrides>`` and grouped by its sweep folder;
    a single run is named ``<experiment> <run dir name>`` and grouped by experiment. The id is a hash of the run dir.
    """
    run_dir = Path(run_dir).resolve()
    shown = " ".join(override for override in overrides if not override.startswith(("experiment=", "hydra/")))
    if job_num is None:
        name, group = f"{experiment_name} {run_dir.name}", experiment_name
    else:
        name, group = f"{experiment_name}#{job_num} {shown}".strip(), f"{experiment_name}/{run_dir.parent.name}"
    return {"name": name, "group": group, "id": hashlib.sha256(str(run_dir).encode()).hexdigest()[:24]}
