"""How the processes of one multi-rank run agree on one run dir: rank 0 decides, the other ranks follow.

Three launchers start the ranks of a data-parallel run, and each rank runs ``train.py`` (and composes its config)
itself:

- ``torchrun``: the ranks meet in torchrun's own key-value store (``MASTER_ADDR:MASTER_PORT``); rank 0 publishes its
  time stamp there and the others read it (:func:`run_stamp`).
- ``srun`` (one task per rank): rank 0 writes its time stamp to ``<log_dir>/.launches/slurm-<job>-<step>``, the
  others wait for that file. A requeued job has the same job and step ids, so it finds the same run dir again.
- Lightning's own DDP launcher (``trainer=ddp`` started with plain ``python``) re-runs the command line for ranks
  > 0; inside a ``-m`` sweep that would start the whole sweep again. Rank 0 therefore exports its job's run dir and
  overrides (:func:`export_for_child_ranks`) and a rank Lightning started replaces its command line with that one
  job (:func:`child_rank_argv`).

Rank 0 claims the run dir (:func:`claim_stamp`): it creates ``<parent>/<stamp>`` with one ``mkdir``, which fails when
the dir exists, and takes ``<stamp>-2``, ``<stamp>-3`` ... then; so two runs or sweeps started in the same second get
their own dirs (and, derived from the run dir, their own W&B run ids: ``sr.tracking``).

Under ``hydra/launcher=slurm`` all tasks of a job get the sweep dir the submitting process resolved (Hydra copies
its resolver cache into every job), so none of this is needed there.
"""

import itertools
import json
import os
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"
RUN_DIR_ENV = "SR_RANK_ZERO_RUN_DIR"
OVERRIDES_ENV = "SR_RANK_ZERO_OVERRIDES"
RENDEZVOUS_TIMEOUT_S = 600


def run_stamp(log_dir: str, parent: str | None = None) -> str:
    """The name of this run's dir under ``parent``: the current time of rank 0 of the launch, which rank 0 claims
    (module docstring; nothing is created when ``parent`` is None)."""
    now = datetime.now().strftime(STAMP_FORMAT)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _torchrun_stamp(now, parent)
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ:
        marker = Path(log_dir) / ".launches" / f"slurm-{os.environ['SLURM_JOB_ID']}-{os.environ['SLURM_STEP_ID']}"
        return _file_stamp(marker, int(os.environ["SLURM_PROCID"]) == 0, now, parent)
    return claim_stamp(parent, now) if parent else now


def claim_stamp(parent: str | Path, stamp: str) -> str:
    """``stamp``, or else ``stamp-2``, ``stamp-3`` ...: the first name whose folder under ``parent`` this call
    creates (``mkdir`` fails when the folder exists, also when another process made it a moment ago)."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        name = stamp if attempt == 1 else f"{stamp}-{attempt}"
        try:
            (Path(parent) / name).mkdir()
        except FileExistsError:
            continue
        return name
    raise AssertionError("unreachable")


def _torchrun_stamp(now: str, parent: str | None) -> str:
    from torch.distributed import TCPStore

    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                     timeout=timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
    key = f"stablesr/run_stamp/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if int(os.environ["RANK"]) == 0:
        stamp = claim_stamp(parent, now) if parent else now
        store.set(key, stamp)
        return stamp
    return store.get(key).decode()  # blocks until rank 0 has set it


def _file_stamp(marker: Path, is_rank_zero: bool, now: str, parent: str | None = None) -> str:
    if is_rank_zero:
        if marker.is_file():  # the same job again (requeued): same run dir
            return marker.read_text().strip()
        stamp = claim_stamp(parent, now) if parent else now
        marker.parent.mkdir(parents=True, exist_ok=True)
        temporary = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
        temporary.write_text(stamp)
        os.replace(temporary, marker)
        return stamp
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker}: rank 0 did not record the run dir within {RENDEZVOUS_TIMEOUT_S} s")
        time.sleep(0.2)
    return marker.read_text().strip()


def export_for_child_ranks(run_dir: str | Path, overrides: list[str]) -> None:
    """Rank 0, before Lightning starts the other local ranks: they inherit this job's run dir and overrides.

    Lightning builds their command line from Hydra's ``hydra.run.dir``; that is set to this run dir here, so that it
    names the job's dir (in a sweep it would name another) and does not claim a new run dir (:func:`claim_stamp`).
    """
    os.environ[RUN_DIR_ENV] = str(run_dir)
    os.environ[OVERRIDES_ENV] = json.dumps(list(overrides))
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    if HydraConfig.initialized():
        hydra_config = HydraConfig.get()
        with read_write(hydra_config):
            hydra_config.run.dir = str(run_dir)


@contextmanager
def ranks_started_here(trainer):
    """Around a fit: when Lightning starts the other ranks from this process (``trainer=ddp`` under plain ``python``,
    e.g. each job of a basic-launcher sweep), leave the process afterwards as the job found it, so that the next job
    starts its own ranks. Lightning keeps the process group and the variables it exported for its children
    (``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``, ...), and a later fit would take them for an external launch.
    """
    environment = getattr(trainer.strategy, "cluster_environment", None)
    starts_ranks = trainer.world_size > 1 and environment is not None and not environment.creates_processes_externally
    environ_before = dict(os.environ)
    try:
        yield
    finally:
        if starts_ranks:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            for key in set(os.environ) - set(environ_before):
                del os.environ[key]


def child_rank_argv(argv: list[str], environ=os.environ) -> list[str]:
    """The command line a DDP rank started by Lightning runs: rank 0's job (its overrides, its run dir, no ``-m``).

    ``argv`` is returned unchanged in every other process (rank 0, torchrun/srun ranks, plain runs).
    """
    if RUN_DIR_ENV not in environ or environ.get("LOCAL_RANK", "0") == "0" or "TORCHELASTIC_RUN_ID" in environ:
        return argv
    overrides = json.loads(environ[OVERRIDES_ENV])
    return [argv[0], *overrides, f"hydra.run.dir={environ[RUN_DIR_ENV]}", "hydra.output_subdir=null"]
