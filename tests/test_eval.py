"""eval.py end to end through Hydra (in-process, so the tiny model is built once): a w x tile-overlap sweep and its
report, a sweep with a failing run, re-scoring without sampling, and resuming without re-sampling."""

import csv
import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

import sr.evaluation
from sr.pipelines import StableSRPipeline

REPO = Path(__file__).resolve().parents[1]
HELDOUT_HR = REPO / "data" / "samples" / "heldout_pairs" / "hr"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# LR 16 px -> SR 64 px, latent 8 px padded to one 16 px tile (the smallest the tiny time-aware encoder takes):
# 2 DDPM steps take about a second per image on an idle 2-core CPU.
FAST = ["model=tiny", "steps=2", "tile.size=16", "progress=false", "metrics=[psnr_y,ssim_y,fid]"]


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    """Two pairs cut from the bundled held-out images: HR 64 px (RGB and grey), LR 16 px (bicubic)."""
    root = tmp_path_factory.mktemp("pairs")
    for name in ("camera", "coffee"):
        with Image.open(HELDOUT_HR / f"{name}.png") as image:
            hr = image.resize((64, 64), Image.Resampling.BICUBIC)
        (root / "hr").mkdir(exist_ok=True)
        (root / "lr").mkdir(exist_ok=True)
        hr.save(root / "hr" / f"{name}.png")
        hr.resize((16, 16), Image.Resampling.BICUBIC).save(root / "lr" / f"{name}.png")
    return root


def run_eval(monkeypatch, *overrides: str) -> int:
    """``python eval.py <overrides>`` in this process; returns the exit code."""
    eval_script = importlib.import_module("eval")
    monkeypatch.setattr(sys, "argv", ["eval.py", *overrides])
    GlobalHydra.instance().clear()
    try:
        eval_script.main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    return 0


def data_overrides(test_set: Path) -> list[str]:
    return [f"data.lr_dir={test_set / 'lr'}", f"data.hr_dir={test_set / 'hr'}"]


def psnr_y_of_files(sr_path: Path, hr_path: Path) -> float:
    """Independent PSNR on pyiqa's Y = 0.299 R + 0.587 G + 0.114 B of two 8-bit files, data range 1."""
    def luma(path):
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
        return rgb @ np.array([0.299, 0.587, 0.114])
    mse = np.mean((luma(sr_path) - luma(hr_path)) ** 2)
    return float(10 * np.log10(1.0 / mse))


