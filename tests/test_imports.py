"""Import structure: the layers of the ``sr`` package only import downwards (read from the source, nothing run)."""

import ast
from pathlib import Path

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
