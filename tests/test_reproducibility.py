"""CPU numerics pinning (sr/reproducibility.py): the subprocess environment, the in-process pin as the libraries
report it (ATen's kernel choice, MKL_VERBOSE, ONEDNN_VERBOSE), and upscale.py's output under a hostile environment."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sr.errors import ConfigError
from sr.reproducibility import PIN_SWITCH, THREADS_VARIABLE, pin_cpu_numerics, subprocess_environment

REPO = Path(__file__).resolve().parents[1]
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE",
          "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_DYNAMIC": "FALSE", "MKL_DYNAMIC": "FALSE",
          "OMP_WAIT_POLICY": "PASSIVE"}
# Settings that change CPU numerics when they reach the libraries (benchmarks/reproducibility.py measures each).
HOSTILE = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "AUTO",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any pin or pinned variable, plus ``extra``."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in PINNED and not key.startswith("STABLESR_")}
    return {**environment, "PYTHONPATH": str(REPO), **extra}


def test_subprocess_environment_pins_over_the_users_values_and_respects_the_opt_out(monkeypatch):
    base = {"PATH": "/bin", "OMP_NUM_THREADS": "8", "MKL_CBWR": "AUTO"}
    assert subprocess_environment(base) == {"PATH": "/bin", **PINNED}
    assert base == {"PATH": "/bin", "OMP_NUM_THREADS": "8", "MKL_CBWR": "AUTO"}  # a copy, not the caller's dict
    three = subprocess_environment({**base, THREADS_VARIABLE: "3"})
    assert (three["OMP_NUM_THREADS"], three["MKL_NUM_THREADS"]) == ("3", "3")
    assert subprocess_environment({**base, PIN_SWITCH: "0"}) == {**base, PIN_SWITCH: "0"}
    assert subprocess_environment({**base, PIN_SWITCH: "1"}) == {"PATH": "/bin", PIN_SWITCH: "1", **PINNED}
    for variable, bad in ((PIN_SWITCH, "no"), (THREADS_VARIABLE, "0"), (THREADS_VARIABLE, "two")):
        with pytest.raises(ConfigError, match=f"^{variable}='{bad}': expected"):
            subprocess_environment({**base, variable: bad})
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the default base is os.environ
    assert subprocess_environment()["OMP_NUM_THREADS"] == "2"


def test_opting_out_leaves_the_process_alone(monkeypatch):
    import torch

    monkeypatch.setenv(PIN_SWITCH, "0")
    for key in PINNED:
        monkeypatch.delenv(key, raising=False)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    pin_cpu_numerics()
    assert not set(PINNED) & set(os.environ)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)


PROBE = """
import json, sys, warnings
if sys.argv[1] == "torch-first":
    import torch
from sr.reproducibility import pin_cpu_numerics
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pin_cpu_numerics()
import torch
a = torch.randn(64, 64)
a @ a  # MKL: MKL_VERBOSE reports the CNR branch, dynamic threading and the thread count
torch.nn.functional.conv2d(torch.randn(1, 32, 64, 64), torch.randn(32, 32, 3, 3))  # oneDNN: ONEDNN_VERBOSE its ISA
print(json.dumps({"threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
                  "deterministic": torch.are_deterministic_algorithms_enabled(), "cuda": torch.cuda.is_available(),
                  "replaced": sorted(str(w.message).split("=")[0] for w in caught)}))
"""


@pytest.mark.parametrize("order, threads", [("pin-first", 3), ("torch-first", 2)])
def test_the_in_process_pin_reaches_aten_mkl_and_onednn(order, threads):
    """Started in a hostile environment, the pin replaces it before the libraries read it: as an entry point calls
    it (before importing torch), and after ``import torch`` (thread count through ``torch.set_num_threads``)."""
    environment = clean_environment(**HOSTILE, **{THREADS_VARIABLE: str(threads)}, MKL_VERBOSE="1", ONEDNN_VERBOSE="1")
    result = subprocess.run([sys.executable, "-c", PROBE, order], env=environment, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["threads"] == threads and state["capability"] == "AVX2"
    assert state["deterministic"] == (not state["cuda"])
    assert state["replaced"] == sorted(HOSTILE)
    lines = (result.stdout + result.stderr).splitlines()
    mkl = [line for line in lines if line.startswith("MKL_VERBOSE SGEMM")]
    assert mkl and all("CNR:COMPATIBLE Dyn:0" in line and f"NThr:{threads}" in line for line in mkl)
    onednn = [line for line in lines if line.startswith("onednn_verbose") and ",info,cpu," in line]
    assert any(line.endswith("isa:Intel AVX2") for line in onednn)
    assert any(line.endswith(f"nthr:{threads}") for line in onednn)


def test_pinned_upscale_is_bit_identical_whatever_the_environment(tmp_path):
    """upscale.py run three times at once on a 16-bit LR (16-bit output: differences far below an 8-bit level show):
    pinned by the driver's environment, pinned in-process over a hostile environment, and the hostile environment
    with the pin opted out. The first two are bit-identical; the third differs (the hostile settings matter)."""
    lr = cv2.imread(str(REPO / "data" / "samples" / "heldout_pairs" / "lr" / "coffee.png"))[:16, :16]
    cv2.imwrite(str(tmp_path / "lr.png"), lr.astype(np.uint16) * 257)
    runs = {"driver": subprocess_environment(clean_environment()), "in-process": clean_environment(**HOSTILE),
            "opted out": clean_environment(**HOSTILE, **{PIN_SWITCH: "0"})}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "upscale.py", f"input={tmp_path / 'lr.png'}", f"output={tmp_path / name}", "model=tiny",
             "num_inference_steps=2", "tile.size=16", "progress=false"],
            env=environment, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, environment in runs.items()
    }
    outputs = {}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name}: {stderr[-2000:]}"
        outputs[name] = cv2.imread(str(tmp_path / name / "lr.png"), cv2.IMREAD_UNCHANGED)
    assert outputs["driver"].dtype == np.uint16 and outputs["driver"].shape == (64, 64, 3)
    assert np.array_equal(outputs["driver"], outputs["in-process"])
    assert not np.array_equal(outputs["driver"], outputs["opted out"])