@pytest.fixture(scope="module")
def sweep(test_set, tmp_path_factory) -> Path:
    """A 2 x 2 sweep w in {0, 1} x tile.overlap in {0, 8} (the 16 px latent tile only allows overlaps below 16)."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as monkeypatch:
        code = run_eval(monkeypatch, "-m", *FAST, *data_overrides(test_set), "w=0,1", "tile.overlap=0,8",
                        f"hydra.sweep.dir={sweep_dir}")
    assert code == 0
    return sweep_dir


def test_sweep_writes_scores_images_table_and_plots(sweep, test_set):
    rows = list(csv.DictReader((sweep / "report" / "table.csv").open()))
    assert len(rows) == 4
    assert {(row["w"], row["tile_overlap"]) for row in rows} == {("0.0", "0"), ("0.0", "8"), ("1.0", "0"),
                                                                 ("1.0", "8")}
    assert all(row["status"] == "ok" and row["images"] == "2" for row in rows)
    table = (sweep / "report" / "table.md").read_text()
    assert table.count("| ok |") == 4 and "pyiqa's Y" in table and "crop_border: 0 px" in table
    plots = sorted((sweep / "report" / "plots").glob("*.png"))
    assert {path.name for path in plots} >= {"psnr_y_vs_w.png", "psnr_y_vs_tile_overlap.png", "ssim_y_vs_w.png"}
    assert all(path.stat().st_size > 1000 and path.read_bytes().startswith(PNG_MAGIC) for path in plots)

    for row in rows:
        run_dir = Path(row["run_dir"])
        record = json.loads((run_dir / "scores.json").read_text())
        assert record["settings"]["steps"] == 2 and record["settings"]["tile_size"] == 16
        assert record["seconds_per_image"] > 0
        # no Inception weights in the test TORCH_HOME: FID is reported, not a crash
        assert record["aggregate"]["fid"].startswith("n/a (missing weights-inception")
        for name in ("camera", "coffee"):
            sr_path = run_dir / "images" / f"{name}.png"
            with Image.open(sr_path) as image:
                assert image.size == (64, 64)
            expected = psnr_y_of_files(sr_path, test_set / "hr" / f"{name}.png")
            assert record["per_image"][name]["psnr_y"] == pytest.approx(expected, abs=1e-3)
        psnrs = [record["per_image"][name]["psnr_y"] for name in ("camera", "coffee")]
        assert record["aggregate"]["psnr_y"]["mean"] == pytest.approx(np.mean(psnrs), abs=1e-9)

    by_w = {row["w"]: Path(row["run_dir"]) / "images" / "coffee.png" for row in rows}
    assert not np.array_equal(np.asarray(Image.open(by_w["0.0"])), np.asarray(Image.open(by_w["1.0"]))), \
        "w=0 and w=1 (CFW off / full) must decode differently"


def test_failed_run_is_recorded_and_the_sweep_goes_on(sweep, test_set, tmp_path, monkeypatch):
    # job 0 (tile.overlap=0) is the sweep's finished w=0, overlap=0 run, copied: it is skipped, not re-sampled;
    # job 1 (tile.overlap=16, not below the 16 px tile) fails
    source = next(Path(row["run_dir"]) for row in csv.DictReader((sweep / "report" / "table.csv").open())
                  if row["w"] == "0.0" and row["tile_overlap"] == "0")
    shutil.copytree(source, tmp_path / "0", ignore=shutil.ignore_patterns("report"))
    code = run_eval(monkeypatch, "-m", *FAST, *data_overrides(test_set), "w=0", "tile.overlap=0,16",
                    f"hydra.sweep.dir={tmp_path}")
    assert code == 1
    rows = list(csv.DictReader((tmp_path / "report" / "table.csv").open()))
    assert len(rows) == 2
    failed = [row for row in rows if row["status"] == "failed"]
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(failed) == 1 and len(ok) == 1 and ok[0]["psnr_y_mean"]
    assert failed[0]["error"] == "tile.overlap=16: must be smaller than the tile size (16)"
    assert "FAILED: tile.overlap=16: must be smaller" in (tmp_path / "report" / "table.md").read_text()
    failed_record = json.loads((tmp_path / "1" / "scores.json").read_text())
    assert failed_record["status"] == "failed" and failed_record["config"]["tile"]["overlap"] == 16


def test_rescore_scores_existing_images_without_sampling(sweep, test_set, monkeypatch):
    run_dir = next(Path(row["run_dir"]) for row in csv.DictReader((sweep / "report" / "table.csv").open())
                   if row["w"] == "1.0")
    images = sorted((run_dir / "images").glob("*.png"))
    stamps = {path: path.stat().st_mtime_ns for path in images}
    before = json.loads((run_dir / "scores.json").read_text())

    def no_sampling(*args, **kwargs):
        raise AssertionError("rescore must not build the model or sample")

    monkeypatch.setattr(StableSRPipeline, "__call__", no_sampling)
    monkeypatch.setattr(sr.evaluation, "load_model", no_sampling)
    # only the run dir and the new metric list are given: settings and test set come from the run's scores.json
    code = run_eval(monkeypatch, "rescore=true", f"hydra.run.dir={run_dir}", "metrics=[psnr,psnr_y]",
                    "progress=false")
    assert code == 0
    assert {path: path.stat().st_mtime_ns for path in images} == stamps
    after = json.loads((run_dir / "scores.json").read_text())
    assert after["status"] == "ok" and set(after["aggregate"]) == {"psnr", "psnr_y"}
    assert after["settings"] == before["settings"]
    assert after["per_image"]["coffee"]["psnr_y"] == before["per_image"]["coffee"]["psnr_y"]
    assert after["seconds_per_image"] == before["seconds_per_image"]
    assert (run_dir / "report" / "table.md").is_file()


def test_interrupted_run_resumes_without_resampling_present_images(sweep, test_set, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    source = next(Path(row["run_dir"]) for row in csv.DictReader((sweep / "report" / "table.csv").open())
                  if row["w"] == "0.0" and row["tile_overlap"] == "0")
    (run_dir / "images").mkdir(parents=True)
    kept = run_dir / "images" / "camera.png"
    kept.write_bytes((source / "images" / "camera.png").read_bytes())
    (run_dir / "fingerprint.json").write_bytes((source / "fingerprint.json").read_bytes())
    stamp = kept.stat().st_mtime_ns
    sampled: list[int] = []
    real_call = StableSRPipeline.__call__

    def counting_call(*args, **kwargs):
        sampled.append(1)
        return real_call(*args, **kwargs)

    monkeypatch.setattr(StableSRPipeline, "__call__", counting_call)
    code = run_eval(monkeypatch, *FAST, *data_overrides(test_set), "w=0", "tile.overlap=0", f"hydra.run.dir={run_dir}")
    assert code == 0 and len(sampled) == 1 and kept.stat().st_mtime_ns == stamp
    record = json.loads((run_dir / "scores.json").read_text())
    assert set(record["per_image"]) == {"camera", "coffee"}
    # same seed and settings as the sweep's run: the resumed image equals the sweep's bit for bit
    assert (run_dir / "images" / "coffee.png").read_bytes() == (source / "images" / "coffee.png").read_bytes()
    # a complete run is skipped, not redone
    assert run_eval(monkeypatch, *FAST, *data_overrides(test_set), "w=0", "tile.overlap=0",
                    f"hydra.run.dir={run_dir}") == 0
    assert len(sampled) == 1
