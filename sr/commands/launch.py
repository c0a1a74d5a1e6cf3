"""How runs are launched: SLURM jobs sized from the run, and the ranks of one run agreeing on its run dir.

SLURM jobs sized from the run (``hydra/launcher=slurm``), refused before submission when the cluster cannot run them.

``conf/hydra/launcher/slurm.yaml`` derives the request from the run's own config through the resolvers below:

- tasks per node = ``trainer.devices`` (one task per device; Lightning reads the ranks from SLURM),
- GPUs per node = ``trainer.devices``, none when ``trainer.accelerator`` is ``cpu``,
- CPUs per task and memory per task from ``conf/slurm/default.yaml`` (``slurm.cpus_per_task``,
  ``slurm.mem_gb_per_task``): the one place to fit the jobs to a cluster.

The launcher (``hydra_plugins.stablesr_launcher.SlurmLauncher``: Hydra takes launchers from that package only)
compares the request with the partition (:func:`check_partition`, ``sinfo``) before submitting: a job that asks for
more CPUs, memory, GPUs, nodes or time than any node of the partition has would wait in the queue forever
(``Reason=PartitionConfig``); it stops instead with one line naming the request, the limit and the override to change.
It also refuses a time limit that is not a positive number of minutes (:func:`time_limit_problem`) and validates every
job's config as the command itself would (``validate_train`` / ``validate_eval``), so a bad value stops the sweep
before anything is submitted.

A job that fails ends with an error result (:func:`job_failure`: the command's one-line error, which it raises as
``SystemExit``, becomes :class:`JobFailed`, which submitit records; only submitit's own requeue exit passes). The
submitting process waits for the jobs with :func:`wait_for_jobs`, which needs no accounting (``sacct``): it polls
``squeue`` and gives up on a job that left the queue, or ended, without writing a result (cancelled, killed, out of
memory) after :data:`RESULT_GRACE_S`. The sweep then ends with exit status 1 and one line per failed job: its number,
its overrides and its error.

How the processes of one multi-rank run agree on one run dir: rank 0 decides, the other ranks follow.

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
their own dirs (and, derived from the run dir, their own W&B run ids: ``sr.commands.tracking``).

Under ``hydra/launcher=slurm`` all tasks of a job get the sweep dir the submitting process resolved (Hydra copies
its resolver cache into every job), so none of this is needed there.
"""

import getpass
import itertools
import json
import logging
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

log = logging.getLogger(__name__)

CPU_ACCELERATORS = ("cpu",)
REQUEUE_EXIT_CODE = -1  # submitit's signal handler ends a job it has requeued with sys.exit(-1)
POLL_S = 5.0
RESULT_GRACE_S = 30.0  # a job that ended writes its result before it leaves the queue; allow for slow file systems
# squeue states of a job that may still write a result (every other state is final)
WAITING_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
                            "REQUEUE_HOLD", "RESIZING", "PREEMPTED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD",
                            "STOPPED"})


def tasks_per_node(accelerator: str, devices) -> int:
    """One task per device (``devices`` must be a number: SLURM allocates before Lightning could count GPUs)."""
    if str(devices) == "auto":
        if accelerator in CPU_ACCELERATORS:
            return 1
        raise ValueError("hydra/launcher=slurm needs trainer.devices as a number (GPUs per node), not 'auto'")
    return int(devices)


def gpus_per_node(accelerator: str, devices) -> int | None:
    """``devices`` GPUs per node, or none (``None``: no ``--gpus-per-node``) for a CPU run."""
    if accelerator in CPU_ACCELERATORS:
        return None
    return tasks_per_node(accelerator, devices)


def mem_gb_per_node(mem_gb_per_task: int, accelerator: str, devices) -> int:
    """Memory of one node: ``mem_gb_per_task x tasks_per_node``."""
    return int(mem_gb_per_task) * tasks_per_node(accelerator, devices)


def job_device(device: str) -> str:
    """``auto`` -> ``cuda`` when this process sees a GPU (a SLURM job that was given one), else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class PartitionLimits:
    """The largest node of a partition (``sinfo``) and its time limit in minutes (``None``: unlimited)."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int
    nodes: int
    max_minutes: int | None


