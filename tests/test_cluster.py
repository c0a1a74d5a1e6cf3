"""On a real SLURM cluster (``make test-cluster`` starts a one-node one with scripts/slurm_local.sh): training and eval
sweeps through ``hydra/launcher=slurm``, a job requeued at its time limit, 2-rank DDP (gloo, CPU) under ``srun``
and through the launcher with exact resume for both ranks, and DDP inside a basic-launcher sweep; sweeps with failing
or cancelled jobs (the cluster has no accounting, as scripts/slurm_local.sh sets it up) and bad settings refused before
submission.

Every job is the tiny preset on CPU with random weights, a few steps, 1 CPU per task: the node has 2 cores.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from wandb_offline import offline_run

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "experiment=stablesr_tiny", "model.pretrained=null", "trainer=cpu", "trainer.val_check_interval=1000",
    "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "~callbacks.progress_bar", "logger=csv", "trainer.log_every_n_steps=1",
]
SLURM = ["hydra/launcher=slurm", "slurm.cpus_per_task=1", "slurm.mem_gb_per_task=3", "hydra.launcher.timeout_min=15"]
DDP = ["trainer.devices=2", "trainer.strategy=ddp"]
REQUEUE_STEPS = 6


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if shutil.which("sinfo") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        pytest.fail("no SLURM cluster: run `make test-cluster` (it starts one with scripts/slurm_local.sh)")


def job_env() -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WANDB_DIR", "SR_"))}
    return env | {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                  "HF_HUB_OFFLINE": "1"}


def command(script: str, *overrides: str) -> list[str]:
    return [sys.executable, script, *overrides]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(argv, cwd=ROOT, env=job_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path, timeout: float = 600) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{shlex.join(process.args)} did not end in {timeout} s; log:\n{log.read_text()[-3000:]}")


def run(argv: list[str], log: Path, timeout: float = 600) -> int:
    return finish(start(argv, log), log, timeout)


def job_logs(sweep_dir: Path) -> str:
    return "\n".join(path.read_text() for path in sorted((sweep_dir / ".submitit").glob("*/*_log.*")))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "stage1.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


# ------------------------------------------------------------------------------------------------- requeue (background)
@pytest.fixture(scope="module")
def requeue_runs(tmp_path_factory):
    """Started first, checked later (its first attempt mostly sleeps): a job (logging to W&B, offline) with a
    4-minute limit whose first attempt takes 20 s per step, so SLURM's time-limit signal (150 s before the end; SLURM
    may send it up to a minute earlier) arrives mid-training; beside it, the same 6 steps uninterrupted (the
    reference)."""
    root = tmp_path_factory.mktemp("requeue")
    steps = [f"trainer.max_steps={REQUEUE_STEPS}", "callbacks.model_checkpoint.every_n_train_steps=100"]
    limited = [*SLURM, "hydra.launcher.timeout_min=4", "hydra.launcher.signal_delay_s=150",
               "hydra.launcher.max_num_timeout=1", "+callbacks.slow._target_=cluster_callbacks.SlowUntilRequeued",
               "+callbacks.slow.seconds=20"]
    processes = {
        "requeued": start(command("train.py", "-m", *TINY, *steps, *limited, "logger=wandb",
                                  f"hydra.sweep.dir={root / 'requeued'}"), root / "requeued.log"),
        "reference": start(command("train.py", "-m", *TINY, *steps, *SLURM, f"hydra.sweep.dir={root / 'reference'}"),
                           root / "reference.log"),
    }
    return root, processes


# ------------------------------------------------------------------------------------------------- sweeps
def test_two_job_training_sweep_one_wandb_run_per_job(requeue_runs, tmp_path):
    sweep_dir = tmp_path / "sweep"
    argv = command("train.py", "-m", *TINY, *SLURM, "trainer.max_steps=2", "logger=wandb", "module.lr=1e-4,3e-4",
                   f"hydra.sweep.dir={sweep_dir}")
    assert run(argv, tmp_path / "sweep.log") == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    submissions = list((sweep_dir / ".submitit").glob("*/*_submission.sh"))
    assert submissions and all("--gpus-per-node" not in path.read_text() for path in submissions)  # trainer=cpu
    names = set()
    for job_num, lr in enumerate(("1e-4", "3e-4")):
        job = sweep_dir / str(job_num)
        assert last_checkpoint(job)["global_step"] == 2 and (job / "stage1.safetensors").is_file()
        provenance = json.loads((job / "provenance.json").read_text())
        assert provenance["command"] == shlex.join(argv) and provenance["job_num"] == job_num
        (folder,) = (job / "wandb").glob("offline-run-*")
        wandb_run = offline_run(folder)
        assert wandb_run["config"]["provenance"]["job_num"] == job_num
        (swept,) = [item for item in wandb_run["config"]["provenance"]["overrides"] if item.startswith("module.lr=")]
        assert float(swept.split("=")[1]) == float(lr) and swept in wandb_run["name"]  # Hydra writes 0.0001
        assert wandb_run["config"]["module"]["lr"] == float(lr)
        assert wandb_run["group"] == f"stablesr_tiny/{sweep_dir.name}"
        names.add(wandb_run["name"])
    assert len(names) == 2


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    """Two pairs cut from the bundled held-out images: HR 64 px, LR 16 px (as tests/test_eval.py)."""
    root = tmp_path_factory.mktemp("pairs")
    for name in ("camera", "coffee"):
        with Image.open(ROOT / "data" / "samples" / "heldout_pairs" / "hr" / f"{name}.png") as image:
            hr = image.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
        for side, picture in (("hr", hr), ("lr", hr.resize((16, 16), Image.Resampling.BICUBIC))):
            (root / side).mkdir(exist_ok=True)
            picture.save(root / side / f"{name}.png")
    return root


def test_eval_sweep_through_the_launcher_writes_its_report(requeue_runs, test_set, tmp_path):
    sweep_dir = tmp_path / "eval"
    argv = command("eval.py", "-m", *SLURM, "model=tiny", "num_inference_steps=2", "tile.size=16", "progress=false",
                   "metrics=[psnr_y,ssim_y]", "device=cpu", "wandb=true", f"data.lr_dir={test_set / 'lr'}",
                   f"data.hr_dir={test_set / 'hr'}", "w=0,1", f"hydra.sweep.dir={sweep_dir}")
    assert run(argv, tmp_path / "eval.log") == 0, (tmp_path / "eval.log").read_text()[-3000:]
    table = (sweep_dir / "report" / "table.csv").read_text().splitlines()
    # header, the bicubic baseline (shared), lr_latent once per w, one row per job
    assert [line.split(",")[0] for line in table] == ["method", "bicubic", "lr_latent", "lr_latent", "stablesr",
                                                      "stablesr"]
    for job_num in (0, 1):
        scores = json.loads((sweep_dir / str(job_num) / "scores.json").read_text())
        assert scores["status"] == "ok" and scores["command"] == shlex.join(argv)
        assert scores["config"]["device"] == "cpu"
    (folder,) = (sweep_dir / "wandb").glob("offline-run-*")
    logged_config = offline_run(folder)["config"]
    assert "w=0,1" in logged_config["overrides"] and logged_config["eval"]["num_inference_steps"] == 2
    (table_file,) = (folder / "files" / "media" / "table").glob("sweep_table_*.table.json")
    logged = json.loads(table_file.read_text())
    psnr = logged["columns"].index("psnr_y")
    assert all(isinstance(row[psnr], float) for row in logged["data"])


def test_ddp_inside_a_basic_launcher_sweep_runs_each_job_once(tmp_path):
    logs = tmp_path / "logs"
    argv = command("train.py", "-m", *TINY, *DDP, "trainer.max_steps=1", "module.lr=1e-4,3e-4",
                   f"paths.log_dir={logs}")
    assert run(argv, tmp_path / "basic.log") == 0, (tmp_path / "basic.log").read_text()[-3000:]
    experiment = logs / "train" / "stablesr_tiny"
    (sweep_dir,) = (experiment / "multiruns").iterdir()  # rank 1 started no second sweep
    assert not (experiment / "runs").exists()
    assert sorted(path.name for path in sweep_dir.iterdir() if path.is_dir() and not path.name.startswith(".")) == [
        "0", "1"]
    for job in ("0", "1"):
        assert last_checkpoint(sweep_dir / job)["global_step"] == 1
        assert len(last_checkpoint(sweep_dir / job)["SRDataModule"]["ranks"]) == 2


# ------------------------------------------------------------------------------------------------- failing sweeps
def failure_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if " failed: " in line]


def wait_until_running(sweep_dir: Path, timeout: float = 300) -> str:
    """The SLURM id of the sweep's one job (one job: not an array) once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in (sweep_dir / ".submitit").glob("*"):
            state = subprocess.run(["squeue", "-h", "-j", folder.name, "-o", "%T"], capture_output=True, text=True)
            if state.stdout.strip() == "RUNNING":
                return folder.name
        time.sleep(1)
    pytest.fail(f"no job of {sweep_dir} ran within {timeout} s")


