"""sr.commands.report: scores.json round trip, sweep tables (incl. a failed run and deduplicated baseline rows), plots,
comparison strips, and a portable report: no absolute paths, n/a footnotes, fixed settings above the table,
byte-identical rebuilds, dirty trees named or refused."""

import csv
import io
import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.axes
import numpy as np
import pytest
from PIL import Image

import sr.utils.provenance
from sr.commands.report.build import build_report
from sr.commands.report.cli import main
from sr.commands.report.runs import SCORES_KEYS, collect_sweep, write_run_scores

REPO = Path(__file__).resolve().parents[1]
CONVENTIONS = {"psnr_ssim": "psnr_y on pyiqa Y", "crop_border": "0 px", "fid": "clean-fid resize"}
IMAGE_NAMES = ("bird", "car")
BICUBIC_PSNR_Y = 18.25
MUSIQ_FILE = "musiq_koniq_ckpt-e95806b9.pth"


def _write_image(path, seed, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _baselines(root, w):
    """The two baselines as eval records them: bicubic shared by every run, lr_latent one per w."""
    data = {"scale": 4, "crop_border": 0, "lr_dir": str(root / "data" / "lr"), "hr_dir": str(root / "data" / "hr")}
    bicubic = {name: {"psnr_y": BICUBIC_PSNR_Y + k, "lpips_alex": 0.5} for k, name in enumerate(IMAGE_NAMES)}
    latent = {name: {"psnr_y": 19 + w + k, "lpips_alex": 0.4} for k, name in enumerate(IMAGE_NAMES)}
    return {
        "bicubic": {"settings": {"method": "bicubic", **data}, "per_image": bicubic, "fingerprint": "bicubic-fp",
                    "aggregate": {"psnr_y": {"mean": BICUBIC_PSNR_Y + 0.5, "std": 0.5, "n": 2},
                                  "lpips_alex": {"mean": 0.5, "std": 0.0, "n": 2}}},
        "lr_latent": {"settings": {"method": "lr_latent", "w": w, "color_fix": "adain", **data},
                      "per_image": latent, "fingerprint": f"lr_latent-fp-{w}",
                      "aggregate": {"psnr_y": {"mean": 19.5 + w, "std": 0.5, "n": 2},
                                    "lpips_alex": {"mean": 0.4, "std": 0.0, "n": 2}}},
    }


def _fake_sweep(root, fail=None):
    """2 w x 2 tile_overlap runs with images and baselines; ``fail`` = (w, overlap) of a run that failed."""
    for name in IMAGE_NAMES:
        _write_image(root / "data" / "lr" / f"{name}.png", seed=1, size=8)
        _write_image(root / "data" / "hr" / f"{name}.png", seed=2)
    sweep = root / "sweep"
    for index, (w, overlap) in enumerate([(0.0, 16), (0.0, 32), (1.0, 16), (1.0, 32)]):
        run_dir = sweep / str(index)
        settings = {
            "method": "stablesr",
            "w": w,
            "tile.overlap": overlap,
            "num_inference_steps": 200,
            "model": "stablesr-512",
            "color_fix": "adain",
            "scale": 4,
            "crop_border": 0,
            "lr_dir": str(root / "data" / "lr"),
            "hr_dir": str(root / "data" / "hr"),
            "pretrained_path": str(REPO / "runs" / "demo" / "prior" / "model"),   # below the project root
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
            # as an older version wrote it: this machine's absolute path (the report must not show it)
            "musiq": f"n/a (missing {MUSIQ_FILE}, expected at {root}/hub/{MUSIQ_FILE})",
        }
        write_run_scores(
            run_dir,
            settings=settings,
            per_image=per_image,
            aggregate=aggregate,
            seconds_per_image=1.5 + index / 10,
            conventions=CONVENTIONS,
            config={"w": w, "tile.overlap": overlap},
            baselines=_baselines(root, w),
        )
        for k, name in enumerate(IMAGE_NAMES):
            _write_image(run_dir / "images" / f"{name}.png", seed=10 + index + k)
            for baseline in ("bicubic", "lr_latent"):
                _write_image(run_dir / "baselines" / baseline / f"{name}.png", seed=20 + index + k)
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


def test_two_by_two_sweep_gives_baseline_rows_once_then_four_runs_plots_and_strips(tmp_path, monkeypatch):
    sweep = _fake_sweep(tmp_path)
    out = tmp_path / "experiments" / "demo"
    horizontal_lines = []
    real_axhline = matplotlib.axes.Axes.axhline

    def recording_axhline(axis, y=0, *args, **kwargs):
        horizontal_lines.append((axis.get_ylabel(), y, kwargs.get("label")))
        return real_axhline(axis, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", recording_axhline)
    main([str(sweep), "--name", "demo", "--out", str(out)])

    markdown = (out / "table.md").read_text()
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    # bicubic once (4 runs share it), lr_latent once per w, then the 4 runs
    assert len(table_rows) == 1 + 1 + 2 + 4
    assert table_rows[0] == "| method | w | tile.overlap | psnr_y | lpips_alex ↓ | musiq | fid ↓ |"
    assert table_rows[1].startswith("| bicubic | – | – | 18.75 ± 0.50 | 0.5000 ± 0.0000 |")
    assert table_rows[2].startswith("| lr_latent | 0.0 | – | 19.50 ± 0.50 |")
    assert table_rows[3].startswith("| lr_latent | 1.0 | – | 20.50 ± 0.50 |")
    assert table_rows[-1] == "| stablesr | 1.0 | 32 | 24.50 ± 0.50 | 0.2000 ± 0.0000 | n/a¹ | 25.00 |"
    for convention in CONVENTIONS.values():
        assert convention in markdown
    assert "git revision" in markdown and "python" in markdown
    assert "s/image" not in markdown  # timings are machine-dependent: only with --timings

    with open(out / "table.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["method"] for row in rows] == ["bicubic", "lr_latent", "lr_latent"] + ["stablesr"] * 4
    runs = rows[3:]
    assert [(r["w"], r["tile.overlap"]) for r in runs] == [("0.0", "16"), ("0.0", "32"), ("1.0", "16"), ("1.0", "32")]
    assert float(runs[0]["psnr_y_mean"]) == pytest.approx(21.5) and runs[0]["images"] == "2"
    assert [row["run_dir"] for row in rows] == ["0", "0", "2", "0", "1", "2", "3"]   # relative to the sweep
    assert rows[0]["num_inference_steps"] == "" and runs[0]["num_inference_steps"] == "200"  # all columns in the CSV
    assert "seconds_per_image" not in rows[0]

    for metric in ("psnr_y", "lpips_alex", "fid"):
        for axis in ("w", "tile_overlap"):
            assert _is_png(out / "plots" / f"{metric}_vs_{axis}.png")
    assert not (out / "plots" / "musiq_vs_w.png").exists()  # n/a metrics are not plotted
    assert not (out / "plots" / "psnr_y_vs_num_inference_steps.png").exists()  # an axis the sweep did not vary
    # the bicubic value is each plot's reference line (fid: the baselines have none)
    assert sorted(y for label, y, _ in horizontal_lines if label.startswith("psnr_y")) == [BICUBIC_PSNR_Y + 0.5] * 2
    assert {text for _, _, text in horizontal_lines} == {"bicubic"}
    assert not any(label.startswith("fid") for label, _, _ in horizontal_lines)
    for name in IMAGE_NAMES:
        strip = out / "strips" / f"{name}.png"
        assert _is_png(strip)
        assert Image.open(strip).width > 4 * Image.open(strip).height  # LR | SR(w=0) | SR(w=1) | bicubic | HR

    with pytest.raises(SystemExit, match="already exists"):
        main([str(sweep), "--out", str(out)])


def _report_files(out):
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


def test_report_is_portable_byte_identical_with_footnotes_and_fixed_settings(tmp_path, monkeypatch):
    # the eval command as a venv on this machine records it: interpreter and paths absolute
    command = f"{REPO}/.venv/bin/python eval.py -m model.pretrained={REPO}/runs/demo/prior/model"
    monkeypatch.setenv("SR_COMMAND", f"{command} hydra.sweep.dir={tmp_path}/sweep w=0,1")
    sweep = _fake_sweep(tmp_path)
    out = tmp_path / "report"
    build_report(sweep, out, "portable")
    first = _report_files(out)
    build_report(sweep, out, "portable", overwrite=True)
    assert _report_files(out) == first   # byte-identical, plots and strips included
    assert {name.split("/")[0] for name in first} == {"table.md", "table.csv", "plots", "strips", "index.html",
                                                      "compare"}
    for name, data in first.items():
        for machine_path in (str(tmp_path), str(REPO)):
            assert machine_path.encode() not in data, f"{name} shows {machine_path}"

    markdown = first["table.md"].decode()
    assert "Eval commands: `python eval.py -m model.pretrained=runs/demo/prior/model " \
           "'hydra.sweep.dir=<outside>/sweep' w=0,1`." in markdown
    assert "Sweep: `<outside>/sweep`" in markdown
    # the n/a reason once, below the table, its cells marked
    assert markdown.count(f"missing {MUSIQ_FILE}") == 1
    assert markdown.count("| n/a¹ |") == 4
    assert f"- ¹ `missing {MUSIQ_FILE}, expected at <outside>/{MUSIQ_FILE}`" in markdown
    # the same value on every row (baselines' "–" aside): one line above the table, not a column
    fixed = next(line for line in markdown.splitlines() if line.startswith("Fixed settings"))
    for setting in ("num_inference_steps=200", "model=stablesr-512", "color_fix=adain", "scale=4", "crop_border=0",
                    "lr_dir=<outside>/lr", "pretrained_path=runs/demo/prior/model", "images=2", "status=ok"):
        assert f"`{setting}`" in fixed
    assert markdown.index("Fixed settings") < markdown.index("| method |")
    header = next(line for line in markdown.splitlines() if line.startswith("| method |"))
    assert "num_inference_steps" not in header and "status" not in header and "| w | tile.overlap |" in header

    build_report(sweep, out, "portable", overwrite=True, timings=True)
    with_timings = (out / "table.md").read_text()
    assert "| s/image |" in with_timings and "| 1.80 |" in with_timings and "| stablesr | 1.0 | 32 |" in with_timings
    assert "seconds_per_image" in (out / "table.csv").read_text()


def _git(repo, *arguments):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *arguments], cwd=repo, check=True,
                   capture_output=True)


def test_dirty_tree_is_named_in_the_report_and_refused_with_require_clean(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "sr").mkdir(parents=True)
    (repo / "sr" / "code.py").write_text("x = 1\n")
    (repo / "experiments" / "demo").mkdir(parents=True)
    (repo / "experiments" / "demo" / "table.md").write_text("old report\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    monkeypatch.setattr(sr.utils.provenance, "PROJECT_ROOT", repo)   # the checkout whose revision is reported
    sweep = _fake_sweep(tmp_path)
    out = repo / "experiments" / "demo"

    main([str(sweep), "--out", str(out), "--overwrite", "--require-clean"])
    # now the committed report differs: the report's own folder, clean as far as a rebuild is concerned
    main([str(sweep), "--out", str(out), "--overwrite", "--require-clean"])
    markdown = (out / "table.md").read_text()
    assert "at git revision `" in markdown and "+dirty" not in markdown.split("Runs'")[0]

    (repo / "sr" / "code.py").write_text("x = 2\n")
    with pytest.raises(SystemExit, match=r"^sr.commands.report: --require-clean: tracked files differ from the commit "
                                         r"\(sr/code.py\); commit or stash them first$"):
        main([str(sweep), "--out", str(out), "--overwrite", "--require-clean"])
    assert (out / "table.md").read_text() == markdown   # refused before writing anything
    main([str(sweep), "--out", str(out), "--overwrite"])
    report_line = next(line for line in (out / "table.md").read_text().splitlines() if line.startswith("Report:"))
    assert report_line.endswith("+dirty` (modified tracked files: `sr/code.py`).")


def test_failed_run_is_marked_and_the_rest_still_tabulated(tmp_path):
    sweep = _fake_sweep(tmp_path, fail=(1.0, 16))
    (sweep / "broken").mkdir()
    (sweep / "broken" / "scores.json").write_text("{not json")
    out = tmp_path / "report"
    written = build_report(sweep, out, "with-failure")
    markdown = (out / "table.md").read_text()
    assert "6 runs" not in markdown and "(5 runs: 3 ok, 2 failed, 0 unfinished)" in markdown
    assert "FAILED: CUDA out of memory" in markdown
    assert "FAILED: unreadable <outside>/scores.json: " in markdown   # the run dir is in table.csv
    with open(out / "table.csv", newline="") as stream:
        statuses = [row["status"] for row in csv.DictReader(stream) if row["method"] == "stablesr"]
    assert statuses.count("ok") == 3 and statuses.count("failed") == 2
    assert written["plots"] and all(_is_png(path) for path in written["plots"])


def test_missing_sweep_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=f"sr.commands.report: {tmp_path / 'nope'}: sweep directory does not exist"):
        main([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no scores.json"):
        collect_sweep(tmp_path / "empty")


def test_wandb_table_keeps_numbers_and_the_run_lands_in_the_sweep_folder(tmp_path, monkeypatch):
    from sr.commands.report.wandb_log import log_to_wandb, wandb_table
    from wandb_offline import offline_run

    sweep = _fake_sweep(tmp_path, fail=(1.0, 32))
    runs = collect_sweep(sweep)
    columns, rows = wandb_table(runs)
    assert columns[:3] == ["method", "w", "tile.overlap"]
    assert {"psnr_y", "psnr_y_std", "lpips_alex", "lpips_alex_std", "fid", "fid_std"} <= set(columns)
    assert [row[0] for row in rows] == ["bicubic", "lr_latent", "lr_latent"] + ["stablesr"] * 4
    by_setting = {(row[1], row[2]): dict(zip(columns, row)) for row in rows if row[0] == "stablesr"}
    ok = by_setting[(1.0, 16)]
    assert ok["psnr_y"] == 20.5 + 2 + 1 and ok["psnr_y_std"] == 0.5 and ok["fid"] == 25 and ok["fid_std"] is None
    assert ok["musiq"] is None and ok["images"] == 2 and ok["seconds_per_image"] == 1.7 and ok["status"] == "ok"
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


class _PageParser(HTMLParser):
    """The parts of index.html a test reads: table rows (lists of cell texts), image sources, link targets and the
    comparison menus' options (label, file)."""

    def __init__(self):
        super().__init__()
        self.rows, self.sources, self.links, self.options = [], [], [], []
        self._cell = self._option = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self._cell = ""
        elif tag == "img":
            self.sources.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "option":
            self._option = [attrs["value"], ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._option is not None:
            self._option[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell)
            self._cell = None
        elif tag == "option":
            self.options.append(tuple(self._option))
            self._option = None


def test_html_page_shows_the_markdown_table_the_plots_and_the_compared_images(tmp_path):
    sweep = _fake_sweep(tmp_path)
    out = tmp_path / "report"
    written = build_report(sweep, out, "page", strip_images=1)
    page = _PageParser()
    page.feed((out / "index.html").read_text())
    markdown_rows = [[cell.strip() for cell in line.strip("|").split(" | ")]
                     for line in (out / "table.md").read_text().splitlines()
                     if line.startswith("| ") and "---" not in line]
    assert page.rows == markdown_rows   # the same header and cells as table.md
    assert sorted(page.sources[2:]) == sorted(path.relative_to(out).as_posix() for path in written["plots"])
    assert page.links == ["table.md", "table.csv"]
    # one comparison view (strip_images=1: bird), its two menus offering LR, the baselines, the 4 runs and HR
    labels = [label for _, label in page.options]
    assert labels[:len(labels) // 2] == labels[len(labels) // 2:] == [
        "LR (nearest-neighbour)", "bicubic", "lr_latent (w=0.0)", "lr_latent (w=1.0)",
        "stablesr (w=0.0, tile.overlap=16)", "stablesr (w=0.0, tile.overlap=32)",
        "stablesr (w=1.0, tile.overlap=16)", "stablesr (w=1.0, tile.overlap=32)", "HR"]
    files = dict((label, out / source) for source, label in page.options)
    assert files["LR (nearest-neighbour)"].read_bytes() == (tmp_path / "data" / "lr" / "bird.png").read_bytes()
    assert files["stablesr (w=1.0, tile.overlap=16)"].read_bytes() == (sweep / "2" / "images" / "bird.png").read_bytes()
    latent = sweep / "2" / "baselines" / "lr_latent" / "bird.png"
    assert files["lr_latent (w=1.0)"].read_bytes() == latent.read_bytes()
    assert files["HR"].read_bytes() == (tmp_path / "data" / "hr" / "bird.png").read_bytes()
    assert page.sources[:2] == [page.options[0][0], page.options[4][0]]   # starts on LR vs the first run
    assert sorted(written["compare"]) == sorted(set(files.values()))
    # nothing from another host: every reference is a file of the report folder
    for reference in page.sources + page.links + [source for source, _ in page.options]:
        assert "://" not in reference and (out / reference).is_file(), reference


def test_images_browsers_cannot_show_are_copied_as_png(tmp_path):
    from sr.commands.report.html import browser_image

    pixels = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "lr.tif")
    Image.fromarray(pixels).save(tmp_path / "lr.png")
    converted = browser_image(tmp_path / "lr.tif")
    assert converted.startswith(b"\x89PNG") and np.array_equal(np.asarray(Image.open(io.BytesIO(converted))), pixels)
    assert browser_image(tmp_path / "lr.png") == (tmp_path / "lr.png").read_bytes()   # shown as it is
