"""Training fault cases of issue 22 that need no cluster: a kill during a checkpoint write, a damaged last.ckpt on
resume, bad settings named before anything is built, a job started from another working directory. (The SLURM rows:
tests/test_cluster.py.)"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sr.commands.train import compose_train_config, resume_checkpoint, train
from sr.errors import ConfigError
from sr.training.callbacks import DurableCheckpointIO, RunCheckpoint
from sr.utils.checkpoint import CheckpointError
from sr.validation import validate_train

ROOT = Path(__file__).resolve().parents[1]

KILLED_DURING_WRITE = """
import os, sys, time, torch
from sr.training.callbacks import DurableCheckpointIO
def stalled_fsync(descriptor):  # the write reached the temporary file; stall here until killed
    print("writing", flush=True)
    time.sleep(600)
os.fsync = stalled_fsync
DurableCheckpointIO().save_checkpoint({"global_step": 2, "weights": torch.full((256, 1024), 2.0)}, sys.argv[1])
"""


def test_a_kill_during_the_checkpoint_write_leaves_the_previous_last_ckpt_whole(tmp_path):
    """The previous last.ckpt (step 1) is written, then a second save is killed (SIGKILL) mid-write: last.ckpt is
    still the complete step-1 checkpoint, the cut temporary file lies beside it (never in the temp dir)."""
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    DurableCheckpointIO().save_checkpoint({"global_step": 1, "weights": torch.ones(256, 1024)}, last)
    temp_dir = tmp_path / "system_tmp"
    temp_dir.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_DURING_WRITE, str(last)], stdout=subprocess.PIPE,
                              text=True, env=os.environ | {"PYTHONPATH": str(ROOT), "TMPDIR": str(temp_dir)})
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    loaded = torch.load(last, weights_only=True)
    assert loaded["global_step"] == 1 and torch.equal(loaded["weights"], torch.ones(256, 1024))
    leftovers = [path for path in last.parent.iterdir() if path != last]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".last.ckpt") and leftovers[0].stat().st_size > 0
    assert list(temp_dir.iterdir()) == []
    DurableCheckpointIO().save_checkpoint({"global_step": 3}, last)  # the next save clears the killed one's file
    assert [path.name for path in last.parent.iterdir()] == ["last.ckpt"]
    assert torch.load(last, weights_only=True)["global_step"] == 3


def run_checkpoint(folder: Path) -> RunCheckpoint:
    return RunCheckpoint(dirpath=str(folder), filename="step{step:07d}", save_last=True, enable_version_counter=False)


def test_a_damaged_last_ckpt_is_named_and_the_newest_readable_step_checkpoint_resumes(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    for step in (1, 2):
        DurableCheckpointIO().save_checkpoint({"global_step": step}, folder / f"step{step:07d}.ckpt")
    good = (folder / "step0000002.ckpt").read_bytes()
    (folder / "step0000003.ckpt").write_bytes(good[: len(good) // 2])  # cut short too
    (folder / "last.ckpt").write_bytes(b"")  # what the non-atomic save left
    assert resume_checkpoint([run_checkpoint(folder)], None) == str(folder / "step0000002.ckpt")
    out = capsys.readouterr().out
    assert f"warning: {folder / 'last.ckpt'}: empty file (0 bytes)" in out and "resuming from" in out
    for path in folder.glob("step*.ckpt"):
        path.unlink()
    with pytest.raises(CheckpointError, match=r"last\.ckpt: empty file .* no readable step\*\.ckpt"):
        resume_checkpoint([run_checkpoint(folder)], None)


def test_bad_learning_rate_and_missing_prior_are_named_before_anything_is_built(tmp_path):
    with pytest.raises(ConfigError, match=r"^module.lr='abc': must be a number$"):
        validate_train(compose_train_config(["experiment=stablesr_tiny", "model.pretrained=null", "module.lr=abc"],
                                            tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"module.lr=-0.1: must be a number > 0"):
        validate_train(compose_train_config(["model.pretrained=null", "module.lr=-0.1"], tmp_path / "run"))
    logs = tmp_path / "logs"
    cfg = compose_train_config(["experiment=stablesr_tiny", f"paths.log_dir={logs}"], tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        validate_train(cfg)
    prior = logs / "release" / "prior" / "model"
    assert str(refused.value) == (f"model.pretrained={prior}: no prior at {prior}; make it with `python train.py "
                                  f"experiment=prior_tiny hydra.run.dir={prior.parent}` (or `make release-train`)")


def test_data_paths_come_from_paths_data_dir(tmp_path):
    cfg = compose_train_config(["experiment=stablesr_tiny", f"paths.data_dir={tmp_path}/d"], tmp_path / "run")
    assert list(cfg.data.train_dirs) == [f"{tmp_path}/d/samples/train"]
    assert cfg.data.val_lr_dir == f"{tmp_path}/d/samples/heldout_pairs/lr"


@pytest.mark.slow  # about 20 s on 2 busy cores
def test_a_job_started_from_another_working_directory_finds_its_data(tmp_path):
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "experiment=stablesr_tiny", "model.pretrained=null",
         "+trainer.fast_dev_run=1", "~callbacks.progress_bar", "trainer.enable_progress_bar=false",
         f"paths.log_dir={tmp_path / 'logs'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["logs"]  # nothing written into the cwd
    print(f"train.py fast_dev_run from another working directory: {time.monotonic() - started:.0f} s")


def test_wandb_across_a_requeue_first_attempt_complete_and_the_resumed_run_continues_its_steps(tmp_path,
                                                                                              monkeypatch, capfd):
    """A requeue at step 2 of 3 with ``logger=wandb`` (offline): the first attempt's W&B run is finished (flushed)
    before submitit's handler runs (which requeues and so ends every process of the job); the requeued job logs to
    the same run id and its history continues at the global step, not at 0; no exit or connection traceback."""
    import wandb
    from test_train import SHORT_RUN
    from wandb_offline import offline_run

    monkeypatch.delenv("WANDB_DIR", raising=False)  # the run dir decides
    calls = []

    def submitit_handler(signum, frame):
        calls.append(wandb.run)  # None: the run was finished before the job is requeued
        raise SystemExit(-1)

    submitit_handler.__module__ = "submitit.core.job_environment"
    steps = SHORT_RUN + ["logger=wandb", "trainer.log_every_n_steps=1", "trainer.max_steps=3",
                         "callbacks.model_checkpoint.every_n_train_steps=100"]
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SystemExit):
            train(compose_train_config(steps + ["+callbacks.signal._target_=test_train.SignalAtStep",
                                                "+callbacks.signal.step=1"], tmp_path))
        train(compose_train_config(steps, tmp_path))  # the requeued job: same run dir
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [None]
    first, resumed = (offline_run(folder) for folder in sorted((tmp_path / "wandb").glob("offline-run-*")))
    assert first["id"] == resumed["id"]
    first_steps = [row["_step"] for row in first["history"]]
    resumed_steps = [row["_step"] for row in resumed["history"]]
    assert first_steps == [row["trainer/global_step"] for row in first["history"]] and first_steps[-1] == 1
    assert "train/loss" in first["history"][-1]  # the last row before the requeue reached the disk
    assert resumed_steps[0] > first_steps[-1] and resumed_steps == sorted(resumed_steps)
    output = capfd.readouterr()
    assert "SystemExit" not in output.err + output.out and "ConnectionResetError" not in output.err + output.out