def test_a_sweep_with_failing_or_cancelled_jobs_ends_promptly_with_one_line_per_failed_job(tmp_path):
    """Sweep 1: job #1 has no data folder and fails inside its job; sweep 2: its one job is cancelled (scancel) while
    it trains. Without accounting, each sweep ends soon after its last job, exit 1, one line per failed job naming
    its overrides and its error; the job that worked finished."""
    logs, missing = tmp_path / "logs", tmp_path / "no_such_folder"
    failing = start(command("train.py", "-m", *TINY, *SLURM, "trainer.max_steps=1", f"paths.log_dir={logs}",
                            f"data.train_dirs=[data/samples/train],[{missing}]",
                            f"hydra.sweep.dir={tmp_path / 'failing'}"), tmp_path / "failing.log")
    cancelled = start(command("train.py", "-m", *TINY, *SLURM, "trainer.max_steps=20", f"paths.log_dir={logs}",
                              "+callbacks.slow._target_=cluster_callbacks.SlowUntilRequeued",
                              "+callbacks.slow.seconds=20", "seed=5", f"hydra.sweep.dir={tmp_path / 'cancelled'}"),
                      tmp_path / "cancelled.log")
    try:
        job_id = wait_until_running(tmp_path / "cancelled")
        subprocess.run(["scancel", job_id], check=True)
        cancelled_at = time.monotonic()
        assert finish(cancelled, tmp_path / "cancelled.log", timeout=240) == 1
        waited = time.monotonic() - cancelled_at
        assert finish(failing, tmp_path / "failing.log", timeout=300) == 1
    finally:
        for process in (failing, cancelled):
            process.kill()

    (line,) = failure_lines(tmp_path / "failing.log")
    assert line.startswith(f"train: job #1 (data.train_dirs=[{missing}]) failed: ")
    assert f"{missing}: no such file or folder" in line and "Traceback" not in (tmp_path / "failing.log").read_text()
    assert last_checkpoint(tmp_path / "failing" / "0")["global_step"] == 1  # the other job worked
    (line,) = failure_lines(tmp_path / "cancelled.log")
    assert line.startswith("train: job #0 (") and "seed=5" in line
    assert f"SLURM job {job_id} ended CANCELLED without a result" in line
    print(f"cancelled job: {line}\nthe sweep ended {waited:.0f} s after scancel")
    assert waited < 120  # KillWait (10 s) + the launcher's grace period (30 s) + polls


