"""Launching: SLURM requests sized from the run, one run dir per multi-rank launch, DDP ranks inside a sweep, the
user's command recorded by jobs, ``device: auto``. (The real SLURM cluster runs in tests/test_cluster.py.)"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sr.commands import launch
from sr.commands.config import compose
from sr.commands.launch import (
    JobFailed,
    failure_message,
    job_device,
    job_failure,
    parse_sinfo,
    request_problems,
    swept_overrides,
    time_limit_problem,
    wait_for_jobs,
)
from sr.utils.provenance import COMMAND_ENV, command_line, pin_command_line

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_KEYS = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb")


@pytest.fixture(autouse=True)
def project_root(tmp_path, monkeypatch):
    """Runs and sweeps of these tests claim their dirs under a temporary project root, not the checkout's runs/."""
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path / "project"))


def slurm_request(config_name: str, overrides: list[str]) -> dict:
    cfg = compose(config_name, ["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    return {key: launcher[key] for key in LAUNCHER_KEYS} | {"_target_": launcher["_target_"]}


def test_slurm_request_follows_the_trainer_and_the_one_resources_node():
    cpu = slurm_request("train", ["trainer=cpu"])
    assert cpu == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": None, "cpus_per_task": 8, "mem_gb": 48,
                   "_target_": "hydra_plugins.stablesr_launcher.SlurmLauncher"}
    cpu_ddp = slurm_request("train", ["trainer=cpu", "trainer.devices=2", "slurm.cpus_per_task=1",
                                      "slurm.mem_gb_per_task=3"])
    assert (cpu_ddp["tasks_per_node"], cpu_ddp["gpus_per_node"], cpu_ddp["cpus_per_task"], cpu_ddp["mem_gb"]) == (
        2, None, 1, 6)
    assert slurm_request("train", ["trainer=gpu"])["gpus_per_node"] == 1
    multinode = slurm_request("train", ["trainer=multinode", "trainer.num_nodes=3"])
    assert (multinode["nodes"], multinode["tasks_per_node"], multinode["gpus_per_node"], multinode["mem_gb"]) == (
        3, 8, 8, 8 * 48)
    with pytest.raises(Exception, match="trainer.devices as a number"):
        slurm_request("train", ["trainer=ddp"])  # devices: auto cannot size an allocation


def test_eval_jobs_ask_for_a_gpu_only_when_they_sample_on_one():
    assert slurm_request("eval", [])["gpus_per_node"] == 1  # device: auto
    assert slurm_request("eval", ["device=cpu"])["gpus_per_node"] is None
    assert job_device("auto") == ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    assert job_device("cuda:1") == "cuda:1" and job_device("cpu") == "cpu"


SINFO = "\n".join([
    "debug*|2|21694|(null)|1|infinite",
    "gpu|64|515000|gpu:a100:8(S:0-1)|4|2-00:00:00",
    "gpu|32|256000|gpu:v100:4,shard:8|2|2-00:00:00",
])


def test_partition_limits_are_read_from_sinfo():
    debug = parse_sinfo(SINFO, None)
    assert (debug.name, debug.cpus, debug.mem_mb, debug.gpus, debug.nodes, debug.max_minutes) == (
        "debug", 2, 21694, 0, 1, None)
    gpu = parse_sinfo(SINFO, "gpu")
    assert (gpu.cpus, gpu.mem_mb, gpu.gpus, gpu.nodes, gpu.max_minutes) == (64, 515000, 8, 6, 2880)
    with pytest.raises(ValueError, match="'cpu' does not exist"):
        parse_sinfo(SINFO, "cpu")


def test_an_unschedulable_request_names_the_override_to_change():
    debug = parse_sinfo(SINFO, None)
    fits = {"nodes": 1, "tasks_per_node": 2, "gpus_per_node": None, "cpus_per_task": 1, "mem_gb": 4, "timeout_min": 5}
    assert request_problems(fits, debug) == []
    issue_request = fits | {"tasks_per_node": 1, "cpus_per_task": 8, "mem_gb": 400, "gpus_per_node": 1}
    problems = request_problems(issue_request, debug)
    assert len(problems) == 3
    assert "8 CPUs per node" in problems[0] and "slurm.cpus_per_task<=2" in problems[0]
    assert "400 GB per node" in problems[1] and "slurm.mem_gb_per_task<=21" in problems[1]
    assert "1 GPUs per node" in problems[2] and "trainer=cpu" in problems[2]
    assert "device=cpu (no GPU)" in request_problems(issue_request, debug, cpu_override="device=cpu")[2]  # eval.py
    gpu = parse_sinfo(SINFO, "gpu")
    too_long = request_problems({"tasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 8, "mem_gb": 400,
                                 "nodes": 7, "timeout_min": 4320}, gpu)
    assert [problem.split(" ")[1] for problem in too_long] == ["nodes", "minutes"]


def test_a_time_limit_that_slurm_would_read_as_unlimited_is_refused():
    for minutes in (-5, 0, float("nan"), float("inf"), 1.5, "abc", None, True):
        problem = time_limit_problem({"timeout_min": minutes})
        assert problem == f"hydra.launcher.timeout_min={minutes!r}: must be a positive whole number of minutes"
    assert time_limit_problem({"timeout_min": 15}) is None and time_limit_problem({"timeout_min": 15.0}) is None


def test_a_failed_job_records_its_one_line_error_and_a_requeue_passes():
    from sr.errors import ReportedFailure

    failure = job_failure(ReportedFailure("module.lr='abc': must be a number"))
    assert isinstance(failure, JobFailed) and str(failure) == "module.lr='abc': must be a number"
    assert str(job_failure(SystemExit(3))) == "exited with status 3"
    assert job_failure(SystemExit(-1)) is None  # submitit requeued the job: no result now
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nsr.commands.launch.JobFailed: no prior at /p\n'
    assert failure_message(trace) == "no prior at /p"
    assert failure_message("Traceback ...\nRuntimeError: boom\n\n") == "RuntimeError: boom"


def test_a_sweep_names_each_job_by_what_sets_it_apart():
    assert swept_overrides([["a=1", "lr=1"], ["a=1", "lr=2"]]) == ["lr=1", "lr=2"]
    assert swept_overrides([["a=1", "lr=1"]]) == ["a=1 lr=1"]
    assert swept_overrides([["a=1"], ["a=1"]]) == ["a=1", "a=1"]  # no difference: all of them


class FakeJob:
    def __init__(self, job_id: str, folder: Path):
        self.job_id = job_id
        self.paths = type("Paths", (), {"result_pickle": folder / f"{job_id}_result.pkl"})()


def test_waiting_for_jobs_ends_for_jobs_that_ended_or_vanished_without_a_result(tmp_path):
    """No accounting: the states come from squeue alone. A job with a result is done; a requeued one (PENDING again)
    keeps the wait going; one that squeue shows ended, or no longer lists, fails after the grace period."""
    jobs = [FakeJob(f"9_{index}", tmp_path) for index in range(4)]
    clock = {"now": 0.0}
    timeline = [  # squeue answers, one per poll (every 10 s)
        {"9_0": "RUNNING", "9_1": "RUNNING", "9_2": "RUNNING", "9_3": "RUNNING"},
        {"9_0": "COMPLETED", "9_1": "CANCELLED", "9_2": "REQUEUED", "9_3": "RUNNING"},
        {"9_1": "CANCELLED", "9_2": "PENDING", "9_3": "RUNNING"},
        {"9_1": "CANCELLED", "9_2": "RUNNING"},
        {"9_1": "CANCELLED", "9_2": "RUNNING"},
        {"9_2": "RUNNING"},
        {"9_2": "COMPLETED"},
    ]

    def states():
        if clock["now"] == 10:
            jobs[0].paths.result_pickle.touch()  # job 0 finished
        if clock["now"] == 60:
            jobs[2].paths.result_pickle.touch()  # the requeued job finished in its second attempt
        return timeline[min(int(clock["now"] // 10), len(timeline) - 1)]

    outcomes = wait_for_jobs(jobs, poll_s=10, grace_s=25, states=states, clock=lambda: clock["now"],
                             sleep=lambda seconds: clock.update(now=clock["now"] + seconds))
    assert outcomes == [None, "SLURM job 9_1 ended CANCELLED without a result", None,
                        "SLURM job 9_3 left the queue without a result (cancelled or killed)"]
    assert clock["now"] <= 70  # bounded: no job is waited for past its grace period


# ---------------------------------------------------------------------------------------------------- run dirs
def test_runs_started_in_the_same_second_claim_their_own_dirs(tmp_path):
    """Eight processes claim a run dir for the same time stamp at once: each gets its own (-2, -3 ... suffixes)."""
    code = ("import sys; from sr.commands.launch import claim_stamp; "
            "print(claim_stamp(sys.argv[1], '2026-01-01_00-00-00'))")
    processes = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "multiruns")], stdout=subprocess.PIPE,
                                  text=True) for _ in range(8)]
    names = [process.communicate(timeout=60)[0].strip() for process in processes]
    expected = {"2026-01-01_00-00-00", *(f"2026-01-01_00-00-00-{n}" for n in range(2, 9))}
    assert set(names) == expected and len(names) == 8
    assert {path.name for path in (tmp_path / "multiruns").iterdir()} == expected
    from sr.commands.tracking import wandb_run_identity

    ids = {wandb_run_identity(tmp_path / "multiruns" / name / "0", "x", [], 0)["id"] for name in names}
    assert len(ids) == 8  # one W&B run id per sweep dir


