"""The configs ship with the package: an ``sr`` outside the checkout composes them, and its runs/data root is
``$PROJECT_ROOT`` (else the checkout, else the current directory), decided once in ``sr.commands.config``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = """
import json, sr
from omegaconf import OmegaConf
from sr.commands.config import CONFIG_DIR, compose
cfg = compose("train", ["experiment=stablesr_tiny"])
print(json.dumps({"package": sr.__file__, "config_dir": str(CONFIG_DIR), "model": cfg.model.name,
                  "paths": {key: cfg.paths[key] for key in ("root_dir", "data_dir", "log_dir")}}))
"""


def compose_elsewhere(package_parent: Path, cwd: Path, project_root: str | None = None) -> dict:
    environment = {key: value for key, value in os.environ.items() if key != "PROJECT_ROOT"}
    environment["PYTHONPATH"] = str(package_parent)
    if project_root is not None:
        environment["PROJECT_ROOT"] = project_root
    completed = subprocess.run(
        [sys.executable, "-c", COMPOSE], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def installed_copy(tmp_path_factory) -> Path:
    """``sr`` copied alone into a site-packages-like folder (no checkout around it), as a wheel installs it."""
    site = tmp_path_factory.mktemp("site-packages")
    shutil.copytree(ROOT / "sr", site / "sr", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def test_an_installed_sr_composes_its_configs_with_the_current_directory_as_root(installed_copy, tmp_path):
    work = tmp_path / "my_project"
    work.mkdir()
    result = compose_elsewhere(installed_copy, work)
    assert Path(result["package"]).is_relative_to(installed_copy)
    assert Path(result["config_dir"]) == installed_copy / "sr" / "conf"
    assert result["model"] == "tiny"
    assert result["paths"] == {"root_dir": str(work), "data_dir": f"{work}/data", "log_dir": f"{work}/runs"}


def test_project_root_comes_from_the_environment_first_then_the_checkout(installed_copy, tmp_path):
    chosen = tmp_path / "elsewhere"
    assert compose_elsewhere(installed_copy, tmp_path, str(chosen))["paths"]["log_dir"] == f"{chosen}/runs"
    from_checkout = compose_elsewhere(ROOT, tmp_path)  # cwd outside the checkout, sr from the checkout
    assert Path(from_checkout["config_dir"]) == ROOT / "sr" / "conf"
    assert from_checkout["paths"]["root_dir"] == str(ROOT)
