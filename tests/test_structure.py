"""Import structure of the ``sr`` package: layers import only downwards, and importing has no side effects.

The import graph is read from the source (``ast``), so a rule holds for every module, imported by a test or not.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sr"
# the layers StableSRPipeline is built from; they must not import it (only callers above it may)
BELOW_PIPELINES = ("sr.ops", "sr.models", "sr.sampling", "sr.data", "sr.metrics", "sr.utils", "sr.compat", "sr.io")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved, ``from x import y`` gives x.y)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def sr_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_import_reader_sees_every_import_form(tmp_path):
    probe = tmp_path / "sr" / "sampling" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("import sr.ops.color\nfrom sr.models import cfw\nfrom ..ops import tiling\nfrom . import aggregation\n")
    names = imported_modules(probe, root=tmp_path)
    assert {"sr.ops.color", "sr.models.cfw", "sr.ops.tiling", "sr.sampling.aggregation"} <= names


def test_ops_is_pure_math_and_imports_nothing_from_sr():
    modules = {name: path for name, path in sr_modules().items() if is_within(name, "sr.ops")}
    assert modules, "sr/ops has no modules"
    offenders = {
        name: sorted(imported for imported in imported_modules(path) if is_within(imported, "sr"))
        for name, path in modules.items()
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_nothing_below_the_pipelines_imports_them():
    offenders = {
        name: sorted(imported for imported in imported_modules(path) if is_within(imported, "sr.pipelines"))
        for name, path in sr_modules().items()
        if any(is_within(name, layer) for layer in BELOW_PIPELINES)
    }
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize("module", ["sr.training", "sr"])
def test_importing_registers_no_resolver_and_touches_no_global_state(module):
    """A fresh interpreter imports ``module`` (and, for ``sr``, every module of the package): OmegaConf resolvers,
    ``$PROJECT_ROOT`` and torch's global RNG are exactly as before."""
    script = f"""
import json, os, pkgutil, importlib
import torch
from omegaconf.basecontainer import BaseContainer
before = (sorted(BaseContainer._resolvers), os.environ.get("PROJECT_ROOT"), torch.random.get_rng_state())
import {module}
if "{module}" == "sr":
    import sr
    for info in pkgutil.walk_packages(sr.__path__, "sr."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
after = (sorted(BaseContainer._resolvers), os.environ.get("PROJECT_ROOT"), torch.random.get_rng_state())
print(json.dumps({{"resolvers": [before[0], after[0]], "project_root": [before[1], after[1]],
                  "rng_unchanged": bool(torch.equal(before[2], after[2]))}}))
"""
    environment = {key: value for key, value in os.environ.items() if key != "PROJECT_ROOT"}
    environment["PYTHONPATH"] = str(ROOT)
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    state = json.loads(completed.stdout.strip().splitlines()[-1])
    assert state["resolvers"][1] == state["resolvers"][0]
    assert state["project_root"] == [None, None]
    assert state["rng_unchanged"]