def test_bad_settings_stop_a_sweep_before_submission_with_one_line(tmp_path):
    """A value the job would refuse, a time limit SLURM would read as unlimited, the README's CPU-cluster command
    without a trained prior: exit 1, one line naming the key, nothing submitted."""
    logs = tmp_path / "logs"
    cases = {
        "lr": ([*TINY, *SLURM, "module.lr=1e-4,abc"],
               "train: error: nothing submitted: job #1 (module.lr=abc): module.lr='abc': must be a number"),
        "timeout": ([*TINY, *SLURM, "hydra.launcher.timeout_min=-5"],
                    "hydra/launcher=slurm: hydra.launcher.timeout_min=-5: must be a positive whole number of minutes"),
        "prior": (["experiment=stablesr_tiny", "trainer=cpu", "hydra/launcher=slurm", "slurm.cpus_per_task=1",
                   "slurm.mem_gb_per_task=3", "module.lr=1e-4,2e-4"],
                  (f"no prior at {logs}/release/prior/model; make it with `python train.py experiment=prior_tiny "
                   f"hydra.run.dir={logs}/release/prior` (or `make release-train`)")),
    }
    for name, (overrides, message) in cases.items():
        sweep_dir = tmp_path / name
        log = tmp_path / f"{name}.log"
        argv = command("train.py", "-m", *overrides, f"paths.log_dir={logs}", f"hydra.sweep.dir={sweep_dir}")
        assert run(argv, log, timeout=120) == 1, log.read_text()[-2000:]
        errors = [line for line in log.read_text().splitlines() if "error" in line or "must be" in line]
        assert len(errors) == 1 and message in errors[0], log.read_text()[-2000:]
        assert not (sweep_dir / ".submitit").exists()  # nothing submitted


