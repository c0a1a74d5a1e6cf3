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
BELOW_PIPELINES = ("models", "sampling", "ops", "utils", "data", "compat", "metrics", "io.py", "validation.py",
                   "errors.py")


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


ENTRY_POINT_FOLDERS = ("", "scripts", "benchmarks", "data")


def first_import_line(path: Path, package: str) -> int | None:
    """The line of the first top-level statement of ``path`` that imports ``package`` or one of its modules."""
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        if any(name == package or name.startswith(f"{package}.") for name in names):
            return node.lineno
    return None


def test_entry_points_import_sr_before_diffusers():
    """``sr/__init__.py`` filters the warning bitsandbytes logs when diffusers imports it; a command that imports
    diffusers first would open with that warning, so every command file imports ``sr`` (or a module of it) first."""
    lines = {str(path.relative_to(SR.parent)): (first_import_line(path, "sr"), first_import_line(path, "diffusers"))
             for folder in ENTRY_POINT_FOLDERS for path in sorted((SR.parent / folder).glob("*.py"))}
    importing_diffusers = {name: (sr, diffusers) for name, (sr, diffusers) in lines.items() if diffusers is not None}
    late = {name: pair for name, pair in importing_diffusers.items() if pair[0] is None or pair[0] > pair[1]}
    assert importing_diffusers and late == {}


def test_the_checker_sees_imports_of_every_form(tmp_path):
    """The checks above would pass vacuously if ``imported_modules`` missed a form of import."""
    probe = tmp_path / "probe.py"
    probe.write_text("import sr.pipelines\nfrom sr.models import cfw\n"
                     "from ..pipelines import build\nfrom . import color\n")
    expected = {"sr.pipelines", "sr.models", "sr.models.cfw", "sr.pipelines.build", "sr.ops.color"}
    assert expected <= imported_modules(probe, package="sr.ops")


@pytest.mark.slow  # about 20 s for both: each imports the package in a fresh process (CI runs make test-slow)
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


# The command modules (entry-point logic, eval cache, recipe, converter, memory guard, launch, report, web demo):
# the pipeline imports none of them, nor sr.training (the LightningModules and the train command).
COMMAND_MODULES = ("sr.commands",)
# Training, evaluation and cluster dependencies (the [train], [eval], [cluster] extras), none needed to upscale.
HEAVY_PACKAGES = ("lightning", "pytorch_lightning", "basicsr", "pyiqa", "wandb", "hydra", "submitit", "lpips",
                  "torchmetrics", "torch_fidelity", "gradio", "matplotlib")
ROOT = SR.parent


def run_python(script: str, *, isolated_site: Path | None = None, timeout: int = 300) -> dict:
    """Run ``script`` in a fresh interpreter from the checkout; its last stdout line is JSON, returned parsed.

    With ``isolated_site``, the interpreter starts without ``site`` (``-S``): it sees the standard library, that
    folder and this checkout only, as if nothing but the packages linked there were installed."""
    environment = {key: value for key, value in os.environ.items() if key != "PROJECT_ROOT"}
    environment["PYTHONPATH"] = str(ROOT) if isolated_site is None else f"{isolated_site}{os.pathsep}{ROOT}"
    environment["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, *(["-S"] if isolated_site is not None else []), "-c", script]
    completed = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_importing_the_pipeline_loads_no_command_module_and_no_training_package():
    loaded = run_python("import json, sys\nimport sr.pipelines\nprint(json.dumps(sorted(sys.modules)))")
    commands = sorted(name for name in loaded if any(name == c or name.startswith(c + ".") for c in COMMAND_MODULES))
    heavy = sorted({name.split(".")[0] for name in loaded} & set(HEAVY_PACKAGES))
    training = sorted(name for name in loaded if name == "sr.training" or name.startswith("sr.training."))
    assert "sr.pipelines.stablesr" in loaded   # the probe did import the pipeline
    assert (commands, heavy, training) == ([], [], [])


def base_requirements() -> list:
    """``[project] dependencies`` of pyproject.toml (what ``pip install .`` installs), parsed."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def installed_closure(requirements: list) -> dict:
    """The installed distributions that ``requirements`` pull in, transitively (their own extras not taken, markers
    evaluated here): ``{normalised name: Distribution}``. A requirement that is not installed here must be one whose
    marker excludes this platform; otherwise the test environment could not check the closure."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found, pending = {}, list(requirements)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found or (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{requirement} is required but not installed in the test environment") from None
        found[name] = distribution
        pending.extend(Requirement(text) for text in distribution.requires or [])
    return found


def link_site(distributions: dict, folder: Path) -> set[str]:
    """Symlink every top-level file and folder the ``distributions`` installed (their RECORD) into ``folder``;
    returns the importable top-level names linked."""
    folder.mkdir()
    names = set()
    for distribution in distributions.values():
        for entry in {Path(str(file)).parts[0] for file in distribution.files or []}:
            source = Path(distribution.locate_file(entry))
            if entry == ".." or entry.endswith(".pth") or not source.exists() or (folder / entry).exists():
                continue
            (folder / entry).symlink_to(source)
            names.add(entry.split(".")[0] if source.is_file() else entry)
    return names


def test_the_pipeline_runs_with_only_the_base_dependencies(tmp_path):
    """``pip install .`` without extras: only pyproject's ``dependencies`` and what they require are visible (an
    interpreter without ``site`` over a folder linking exactly those); the released tiny pipeline loads and upscales,
    every third-party module it loaded comes from that folder, and none of the extras' packages is importable there."""
    site = tmp_path / "site"
    linked = link_site(installed_closure(base_requirements()), site)
    assert {"torch", "diffusers", "safetensors"} <= linked and not linked & set(HEAVY_PACKAGES)
    script = f"""
import json, sys, sysconfig
from pathlib import Path
import torch
from PIL import Image
from sr.pipelines import StableSRPipeline
pipe = StableSRPipeline.from_pretrained({str(SR / "released" / "stablesr_tiny")!r})
pipe.set_progress_bar_config(disable=True)
lr = Image.fromarray((torch.rand(24, 24, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
out = pipe(lr, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
origins = {{}}
for name, module in list(sys.modules.items()):
    file = getattr(module, "__file__", None)
    top = name.split(".")[0]
    if file and top != "sr" and not Path(file).resolve().is_relative_to(stdlib):
        origins[top] = str(Path(file).parent if Path(file).name == "__init__.py" else Path(file))
print(json.dumps({{"size": list(out.size), "origins": origins}}))
"""
    result = run_python(script, isolated_site=site, timeout=600)
    assert result["size"] == [96, 96]
    outside = {top: origin for top, origin in result["origins"].items() if not origin.startswith(str(site))}
    assert outside == {}
    assert set(result["origins"]) <= linked