def parse_sinfo(text: str, partition: str | None) -> PartitionLimits:
    """Limits of ``partition`` (the default one, marked ``*``, when ``None``) in ``sinfo -h -o '%P|%c|%m|%G|%D|%l'``
    output."""
    rows = [line.split("|") for line in text.strip().splitlines() if line.count("|") == 5]
    if partition is None:
        defaults = [row[0] for row in rows if row[0].endswith("*")]
        if not defaults:
            raise ValueError("the cluster has no default partition: set hydra.launcher.partition=<name>")
        partition = defaults[0]
    partition = partition.rstrip("*")
    rows = [row for row in rows if row[0].rstrip("*") == partition]
    if not rows:
        raise ValueError(f"SLURM partition {partition!r} does not exist (sinfo lists no such partition)")
    return PartitionLimits(
        name=partition,
        cpus=max(int(row[1].rstrip("+")) for row in rows),
        mem_mb=max(int(row[2].rstrip("+")) for row in rows),
        gpus=max(_gres_gpus(row[3]) for row in rows),
        nodes=sum(int(row[4]) for row in rows),
        max_minutes=_minutes(rows[0][5]),
    )


def _gres_gpus(gres: str) -> int:
    """GPUs in a ``sinfo`` GRES field such as ``gpu:a100:8(S:0-1),shard:4`` (``(null)``: none)."""
    count = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            count += int(parts[-1])
    return count


def _minutes(limit: str) -> int | None:
    """``sinfo`` time limit ``[days-]hours:minutes:seconds`` / ``minutes`` / ``infinite`` -> minutes."""
    if limit in ("infinite", "n/a", "UNLIMITED"):
        return None
    days, _, clock = limit.rpartition("-")
    fields = [int(value) for value in clock.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(fields)) + fields) if len(fields) > 1 else (0, fields[0], 0)
    return int(days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)


def time_limit_problem(params: dict) -> str | None:
    """Why ``hydra.launcher.timeout_min`` is not a usable SLURM time limit (SLURM reads 0 or a negative number as no
    limit at all), or None."""
    minutes = params.get("timeout_min")
    valid = isinstance(minutes, int | float) and not isinstance(minutes, bool) and math.isfinite(minutes)
    if not valid or minutes <= 0 or minutes != int(minutes):
        return f"hydra.launcher.timeout_min={minutes!r}: must be a positive whole number of minutes"
    return None


def request_problems(params: dict, limits: PartitionLimits, cpu_override: str = "trainer=cpu") -> list[str]:
    """What in the launcher ``params`` (``hydra.launcher``) no node of the partition can give; empty when it fits.
    ``cpu_override``: the command's override that asks for no GPU (``device=cpu`` for eval.py)."""
    tasks = int(params.get("tasks_per_node") or 1)
    cpus = int(params.get("cpus_per_task") or 1) * tasks
    mem_mb = int(params.get("mem_gb") or 0) * 1024
    gpus = int(params.get("gpus_per_node") or 0)
    nodes = int(params.get("nodes") or 1)
    minutes = int(params.get("timeout_min") or 0)
    where = f"partition {limits.name!r}"
    problems = []
    if cpus > limits.cpus:
        problems.append(f"{cpus} CPUs per node ({tasks} tasks x slurm.cpus_per_task) but the nodes of {where} have "
                        f"at most {limits.cpus}: set slurm.cpus_per_task<={limits.cpus // tasks}")
    if mem_mb > limits.mem_mb:
        problems.append(f"{mem_mb // 1024} GB per node ({tasks} tasks x slurm.mem_gb_per_task) but the nodes of "
                        f"{where} have {limits.mem_mb} MB: set slurm.mem_gb_per_task<={limits.mem_mb // 1024 // tasks}")
    if gpus > limits.gpus:
        fix = f"{cpu_override} (no GPU)" if limits.gpus == 0 else f"trainer.devices<={limits.gpus}"
        problems.append(f"{gpus} GPUs per node but the nodes of {where} have {limits.gpus}: {fix}")
    if nodes > limits.nodes:
        problems.append(f"{nodes} nodes but {where} has {limits.nodes}: set trainer.num_nodes<={limits.nodes}")
    if limits.max_minutes is not None and minutes > limits.max_minutes:
        problems.append(f"{minutes} minutes but {where} allows {limits.max_minutes}: "
                        f"set hydra.launcher.timeout_min<={limits.max_minutes}")
    return problems