def test_eval_on_a_cpu_cluster_is_told_the_override_eval_accepts(tmp_path):
    argv = command("eval.py", "-m", "hydra/launcher=slurm", "slurm.cpus_per_task=1", "slurm.mem_gb_per_task=3",
                   "model=tiny", f"paths.log_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'eval'}")
    assert run(argv, tmp_path / "eval.log", timeout=120) == 1
    text = (tmp_path / "eval.log").read_text()
    assert "1 GPUs per node but the nodes of partition 'debug' have 0: device=cpu (no GPU)" in text, text[-2000:]
    assert "trainer=cpu" not in text


# ------------------------------------------------------------------------------------------------- DDP exact resume
def rank_losses(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads((run_dir / f"rank{rank}_losses.json").read_text()) for rank in (0, 1)]


def test_ddp_two_ranks_resume_exactly_for_both_ranks(requeue_runs, tmp_path):
    """Straight: 4 steps under plain ``srun`` (2 tasks, one run dir chosen by rank 0). Through the launcher: the same
    run crashes at step 2, and re-submitting it into its sweep dir resumes from its own last.ckpt. Each rank's
    losses, data-pipeline state and the weights equal the straight run's; the logged loss is the mean of the ranks."""
    common = [*TINY, *DDP, "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=1",
              "+callbacks.ranks._target_=cluster_callbacks.RankLosses"]
    logs = tmp_path / "logs"
    srun = ["sbatch", "--wait", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=6G", "--time=15",
            f"--output={tmp_path / 'srun.out'}",
            "--wrap", shlex.join(["srun", *command("train.py", *common, f"paths.log_dir={logs}")])]
    assert run(srun, tmp_path / "sbatch.log") == 0, (tmp_path / "srun.out").read_text()[-3000:]
    (straight,) = (logs / "train" / "stablesr_tiny" / "runs").iterdir()  # one run dir for both ranks

    sweep_dir = tmp_path / "ddp"
    crash = ["+callbacks.kill._target_=cluster_callbacks.KillAtStep", "+callbacks.kill.step=2"]
    crashed = command("train.py", "-m", *common, *SLURM, *crash, f"hydra.sweep.dir={sweep_dir}")
    assert run(crashed, tmp_path / "crashed.log") != 0
    job = sweep_dir / "0"
    assert last_checkpoint(job)["global_step"] == 2
    resubmitted = command("train.py", "-m", *common, *SLURM, f"hydra.sweep.dir={sweep_dir}")
    assert run(resubmitted, tmp_path / "resubmitted.log") == 0, job_logs(sweep_dir)[-3000:]
    assert "resuming from this run's own checkpoint" in job_logs(sweep_dir)

    reference, resumed = last_checkpoint(straight), last_checkpoint(job)
    assert reference["global_step"] == resumed["global_step"] == 4
    for rank, (want, got) in enumerate(zip(rank_losses(straight), rank_losses(job), strict=True)):
        assert set(want) == set(got) == {"1", "2", "3", "4"}
        assert [got[step] for step in ("3", "4")] == [want[step] for step in ("3", "4")], rank  # after the resume
        want_state = reference["SRDataModule"]["ranks"][rank]
        got_state = resumed["SRDataModule"]["ranks"][rank]
        assert torch.equal(want_state["generator_state"], got_state["generator_state"]), rank
        assert all(torch.equal(want_state["pool"][key], got_state["pool"][key]) for key in ("lq", "gt")), rank
        print(f"DDP rank {rank}: losses after resume {[got[s] for s in ('3', '4')]} == straight; degradation "
              f"generator state and pair pool equal")
    assert rank_losses(straight)[0] != rank_losses(straight)[1]  # the ranks saw different data
    difference = max_difference(weights(job), weights(straight))
    print(f"DDP: max |weight difference| resumed vs straight: {difference:.3g}")
    assert difference <= 1e-6
    # the logged loss is the mean over the ranks (sync_dist), not rank 0's
    rows = [line.split(",") for line in (straight / "csv" / "metrics.csv").read_text().splitlines()]
    column, step_column = rows[0].index("train/loss"), rows[0].index("step")
    logged = {int(row[step_column]) + 1: float(row[column]) for row in rows[1:] if row[column]}
    ranks = rank_losses(straight)
    for step, value in logged.items():
        assert abs(value - (ranks[0][str(step)] + ranks[1][str(step)]) / 2) < 1e-6, step