def test_run_and_sweep_dirs_are_claimed_when_composed(tmp_path):
    """Two compositions (two commands started in the same second) get two sweep dirs."""
    first = compose("train", [f"paths.log_dir={tmp_path}"], return_hydra_config=True).hydra.sweep.dir
    second = compose("train", [f"paths.log_dir={tmp_path}"], return_hydra_config=True).hydra.sweep.dir
    assert first != second and Path(first).is_dir() and Path(second).is_dir()
    assert Path(first).parent == Path(second).parent == tmp_path / "train" / "default" / "multiruns"


def test_srun_ranks_follow_rank_zero_and_a_requeued_job_finds_its_dir_again(tmp_path):
    marker = tmp_path / ".launches" / "slurm-7-0"
    follower: dict = {}
    thread = threading.Thread(target=lambda: follower.update(stamp=launch._file_stamp(marker, False, "later")))
    thread.start()
    time.sleep(0.5)  # rank 1 is waiting for rank 0
    assert launch._file_stamp(marker, True, "2026-01-01_00-00-00") == "2026-01-01_00-00-00"
    thread.join(timeout=10)
    assert follower["stamp"] == "2026-01-01_00-00-00"
    assert launch._file_stamp(marker, True, "2026-01-01_09-09-09") == "2026-01-01_00-00-00"  # requeued: same dir


