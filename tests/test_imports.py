"""Import structure: the layers of the ``sr`` package only import downwards (read from the source, nothing run),
and importing ``sr`` has no side effects (checked in a fresh interpreter)."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SR = Path(__file__).resolve().parents[1] / "sr"
# What sr.pipelines builds on: none of these may import it (the pipeline is assembled from them, not the reverse).
BELOW_PIPELINES = ("models", "sampling", "ops", "utils", "data", "compat", "metrics", "io.py", "config.py",
                   "validation.py", "errors.py")


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Absolute module names imported by one source file (``import a.b`` and ``from a.b import c`` -> ``a.b``,
    ``a.b.c``); relative imports are resolved against ``package`` (default: the file's package under ``sr``)."""
    package = package or ".".join(path.relative_to(SR.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def sources(*entries: str) -> list[Path]:
    paths = []
    for entry in entries:
        target = SR / entry
        paths.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target] if target.is_file() else [])
    return paths


def test_nothing_below_sr_pipelines_imports_it():
    offenders = {str(path.relative_to(SR.parent)): sorted(name for name in imported_modules(path)
                                                          if name == "sr.pipelines" or name.startswith("sr.pipelines."))
                 for path in sources(*BELOW_PIPELINES)}
    assert sources("models", "ops") and {k: v for k, v in offenders.items() if v} == {}


def test_sr_ops_imports_nothing_from_sr():
    offenders = {str(path.relative_to(SR.parent)): sorted(name for name in imported_modules(path)
                                                          if name == "sr" or name.startswith("sr."))
                 for path in sources("ops")}
    assert offenders and {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_imports_of_every_form(tmp_path):
    """The checks above would pass vacuously if ``imported_modules`` missed a form of import."""
    probe = tmp_path / "probe.py"
    probe.write_text("import sr.pipelines\nfrom sr.models import cfw\n"
                     "from ..pipelines import build\nfrom . import color\n")
    expected = {"sr.pipelines", "sr.models", "sr.models.cfw", "sr.pipelines.build", "sr.ops.color"}
    assert expected <= imported_modules(probe, package="sr.ops")


@pytest.mark.parametrize("module", ["sr.training", "sr"])
def test_importing_registers_no_resolver_and_touches_no_global_state(module):
    """A fresh interpreter imports ``module`` (for ``sr``: every module of the package); OmegaConf's resolvers,
    ``$PROJECT_ROOT`` and torch's global RNG are exactly as before (resolvers are registered by entry points only)."""
    script = f"""
import importlib, json, os, pkgutil
import torch
from omegaconf.basecontainer import BaseContainer
before = (sorted(BaseContainer._resolvers), os.environ.get("PROJECT_ROOT"), torch.random.get_rng_state())
import {module}
if "{module}" == "sr":
    for info in pkgutil.walk_packages({module}.__path__, "sr."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
after = (sorted(BaseContainer._resolvers), os.environ.get("PROJECT_ROOT"), torch.random.get_rng_state())
print(json.dumps({{"resolvers": [before[0], after[0]], "project_root": [before[1], after[1]],
                  "rng_unchanged": bool(torch.equal(before[2], after[2]))}}))
"""
    environment = {key: value for key, value in os.environ.items() if key != "PROJECT_ROOT"}
    environment["PYTHONPATH"] = str(SR.parent)
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=SR.parent, env=environment, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    state = json.loads(completed.stdout.strip().splitlines()[-1])
    assert state["resolvers"][1] == state["resolvers"][0]
    assert state["project_root"] == [None, None]
    assert state["rng_unchanged"]