# ---------------------------------------------------------------------------------------------- requeue (checked last)
def start_requeued_jobs_now(sweep_dir: Path) -> None:
    """SLURM holds a requeued job for about two minutes (Reason=BeginTime); let it start at once."""
    for folder in (sweep_dir / ".submitit").glob("*"):
        reason = subprocess.run(["squeue", "-h", "-j", folder.name, "-o", "%r"], capture_output=True, text=True)
        if reason.stdout.strip() == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={folder.name}", "StartTime=now"], capture_output=True)


def test_requeued_job_resumes_from_its_own_checkpoint_and_matches_an_uninterrupted_run(requeue_runs):
    root, processes = requeue_runs
    deadline = time.monotonic() + 900
    while processes["requeued"].poll() is None and time.monotonic() < deadline:
        start_requeued_jobs_now(root / "requeued")
        time.sleep(2)
    for name, process in processes.items():
        code = finish(process, root / f"{name}.log", timeout=max(1, deadline - time.monotonic()))
        assert code == 0, (root / f"{name}.log").read_text()[-3000:] + job_logs(root / name)[-3000:]
    logs = job_logs(root / "requeued")
    saved = [int(step) for step in re.findall(r"\[train\] step (\d+): saved .*last\.ckpt; requeueing", logs)]
    assert len(saved) == 1 and 0 < saved[0] < REQUEUE_STEPS, logs[-3000:]
    assert logs.count("[train] resuming from this run's own checkpoint") == 1
    assert "SystemExit" not in logs and "ConnectionResetError" not in logs  # a requeue is no error
    job = root / "requeued" / "0"
    # W&B: the first attempt's run is complete up to the requeue, the requeued one continues its id and steps
    first, resumed = (offline_run(folder) for folder in sorted((job / "wandb").glob("offline-run-*")))
    assert first["id"] == resumed["id"]
    assert [row["_step"] for row in first["history"]] == list(range(saved[0]))
    assert [row["_step"] for row in resumed["history"]] == list(range(saved[0], REQUEUE_STEPS))
    assert last_checkpoint(job)["global_step"] == REQUEUE_STEPS
    assert sorted(path.name for path in (job / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt
    difference = max_difference(weights(job), weights(root / "reference" / "0"))
    print(f"requeue: saved at step {saved[0]}, requeued, finished at step {REQUEUE_STEPS}; max |weight difference| "
          f"to the uninterrupted run: {difference:.3g}")
    assert difference <= 1e-6