def test_run_stamp_uses_the_slurm_step_marker(tmp_path, monkeypatch):
    for key, value in {"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_ID": "41", "SLURM_STEP_ID": "3"}.items():
        monkeypatch.setenv(key, value)
    stamp = launch.run_stamp(str(tmp_path))
    assert (tmp_path / ".launches" / "slurm-41-3").read_text() == stamp
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: no rendezvous
    launch.run_stamp(str(tmp_path / "single"))
    assert not (tmp_path / "single").exists()


RESOLVE_RUN_DIR = """
import os, sys, time
from omegaconf import OmegaConf
from sr.commands.config import compose
if os.environ["RANK"] == "1":
    time.sleep(1.5)  # a different second: without the rendezvous the two ranks would name different dirs
cfg = compose("train", ["paths.log_dir=" + sys.argv[1]], return_hydra_config=True)
print("RUN_DIR", os.environ["RANK"], OmegaConf.select(cfg, "hydra.run.dir"), flush=True)
"""


@pytest.mark.slow  # about 16 s: torchrun starts two ranks, each importing torch and hydra (CI runs make test-slow)
def test_torchrun_ranks_share_one_run_dir(tmp_path):
    script = tmp_path / "resolve.py"
    script.write_text(RESOLVE_RUN_DIR)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    completed = subprocess.run([str(torchrun), "--nproc_per_node=2", str(script), str(tmp_path / "runs")],
                               capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-2000:]
    dirs = dict(line.split()[1:] for line in completed.stdout.splitlines() if line.startswith("RUN_DIR"))
    assert set(dirs) == {"0", "1"} and dirs["0"] == dirs["1"], dirs
    assert dirs["0"].startswith(str(tmp_path / "runs" / "train"))


def test_ddp_ranks_lightning_starts_run_rank_zeros_job_not_the_sweep(monkeypatch):
    sweep_argv = ["train.py", "-m", "module.lr=1e-5,5e-5", "trainer=cpu", 'hydra.run.dir="x"',
                  "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    launch.export_for_child_ranks("/runs/train/multiruns/s/1", ["module.lr=5e-5", "trainer=cpu"])
    assert launch.child_rank_argv(sweep_argv) == sweep_argv  # rank 0 itself
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning sets for the rank it starts (the env is inherited)
    assert launch.child_rank_argv(sweep_argv) == [
        "train.py", "module.lr=5e-5", "trainer=cpu", "hydra.run.dir=/runs/train/multiruns/s/1",
        "hydra.output_subdir=null"]
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")  # a torchrun rank composes its own config
    assert launch.child_rank_argv(sweep_argv) == sweep_argv


def test_jobs_record_the_command_the_user_typed(monkeypatch):
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    monkeypatch.setattr(sys, "orig_argv", ["python", "eval.py", "-m", "w=0,0.5", "hydra/launcher=slurm"])
    pin_command_line()
    assert os.environ[COMMAND_ENV] == "python eval.py -m w=0,0.5 hydra/launcher=slurm"
    # the SLURM job inherits the environment of the process that submitted it, then runs as submitit's module
    monkeypatch.setattr(sys, "orig_argv", ["python", "-u", "-m", "submitit.core._submit", "/runs/.submitit/5"])
    pin_command_line()
    assert command_line() == "python eval.py -m w=0,0.5 hydra/launcher=slurm"
    monkeypatch.delenv(COMMAND_ENV)
    assert command_line() == "python -u -m submitit.core._submit /runs/.submitit/5"
