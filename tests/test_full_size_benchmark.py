"""benchmarks/full_size.py on the tiny preset: every table row is there and every figure is a finite number."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("full_size", ROOT / "benchmarks" / "full_size.py")
full_size = importlib.util.module_from_spec(spec)
spec.loader.exec_module(full_size)


def _rows(table: str, heading: str) -> dict[str, list[str]]:
    """The rows under ``### heading`` as {first cell: other cells}."""
    section = table.split(f"### {heading}")[1].split("###")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[2:]}


def _finite(cells: list[str]) -> bool:
    return all(math.isfinite(float(cell)) for cell in cells)


@pytest.mark.slow  # ~50 s: a fresh child process per configuration, each importing torch and diffusers
def test_full_size_benchmark_prints_finite_tables_on_tiny():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "full_size.py"), "--preset", "tiny", "--crop", "128", "--tile", "16",
         "--steps", "1", "--threads", "1", "--levers", "none", "--matmul-size", "256"],
        capture_output=True, text=True, env=env, check=False, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout
    for stage in ("stage1", "cfw", "inference"):
        rows = _rows(table, stage)
        assert list(rows) == ["none"]
        assert _finite(rows["none"]) and float(rows["none"][0]) > 0 and float(rows["none"][2]) > 0
    flops = _rows(table, "FLOPs and roofline ratio")
    assert len(flops) == 2 and all(_finite(cells) and float(cells[0]) > 0 for cells in flops.values())
    assert all(0 < float(cells[-1]) for cells in flops.values())
    projection = _rows(table, "PROJECTION")
    assert list(projection) == ["none"] and _finite(projection["none"])


def test_default_levers_leave_bf16_out_only_where_it_is_emulated(monkeypatch):
    monkeypatch.setattr(full_size, "native_bf16", lambda device: False)
    emulated = full_size.default_levers("cpu").split(",")
    monkeypatch.setattr(full_size, "native_bf16", lambda device: True)
    native = full_size.default_levers("cuda").split(",")
    assert native == list(full_size.ALL_LEVERS)
    assert emulated == [lever for lever in full_size.ALL_LEVERS if lever != "bf16"]
