"""CPU modes (sr/reproducibility.py): the switch, the default thread count (affinity, cgroup quota, the user's
OMP_NUM_THREADS), the reproducible pins as the libraries report them, and upscale.py bit for bit in reproducible
mode; the mode in eval's fingerprint and the report."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from sr.errors import ConfigError
from sr.reproducibility import (
    SWITCH_VARIABLE,
    available_cores,
    check_mode,
    default_threads,
    reproducible_pins,
    reproducible_requested,
    subprocess_environment,
)

REPO = Path(__file__).resolve().parents[1]
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE",
          "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_DYNAMIC": "FALSE", "MKL_DYNAMIC": "FALSE"}
# Settings that change CPU numerics when they reach the libraries (benchmarks/reproducibility.py measures each).
HOSTILE = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "AUTO",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the switch or any pinned variable, plus ``extra``."""
    environment = {key: value for key, value in os.environ.items() if key not in PINNED and key != SWITCH_VARIABLE}
    return {**environment, "PYTHONPATH": str(REPO), **extra}


def test_the_switch_comes_from_the_command_line_then_the_environment():
    assert reproducible_pins() == PINNED
    assert reproducible_requested([], {}) is False
    assert reproducible_requested([], {SWITCH_VARIABLE: "1"}) is True
    assert reproducible_requested([], {SWITCH_VARIABLE: "0"}) is False
    for argument, expected in (("reproducible=true", True), ("+reproducible=True", True),
                               ("++reproducible=false", False), ("reproducible=False", False)):
        assert reproducible_requested(["input=a.png", argument], {SWITCH_VARIABLE: str(int(not expected))}) is expected
    assert reproducible_requested(["reproducible=null"], {SWITCH_VARIABLE: "1"}) is True  # null: the environment
    assert reproducible_requested(["not_reproducible=true", "seed=1"], {}) is False


@pytest.mark.parametrize("argv, environment, message", [
    (["reproducible=yes"], {}, "^reproducible='yes': expected true .* or false"),
    (["reproducible=true,false"], {}, "^reproducible='true,false': expected true"),  # a sweep over both modes
    ([], {SWITCH_VARIABLE: "true"}, f"^{SWITCH_VARIABLE}='true': expected 1 .* or 0"),
])
def test_a_bad_switch_value_is_one_line(argv, environment, message):
    with pytest.raises(ConfigError, match=message) as caught:
        reproducible_requested(argv, environment)
    assert "\n" not in str(caught.value)


def fake_cgroup(tmp_path: Path, quotas: dict[str, str], own: str = "/jobs/job1") -> Path:
    """A cgroup v2 tree under ``tmp_path/cgroup`` with ``cpu.max`` per folder; returns the ``/proc/self/cgroup``."""
    for folder, quota in quotas.items():
        path = tmp_path / "cgroup" / folder.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        (path / "cpu.max").write_text(quota + "\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{own}\n")
    return proc


def test_available_cores_are_the_affinity_capped_by_the_tightest_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    root = tmp_path / "cgroup"
    proc = fake_cgroup(tmp_path, {"/": "max 100000", "/jobs": "max 100000", "/jobs/job1": "max 100000"})
    assert available_cores(root, proc) == 8  # no quota: the affinity
    proc = fake_cgroup(tmp_path, {"/jobs/job1": "250000 100000"})
    assert available_cores(root, proc) == 3  # 2.5 cores: 3 threads
    proc = fake_cgroup(tmp_path, {"/jobs": "50000 100000"})  # a parent's quota binds its children
    assert available_cores(root, proc) == 1
    proc = fake_cgroup(tmp_path, {"/jobs": "max 100000", "/jobs/job1": "2000000 100000"})
    assert available_cores(root, proc) == 8  # a quota above the affinity
    v1 = tmp_path / "v1_cgroup"
    v1.write_text("4:memory:/x\n1:cpu:/\n")
    assert available_cores(root, v1) == 8  # no cgroup v2: the affinity
    assert available_cores(root, tmp_path / "missing") == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert available_cores(root, proc) == 1


