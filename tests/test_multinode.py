"""Two nodes by simulation: ``torchrun --nnodes=2`` started twice on this machine (node ranks 0 and 1, meeting on the
loopback address), each node running one CPU rank of ``train.py ... trainer=multinode`` (DDP over gloo), as a user
starts one ``torchrun`` per node of a cluster.

Checked: both nodes end well and name one run dir (rank 0 claims it, the other node's rank follows through
torchrun's store: ``sr.commands.launch.run_stamp``), and a 2-node run stopped after step 2 and resumed from its
``last.ckpt`` ends, on every rank, where an uninterrupted 2-node run ends: the same exported weights, the same
weights on both ranks, and each rank's step-3 loss as in the uninterrupted run (its own data and random state
restored).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import SHORT_RUN, assert_same_tensors

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
NODES = 2
LAUNCH_TIMEOUT_S = 240  # one launch of both nodes (a few steps of the tiny preset); a hang fails the test
MULTINODE = ["trainer=multinode", "trainer.devices=1", "trainer.accelerator=cpu",
             "+callbacks.rank_weights._target_=cluster_callbacks.RankWeights",
             "+callbacks.rank_losses._target_=cluster_callbacks.RankLosses"]
RUN_DIR_LINE = "[train] run dir: "


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_env() -> dict:
    """This environment without what an earlier in-process run of this session may have left (rank-0 exports,
    a process group's variables), the test callbacks' folder on ``PYTHONPATH``, and one thread per rank: the fast CPU
    mode, which keeps the thread count it is given (the reproducible mode would pin 2 per rank; all runs compared
    here run on this machine with the same count)."""
    leftovers = ("SR_", "TORCHELASTIC_", "MASTER_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "NODE_RANK")
    env = {key: value for key, value in os.environ.items() if not key.startswith(leftovers)}
    return env | {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "STABLESR_REPRODUCIBLE": "0", "OMP_NUM_THREADS": "1",
                  "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, their children and so on (``/proc``)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in children.read_text().split()]
        except OSError:  # the thread or the process ended meanwhile
            continue
    return found + [grandchild for child in found for grandchild in descendants(child)]


def stop(process: subprocess.Popen) -> None:
    """End a node that is still running: torchrun passes SIGTERM on to its rank (which runs in a session of its
    own); whatever of the two is left after that is killed."""
    started = descendants(process.pid)
    process.terminate()
    try:
        process.wait(timeout=40)  # torchrun gives its ranks 30 s to end after the signal
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch_two_nodes(log_dir: Path, overrides: list[str]) -> Path:
    """``torchrun --nnodes=2 ... train.py`` once per node, side by side; both must end with exit 0 within
    ``LAUNCH_TIMEOUT_S`` and name the same run dir, the only one under ``log_dir``. Returns it."""
    port = free_port()
    log_dir.mkdir(parents=True)
    nodes, logs, hung = [], [], []
    start = time.monotonic()
    try:
        for node_rank in range(NODES):
            argv = [str(TORCHRUN), f"--nnodes={NODES}", "--nproc_per_node=1", f"--node_rank={node_rank}",
                    "--master_addr=127.0.0.1", f"--master_port={port}", str(ROOT / "train.py"),
                    *SHORT_RUN, *MULTINODE, f"paths.log_dir={log_dir}", *overrides]
            logs.append(log_dir.parent / f"{log_dir.name}.node{node_rank}.log")
            with logs[-1].open("w") as output:
                nodes.append(subprocess.Popen(argv, cwd=ROOT, env=node_env(), stdout=output,
                                              stderr=subprocess.STDOUT))
        while time.monotonic() < start + LAUNCH_TIMEOUT_S and any(node.poll() is None for node in nodes):
            if any(node.poll() not in (None, 0) for node in nodes):
                break  # one node failed: the other would wait for it until torchrun's own timeouts
            time.sleep(0.5)
    finally:
        hung = [rank for rank, node in enumerate(nodes) if node.poll() is None]
        for rank in hung:
            stop(nodes[rank])
    report = "".join(f"\n--- node {rank} (exit {node.returncode}) ---\n{log.read_text()[-3000:]}"
                     for rank, (node, log) in enumerate(zip(nodes, logs, strict=True)))
    assert not hung, f"nodes {hung} still running after {time.monotonic() - start:.0f} s: stopped{report}"
    assert all(node.returncode == 0 for node in nodes), report
    texts = [log.read_text() for log in logs]
    named = [[line.removeprefix(RUN_DIR_LINE) for line in text.splitlines() if line.startswith(RUN_DIR_LINE)]
             for text in texts]
    assert all(len(dirs) == 1 for dirs in named) and named[0] == named[1], (named, report)
    run_dir = Path(named[0][0])
    runs = run_dir.parent
    assert runs == log_dir / "train" / "stablesr_tiny" / "runs"
    assert list(runs.iterdir()) == [run_dir]  # no second run dir (the other node's rank claimed none)
    assert sorted(path.name for path in log_dir.iterdir()) == ["train"]
    return run_dir


def rank_losses(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads((run_dir / f"rank{rank}_losses.json").read_text()) for rank in range(NODES)]


def rank_weights(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(run_dir / f"rank{rank}_weights.safetensors") for rank in range(NODES)]


@pytest.mark.slow
def test_two_nodes_share_one_run_dir_and_resume_exactly_on_every_rank(tmp_path):
    straight = launch_two_nodes(tmp_path / "straight", ["trainer.max_steps=3"])
    stopped = launch_two_nodes(tmp_path / "stopped", ["trainer.max_steps=2"])
    last = stopped / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 2
    assert len(checkpoint["SRDataModule"]["ranks"]) == NODES  # both ranks' data state, one per node
    resumed = launch_two_nodes(tmp_path / "resumed", ["trainer.max_steps=3", f"ckpt_path={last}"])
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3

    # the exported weights of the resumed run are those of the uninterrupted one
    assert_same_tensors(load_file(resumed / "stage1.safetensors"), load_file(straight / "stage1.safetensors"))
    # every rank holds them: the same weights on both ranks, equal to the uninterrupted run's ranks
    reference, again = rank_weights(straight), rank_weights(resumed)
    for rank in range(NODES):
        assert_same_tensors(again[rank], again[0], atol=0)
        assert_same_tensors(again[rank], reference[rank])
    # every rank took step 3 from its own restored data and random state: its loss as in the uninterrupted run
    straight_losses, resumed_losses = rank_losses(straight), rank_losses(resumed)
    assert [sorted(losses) for losses in resumed_losses] == [["3"]] * NODES
    for rank in range(NODES):
        assert resumed_losses[rank]["3"] == pytest.approx(straight_losses[rank]["3"], rel=1e-6, abs=1e-7)
    assert straight_losses[0]["3"] != straight_losses[1]["3"]  # the two ranks trained on different batches
    # step 3 changed the weights, so the equalities above are not trivial
    at_step_2 = rank_weights(stopped)[0]
    assert any(not torch.equal(tensor, again[0][key]) for key, tensor in at_step_2.items())
