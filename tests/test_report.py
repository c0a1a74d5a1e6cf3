"""sr.report: scores.json round trip, sweep tables (incl. a failed run), plots, comparison strips."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from sr.report.build import build_report
from sr.report.cli import main
from sr.report.runs import SCORES_KEYS, collect_sweep, write_run_scores

CONVENTIONS = {"psnr_ssim": "psnr_y on pyiqa Y", "crop_border": "0 px", "fid": "clean-fid resize"}
IMAGE_NAMES = ("bird", "car")


def _write_image(path, seed, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _fake_sweep(root, fail=None):
    """2 w x 2 tile_overlap runs with images; ``fail`` = (w, overlap) of a run that failed."""
    for name in IMAGE_NAMES:
        _write_image(root / "data" / "lr" / f"{name}.png", seed=1, size=8)
        _write_image(root / "data" / "hr" / f"{name}.png", seed=2)
    sweep = root / "sweep"
    for index, (w, overlap) in enumerate([(0.0, 16), (0.0, 32), (1.0, 16), (1.0, 32)]):
        run_dir = sweep / str(index)
        settings = {
            "w": w,
            "tile_overlap": overlap,
            "steps": 200,
            "model": "stablesr-512",
            "lr_dir": str(root / "data" / "lr"),
            "hr_dir": str(root / "data" / "hr"),
        }
        if (w, overlap) == fail:
            write_run_scores(
                run_dir,
                settings=settings,
                per_image={},
                aggregate={},
                seconds_per_image=None,
                conventions=CONVENTIONS,
                config={"w": w},
                status="failed",
                error="CUDA out of memory",
            )
            continue
        per_image = {
            name: {"psnr_y": 20 + 2 * w + overlap / 16 + k, "lpips_alex": 0.3 - 0.1 * w}
            for k, name in enumerate(IMAGE_NAMES)
        }
        aggregate = {
            "psnr_y": {"mean": 20.5 + 2 * w + overlap / 16, "std": 0.5, "n": 2},
            "lpips_alex": {"mean": 0.3 - 0.1 * w, "std": 0.0, "n": 2},
            "fid": {"mean": 30 - 5 * w, "std": None, "n": 2},
            "musiq": "n/a (missing musiq_koniq_ckpt-e95806b9.pth, expected at /x/musiq_koniq_ckpt-e95806b9.pth)",
        }
        write_run_scores(
            run_dir,
            settings=settings,
            per_image=per_image,
            aggregate=aggregate,
            seconds_per_image=1.5,
            conventions=CONVENTIONS,
            config={"w": w, "tile_overlap": overlap},
        )
        for k, name in enumerate(IMAGE_NAMES):
            _write_image(run_dir / "images" / f"{name}.png", seed=10 + index + k)
    return sweep


def _is_png(path):
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_run_scores_round_trip_and_refuses_overwrite(tmp_path):
    path = write_run_scores(
        tmp_path,
        settings={"w": 0.5},
        per_image={"a": {"psnr": 20.0}},
        aggregate={"psnr": {"mean": 20.0, "std": 0.0, "n": 1}},
        seconds_per_image=2.0,
        conventions=CONVENTIONS,
        config={"steps": 200},
    )
    record = json.loads(path.read_text())
    assert set(record) == set(SCORES_KEYS)
    assert record["status"] == "ok" and record["error"] is None and record["git_revision"]
    with pytest.raises(FileExistsError, match="already exists"):
        write_run_scores(
            tmp_path,
            settings={},
            per_image={},
            aggregate={},
            seconds_per_image=None,
            conventions=CONVENTIONS,
            config={},
        )
    with pytest.raises(ValueError, match="needs its error"):
        write_run_scores(
            tmp_path / "x",
            settings={},
            per_image={},
            aggregate={},
            seconds_per_image=None,
            conventions=CONVENTIONS,
            config={},
            status="failed",
        )
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]  # no temporary files left behind


def test_two_by_two_sweep_gives_four_rows_plots_and_strips(tmp_path):
    sweep = _fake_sweep(tmp_path)
    out = tmp_path / "experiments" / "demo"
    main([str(sweep), "--name", "demo", "--out", str(out)])

    markdown = (out / "table.md").read_text()
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table_rows) == 1 + 4
    assert (
        "| w | tile_overlap | steps | model | psnr_y | lpips_alex ↓ | musiq | fid ↓ | images | s/image | status |"
        in markdown
    )
    assert "| 1.0 | 32 | 200 | stablesr-512 | 24.50 ± 0.50 | 0.2000 ± 0.0000 | n/a (missing musiq" in markdown
    assert "musiq_koniq_ckpt-e95806b9.pth) | 25.00 | 2 | 1.50 | ok |" in markdown
    for convention in CONVENTIONS.values():
        assert convention in markdown
    assert "git revision" in markdown and "python" in markdown

    with open(out / "table.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 4
    assert [(r["w"], r["tile_overlap"]) for r in rows] == [("0.0", "16"), ("0.0", "32"), ("1.0", "16"), ("1.0", "32")]
    assert float(rows[0]["psnr_y_mean"]) == pytest.approx(21.5) and rows[0]["images"] == "2"

    for metric in ("psnr_y", "lpips_alex", "fid"):
        for axis in ("w", "tile_overlap"):
            assert _is_png(out / "plots" / f"{metric}_vs_{axis}.png")
    assert not (out / "plots" / "musiq_vs_w.png").exists()  # n/a metrics are not plotted
    for name in IMAGE_NAMES:
        strip = out / "strips" / f"{name}.png"
        assert _is_png(strip)
        assert Image.open(strip).width > 3 * Image.open(strip).height  # LR | SR(w=0) | SR(w=1) | HR

    with pytest.raises(SystemExit, match="already exists"):
        main([str(sweep), "--out", str(out)])


def test_failed_run_is_marked_and_the_rest_still_tabulated(tmp_path):
    sweep = _fake_sweep(tmp_path, fail=(1.0, 16))
    (sweep / "broken").mkdir()
    (sweep / "broken" / "scores.json").write_text("{not json")
    out = tmp_path / "report"
    written = build_report(sweep, out, "with-failure")
    markdown = (out / "table.md").read_text()
    assert "6 runs" not in markdown and "(5 runs: 3 ok, 2 failed, 0 unfinished)" in markdown
    assert "FAILED: CUDA out of memory" in markdown
    assert f"FAILED: unreadable {sweep / 'broken' / 'scores.json'}" in markdown
    with open(out / "table.csv", newline="") as stream:
        statuses = [row["status"] for row in csv.DictReader(stream)]
    assert statuses.count("ok") == 3 and statuses.count("failed") == 2
    assert written["plots"] and all(_is_png(path) for path in written["plots"])


def test_missing_sweep_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=f"sr.report: {tmp_path / 'nope'}: sweep directory does not exist"):
        main([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no scores.json"):
        collect_sweep(tmp_path / "empty")


def test_wandb_table_keeps_numbers_and_the_run_lands_in_the_sweep_folder(tmp_path, monkeypatch):
    from sr.report.wandb_log import log_to_wandb, wandb_table
    from wandb_offline import offline_run

    sweep = _fake_sweep(tmp_path, fail=(1.0, 32))
    runs = collect_sweep(sweep)
    columns, rows = wandb_table(runs)
    assert columns[:2] == ["w", "tile_overlap"]
    assert {"psnr_y", "psnr_y_std", "lpips_alex", "lpips_alex_std", "fid", "fid_std"} <= set(columns)
    by_setting = {(row[0], row[1]): dict(zip(columns, row)) for row in rows}
    ok = by_setting[(1.0, 16)]
    assert ok["psnr_y"] == 20.5 + 2 + 1 and ok["psnr_y_std"] == 0.5 and ok["fid"] == 25 and ok["fid_std"] is None
    assert ok["musiq"] is None and ok["images"] == 2 and ok["seconds_per_image"] == 1.5 and ok["status"] == "ok"
    failed = by_setting[(1.0, 32)]
    assert failed["psnr_y"] is None and failed["status"] == "failed: CUDA out of memory"

    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    log_to_wandb("demo", runs, {"plots": [], "strips": []}, {"eval": {"steps": 200}, "overrides": ["w=0,1"]},
                      sweep)
    (folder,) = (sweep / "wandb").glob("offline-run-*")
    assert not (tmp_path / "wandb").exists()  # nothing in the working directory
    run = offline_run(folder)
    assert run["name"] == "demo" and run["config"]["eval"] == {"steps": 200}
    assert run["config"]["overrides"] == ["w=0,1"]
    assert any("sweep_table/_type" in row for row in run["history"])
    (table_file,) = (folder / "files" / "media" / "table").glob("sweep_table_*.table.json")
    logged = json.loads(table_file.read_text())
    assert logged["columns"] == columns and logged["data"] == [list(row) for row in rows]  # numbers, not strings