def test_default_threads_respect_the_users_omp_num_threads(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    monkeypatch.setattr("sr.reproducibility.CGROUP_ROOT", Path("/nonexistent"))
    assert default_threads({"OMP_NUM_THREADS": "3"}) is None  # left to the user's count
    assert default_threads({}) == available_cores(Path("/nonexistent")) == 6


def test_subprocess_environment_sets_the_switch_and_the_pins():
    base = {"PATH": "/bin", "OMP_NUM_THREADS": "8", "MKL_CBWR": "AUTO"}
    assert subprocess_environment(True, base) == {"PATH": "/bin", SWITCH_VARIABLE: "1", **PINNED}
    assert subprocess_environment(False, base) == {**base, SWITCH_VARIABLE: "0"}
    assert base == {"PATH": "/bin", "OMP_NUM_THREADS": "8", "MKL_CBWR": "AUTO"}  # a copy, not the caller's dict


def test_the_config_asking_for_the_other_mode_is_refused():
    """The test session runs in reproducible mode (conftest.py)."""
    assert check_mode(None) is True and check_mode(True) is True
    with pytest.raises(ConfigError, match=r"^reproducible=false but this process runs in reproducible mode: call "
                                          r"sr.reproducibility.configure_cpu\(reproducible=False\)"):
        check_mode(False)


def test_the_mode_is_part_of_the_generation_fingerprint_and_of_the_report(monkeypatch):
    import sr.commands.fingerprint
    from sr.commands.config import compose
    from sr.commands.fingerprint import fingerprint, generation_components
    from sr.commands.report.table import mode_text, setting_columns
    from sr.sampling.settings import resolved_settings

    cfg = compose("eval", ["model=tiny"])
    reproducible = fingerprint(generation_components(cfg, cfg.model, resolved_settings(cfg)))
    monkeypatch.setattr(sr.commands.fingerprint, "reproducible_active", lambda: False)
    assert fingerprint(generation_components(cfg, cfg.model, resolved_settings(cfg))) != reproducible

    def run(mode):
        return SimpleNamespace(settings={"w": 0.5, "reproducible": mode})

    assert mode_text([run(True), run(True)]).startswith("Made in reproducible mode (`reproducible=true`")
    assert mode_text([run(False)]).startswith("Made in default mode")
    assert mode_text([run(True), run(None)]) == ("Not made in reproducible mode: 1 of 2 runs were (the others in "
                                                 "default mode or unrecorded).")
    assert setting_columns([run(True)]) == ["method", "w"]  # a sentence, not a column


PROBE = """
import json, os, sys, warnings
if sys.argv[1] == "torch-first":
    import torch
if sys.argv[2] != "all":
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:int(sys.argv[2])]))
from sr.reproducibility import available_cores, configure_cpu, reproducible_requested
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    configure_cpu(reproducible_requested(sys.argv[3:]))
import torch
a = torch.randn(64, 64)
a @ a  # MKL: MKL_VERBOSE reports the CNR branch, dynamic threading and the thread count
torch.nn.functional.conv2d(torch.randn(1, 32, 64, 64), torch.randn(32, 32, 3, 3))  # oneDNN: ONEDNN_VERBOSE its ISA
print(json.dumps({"threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
                  "deterministic": torch.are_deterministic_algorithms_enabled(), "cuda": torch.cuda.is_available(),
                  "available": available_cores(), "switch": os.environ["STABLESR_REPRODUCIBLE"],
                  "replaced": sorted(str(w.message).split("=")[0] for w in caught)}))
"""


def probe(order: str, cores: str, argv: list[str], **environment: str) -> tuple[dict, list[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE, order, cores, *argv], check=False,
                            env=clean_environment(MKL_VERBOSE="1", ONEDNN_VERBOSE="1", **environment), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), (result.stdout + result.stderr).splitlines()


@pytest.mark.parametrize("order", ["configure-first", "torch-first"])
def test_reproducible_mode_reaches_aten_mkl_and_onednn_over_a_hostile_environment(order):
    """As an entry point calls it (before importing torch) and after ``import torch`` (thread count through
    ``torch.set_num_threads``), from the command line's switch."""
    state, lines = probe(order, "all", ["reproducible=true"], **HOSTILE)
    assert state["threads"] == 2 and state["capability"] == "AVX2" and state["switch"] == "1"
    assert state["deterministic"] == (not state["cuda"])
    assert state["replaced"] == sorted(HOSTILE)
    mkl = [line for line in lines if line.startswith("MKL_VERBOSE SGEMM")]
    assert mkl and all("CNR:COMPATIBLE Dyn:0" in line and "NThr:2" in line for line in mkl)
    onednn = [line for line in lines if line.startswith("onednn_verbose") and ",info,cpu," in line]
    assert any(line.endswith("isa:Intel AVX2") for line in onednn)
    assert any(line.endswith("nthr:2") for line in onednn)


def test_default_mode_pins_nothing_and_uses_the_available_cores():
    state, lines = probe("configure-first", "1", [])  # the affinity allows one core
    assert state == {**state, "threads": 1, "available": 1, "deterministic": False, "switch": "0", "replaced": []}
    mkl = [line for line in lines if line.startswith("MKL_VERBOSE SGEMM")]
    assert mkl and all("CNR:OFF" in line for line in mkl)
    every, _ = probe("configure-first", "all", ["reproducible=false"], **{SWITCH_VARIABLE: "1"})
    assert every["threads"] == every["available"] == len(os.sched_getaffinity(0)) and every["switch"] == "0"
    users, _ = probe("configure-first", "all", [], OMP_NUM_THREADS="1")  # the user's count stays
    assert users["threads"] == 1 and users["available"] == len(os.sched_getaffinity(0))


@pytest.mark.slow  # about 19 s: upscales in fresh processes under several environments (CI runs make test-slow)
def test_reproducible_upscale_is_bit_identical_whatever_the_environment(tmp_path):
    """upscale.py run three times at once on a 16-bit LR (16-bit output: differences far below an 8-bit level show):
    reproducible by the driver's environment, reproducible by the command line over a hostile environment, and the
    hostile environment in default mode. The first two are bit-identical; the third differs (the settings matter)."""
    lr = cv2.imread(str(REPO / "data" / "samples" / "heldout_pairs" / "lr" / "coffee.png"))[:16, :16]
    cv2.imwrite(str(tmp_path / "lr.png"), lr.astype(np.uint16) * 257)
    runs = {"driver": (subprocess_environment(True, clean_environment()), []),
            "command line": (clean_environment(**HOSTILE), ["reproducible=true"]),
            "default": (clean_environment(**HOSTILE), [])}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "upscale.py", f"input={tmp_path / 'lr.png'}", f"output={tmp_path / name}", "model=tiny",
             "num_inference_steps=2", "tile.size=16", "progress=false", *argv],
            env=environment, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (environment, argv) in runs.items()
    }
    outputs = {}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name}: {stderr[-2000:]}"
        outputs[name] = cv2.imread(str(tmp_path / name / "lr.png"), cv2.IMREAD_UNCHANGED)
    assert outputs["driver"].dtype == np.uint16 and outputs["driver"].shape == (64, 64, 3)
    assert np.array_equal(outputs["driver"], outputs["command line"])
    assert not np.array_equal(outputs["driver"], outputs["default"])


def test_a_bad_switch_on_the_command_line_is_one_line():
    environment = {key: value for key, value in clean_environment().items() if key != "HYDRA_FULL_ERROR"}
    result = subprocess.run([sys.executable, "upscale.py", "input=a.png", "output=b", "reproducible=maybe"],
                            check=False, env=environment, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(
        "upscale: error: reproducible='maybe': expected true (bit-reproducible CPU numerics) or false (fast)")
