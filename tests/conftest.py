"""Test-session environment: offline, quiet, and nothing written outside temporary folders."""

import os
import tempfile

_SESSION_TMP = tempfile.mkdtemp(prefix="stablesr-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_DIR"] = _SESSION_TMP
os.environ["WANDB_SILENT"] = "true"
os.environ["TORCH_HOME"] = os.path.join(_SESSION_TMP, "torch_home")
os.environ["HF_HOME"] = os.path.join(_SESSION_TMP, "hf_home")
os.environ["HYDRA_FULL_ERROR"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a busy machine slows spinning OpenMP threads ~5x

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