def check_partition(params: dict, cpu_override: str = "trainer=cpu") -> PartitionLimits:
    """Refuse (``SystemExit`` with one line) launcher ``params`` that no node of their partition can satisfy."""
    if problem := time_limit_problem(params):
        raise SystemExit(f"hydra/launcher=slurm: {problem}")
    if shutil.which("sinfo") is None:
        raise SystemExit("hydra/launcher=slurm: sinfo not found; run on a SLURM login node")
    completed = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%m|%G|%D|%l"], capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise SystemExit(f"hydra/launcher=slurm: sinfo failed: {completed.stderr.strip()}")
    try:
        limits = parse_sinfo(completed.stdout, params.get("partition"))
    except ValueError as problem:
        raise SystemExit(f"hydra/launcher=slurm: {problem}") from None
    problems = request_problems(params, limits, cpu_override)
    if problems:
        raise SystemExit("hydra/launcher=slurm: the job cannot be scheduled: " + "; ".join(problems))
    log.info("SLURM request fits partition %s: %s", limits.name,
             {key: params.get(key) for key in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb",
                                               "timeout_min")})
    return limits


class JobFailed(RuntimeError):
    """A sweep job ended with an error; the message is the job's one-line error."""


def job_failure(exit: SystemExit) -> JobFailed | None:
    """The error a job records for ``exit``; None for submitit's requeue exit, which must end the job unrecorded
    (the requeued job writes the result)."""
    if exit.code == REQUEUE_EXIT_CODE:
        return None
    return JobFailed(getattr(exit, "message", None) or f"exited with status {exit.code}")


def failure_message(trace: str) -> str:
    """The one line of a job's error result (the traceback text submitit records): its last line, without the
    ``sr.commands.launch.JobFailed:`` prefix."""
    lines = [line for line in trace.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "no error message"
    prefix = f"{JobFailed.__module__}.{JobFailed.__name__}: "
    return last.removeprefix(prefix)


def swept_overrides(job_overrides: Sequence[Sequence[str]]) -> list[str]:
    """Per job, the overrides that tell it from the other jobs of its sweep (all of them when no other job differs),
    joined by spaces: how the sweep's messages name a job."""
    shared = set.intersection(*(set(overrides) for overrides in job_overrides)) if len(job_overrides) > 1 else set()
    return [" ".join(item for item in overrides if item not in shared) or " ".join(overrides)
            for overrides in job_overrides]


def queue_states() -> dict[str, str]:
    """``{job id: state}`` of this user's jobs that SLURM still lists (``squeue``; ended ones for ``MinJobAge``);
    array tasks as ``<array id>_<task>``."""
    completed = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T"],
                               capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise RuntimeError(f"squeue failed: {completed.stderr.strip()}")
    return dict(line.split("|", 1) for line in completed.stdout.split() if "|" in line)


def wait_for_jobs(jobs: Sequence, poll_s: float = POLL_S, grace_s: float = RESULT_GRACE_S,
                  states: Callable[[], dict[str, str]] = queue_states, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> list[str | None]:
    """Wait until each submitit job has written its result file or has been out of the running for ``grace_s``
    without one (``squeue`` shows a final state, or no longer lists it); a requeued job keeps waiting. Returns per job
    None (its result is there) or why it ended without a result."""
    outcomes: dict[int, str | None] = {}
    ended_since: dict[int, float] = {}
    while True:
        pending = [index for index in range(len(jobs)) if index not in outcomes]
        for index in pending:
            if jobs[index].paths.result_pickle.exists():
                outcomes[index] = None
        pending = [index for index in pending if index not in outcomes]
        if not pending:
            return [outcomes[index] for index in range(len(jobs))]
        listed, now = states(), clock()
        for index in pending:
            state = listed.get(str(jobs[index].job_id))
            if state in WAITING_STATES:
                ended_since.pop(index, None)
                continue
            ended_since.setdefault(index, now)
            if now - ended_since[index] >= grace_s:
                outcomes[index] = (f"SLURM job {jobs[index].job_id} ended {state} without a result" if state else
                                   f"SLURM job {jobs[index].job_id} left the queue without a result (cancelled or killed)")
        sleep(poll_s)


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
