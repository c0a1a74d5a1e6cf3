"""Per-run result files and sweep tables/plots.

Run layout (written by eval.py through :func:`write_run_scores`)::

    <run_dir>/scores.json        see SCORES_KEYS
    <run_dir>/images/<name>.png  the SR outputs, one per scored image

``scores.json`` holds ``settings`` (w, tile_overlap, steps, model, lr_dir, hr_dir, ...), ``per_image``
``{name: {metric: value}}``, ``aggregate`` ``{metric: {"mean", "std", "n"} | "n/a (...)"}``, ``seconds_per_image``,
``status`` ("ok" | "failed"), ``error``, ``conventions`` (``MetricSuite.conventions()``), ``config`` (the resolved
Hydra config), ``git_revision`` and ``command``.

``python -m sr.report <sweep dir> [--name NAME] [--out experiments/NAME]`` gathers every ``scores.json`` below the
sweep into ``table.md`` / ``table.csv`` (one row per run; failed runs marked with their error), plots every metric
against ``w`` (one line per tile overlap) and against ``tile_overlap`` (one line per w) under ``plots/``, and writes
LR | SR(w=...) | HR comparison strips under ``strips/``. ``--wandb`` logs the table and images to W&B.
"""

import argparse
import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sr.io import IMAGE_SUFFIXES, read_image, write_bytes_atomic
from sr.metrics.suite import LOWER_IS_BETTER, METRIC_NAMES
from sr.utils.provenance import command_line, git_revision

SCORES_FILE = "scores.json"
IMAGES_DIR = "images"
SCORES_KEYS = (
    "settings",
    "per_image",
    "aggregate",
    "seconds_per_image",
    "status",
    "error",
    "conventions",
    "config",
    "git_revision",
    "command",
)
RUN_STATUSES = ("ok", "failed")
LEADING_SETTINGS = ("w", "tile_overlap", "steps", "model")
METRIC_DECIMALS = {"psnr": 2, "psnr_y": 2, "psnr_ycbcr": 2, "fid": 2, "fid_patch": 2, "musiq": 2, "niqe": 3}


def write_run_scores(
    run_dir: str | Path,
    *,
    settings: dict,
    per_image: dict[str, dict[str, float | str]],
    aggregate: dict[str, dict | str],
    seconds_per_image: float | None,
    conventions: dict[str, str],
    config: dict,
    status: str = "ok",
    error: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``<run_dir>/scores.json`` atomically (git revision and command line added here); returns its path."""
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
    if status == "failed" and not error:
        raise ValueError("a failed run needs its error message")
    record = {
        "settings": settings,
        "per_image": per_image,
        "aggregate": aggregate,
        "seconds_per_image": seconds_per_image,
        "status": status,
        "error": error,
        "conventions": conventions,
        "config": config,
        "git_revision": git_revision(),
        "command": command_line(),
    }
    path = Path(run_dir) / SCORES_FILE
    write_bytes_atomic(path, json.dumps(record, indent=2, allow_nan=False, default=str).encode(), overwrite)
    return path


@dataclass(frozen=True)
class Run:
    """One run of a sweep as read from its scores.json (a broken file becomes a failed run)."""

    run_dir: Path
    record: dict

    @property
    def ok(self) -> bool:
        return self.record["status"] == "ok"

    @property
    def settings(self) -> dict:
        return self.record["settings"]


def read_run(scores_path: Path) -> Run:
    """Parse and validate one scores.json; problems turn the run into a failed one that names the file."""
    try:
        record = json.loads(scores_path.read_text())
        missing = [key for key in SCORES_KEYS if key not in record]
        if missing:
            raise ValueError(f"missing keys {missing}")
        if record["status"] not in RUN_STATUSES:
            raise ValueError(f"status {record['status']!r} is not one of {RUN_STATUSES}")
    except (OSError, ValueError) as problem:
        settings = {"run": scores_path.parent.name}
        record = {key: None for key in SCORES_KEYS} | {
            "settings": settings,
            "per_image": {},
            "aggregate": {},
            "status": "failed",
            "error": f"unreadable {scores_path}: {problem}",
        }
    return Run(scores_path.parent, record)


def collect_sweep(sweep_dir: Path) -> list[Run]:
    """Every run below ``sweep_dir`` (any depth, e.g. Hydra multirun job folders), sorted by settings."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: sweep directory does not exist")
    runs = [read_run(path) for path in sorted(sweep_dir.rglob(SCORES_FILE))]
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no {SCORES_FILE} found below it")
    return sorted(runs, key=lambda run: _sort_key(run.settings))


def _sort_key(settings: dict) -> tuple:
    ordered = [settings.get(key) for key in LEADING_SETTINGS] + [settings[key] for key in sorted(settings)]
    return tuple((value is None, isinstance(value, str), value if value is not None else 0) for value in ordered)


def _is_table_setting(key: str, value) -> bool:
    """Scalars that distinguish runs; input folders (``*_dir``, ``*_path``) are provenance, not table columns."""
    return not key.endswith(("_dir", "_path")) and (value is None or isinstance(value, (bool, int, float, str)))


def setting_columns(runs: Sequence[Run]) -> list[str]:
    keys = {key for run in runs for key, value in run.settings.items() if _is_table_setting(key, value)}
    return [key for key in LEADING_SETTINGS if key in keys] + sorted(keys.difference(LEADING_SETTINGS))


def metric_columns(runs: Sequence[Run]) -> list[str]:
    keys = {key for run in runs if run.ok for key in run.record["aggregate"]}
    return [name for name in METRIC_NAMES if name in keys] + sorted(keys.difference(METRIC_NAMES))


def format_aggregate(metric: str, value) -> str:
    """``mean ± std`` (set-level metrics: the value alone) with a precision suited to the metric; n/a passes through."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    decimals = METRIC_DECIMALS.get(metric, 4)
    text = f"{value['mean']:.{decimals}f}"
    return text if value.get("std") is None else f"{text} ± {value['std']:.{decimals}f}"


def image_count(run: Run) -> int:
    return len(run.record["per_image"] or {})


def build_rows(runs: Sequence[Run]) -> tuple[list[str], list[str], list[list[str]]]:
    """(setting columns, metric columns, display rows) of the sweep table."""
    settings, metrics = setting_columns(runs), metric_columns(runs)
    rows = []
    for run in runs:
        row = [_format_setting(run.settings.get(key)) for key in settings]
        row += [format_aggregate(metric, run.record["aggregate"].get(metric)) if run.ok else "" for metric in metrics]
        seconds = run.record["seconds_per_image"]
        row += [str(image_count(run)), f"{seconds:.2f}" if isinstance(seconds, (int, float)) else ""]
        row.append("ok" if run.ok else f"FAILED: {run.record['error']}")
        rows.append(row)
    return settings, metrics, rows


def _format_setting(value) -> str:
    return "" if value is None else str(value)


def render_markdown(name: str, sweep_dir: Path, runs: Sequence[Run]) -> str:
    settings, metrics, rows = build_rows(runs)
    header = settings + [_metric_header(metric) for metric in metrics] + ["images", "s/image", "status"]
    lines = [
        f"# {name}",
        "",
        f"Sweep: `{sweep_dir}` ({len(runs)} runs, {sum(not run.ok for run in runs)} failed).",
        f"Report: `{command_line()}` at git revision `{git_revision()}`.",
        f"Runs' git revisions: {', '.join(f'`{rev}`' for rev in sorted({str(r.record['git_revision']) for r in runs}))}.",
        f"Eval commands: {'; '.join(f'`{cmd}`' for cmd in sorted({r.record['command'] for r in runs if r.record['command']}))}.",
        "",
        "Conventions:",
        "",
    ]
    for conventions in _distinct_conventions(runs):
        lines += [f"- {key}: {value}" for key, value in conventions.items()]
    lines += [
        (
            "- table cells: mean ± population std over images (set-level FID: one value per run); "
            "↓ lower is better, others higher"
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _metric_header(metric: str) -> str:
    return f"{metric} ↓" if metric in LOWER_IS_BETTER else metric


def _distinct_conventions(runs: Sequence[Run]) -> list[dict]:
    distinct: list[dict] = []
    for run in runs:
        conventions = run.record.get("conventions")
        if conventions and conventions not in distinct:
            distinct.append(conventions)
    return distinct


def render_csv(runs: Sequence[Run]) -> str:
    """Machine-readable table: mean and std in separate columns, n/a strings kept verbatim."""
    settings, metrics = setting_columns(runs), metric_columns(runs)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        settings
        + [f"{metric}_{part}" for metric in metrics for part in ("mean", "std")]
        + ["images", "seconds_per_image", "status", "error", "git_revision", "run_dir"]
    )
    for run in runs:
        row = [_format_setting(run.settings.get(key)) for key in settings]
        for metric in metrics:
            value = run.record["aggregate"].get(metric)
            if isinstance(value, dict):
                row += [value["mean"], "" if value.get("std") is None else value["std"]]
            else:
                row += [value or "", ""]
        row += [image_count(run), run.record["seconds_per_image"] or "", run.record["status"]]
        row += [run.record["error"] or "", run.record["git_revision"] or "", str(run.run_dir)]
        writer.writerow(row)
    return buffer.getvalue()


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def plot_metric(runs: Sequence[Run], metric: str, x_key: str) -> bytes | None:
    """PNG of ``metric`` against setting ``x_key``, one line per combination of the other settings; None if no data."""
    # only settings that differ between runs name a line; the fixed ones are in the table
    line_keys = [
        key for key in setting_columns(runs)
        if key != x_key and len({str(run.settings.get(key)) for run in runs}) > 1
    ]
    lines: dict[tuple, list[tuple[float, float, float]]] = {}
    for run in runs:
        value = run.record["aggregate"].get(metric) if run.ok else None
        x = run.settings.get(x_key)
        if isinstance(value, dict) and isinstance(x, (int, float)) and math.isfinite(value["mean"]):
            label = tuple((key, run.settings.get(key)) for key in line_keys)
            lines.setdefault(label, []).append((x, value["mean"], value.get("std") or 0.0))
    if not lines:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for label, points in sorted(lines.items(), key=lambda item: str(item[0])):
        xs, means, stds = map(np.asarray, zip(*sorted(points)))
        text = ", ".join(f"{key}={value}" for key, value in label if value is not None) or metric
        axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=text)
    axis.set_xlabel(x_key)
    axis.set_ylabel(f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    return _figure_png(figure)


def find_image(folder: Path | None, name: str) -> Path | None:
    """``folder/<name>.<any image suffix>`` if present."""
    if folder is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    return None


def comparison_strip(runs: Sequence[Run], name: str, lr_dir: Path | None, hr_dir: Path | None) -> bytes | None:
    """PNG ``LR | SR(w=...) ... | HR`` for image ``name``: one SR panel per distinct w (first run in table order)."""
    panels: list[tuple[str, Path]] = []
    if (lr := find_image(lr_dir, name)) is not None:
        panels.append(("LR", lr))
    by_w: dict = {}
    for run in runs:
        sr_path = run.run_dir / IMAGES_DIR / f"{name}.png"
        if run.ok and sr_path.is_file():
            by_w.setdefault(run.settings.get("w"), sr_path)
    panels += [(f"SR (w={w})", path) for w, path in sorted(by_w.items(), key=lambda item: _sort_key({"w": item[0]}))]
    if (hr := find_image(hr_dir, name)) is not None:
        panels.append(("HR", hr))
    if not by_w:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for axis, (title, path) in zip(axes[0], panels):
        axis.imshow(read_image(path).rgb.permute(1, 2, 0).numpy(), interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    figure.suptitle(name, fontsize=10)
    return _figure_png(figure)


def _setting_dir(runs: Sequence[Run], key: str) -> Path | None:
    for run in runs:
        if run.settings.get(key):
            return Path(run.settings[key])
    return None


def build_report(
    sweep_dir: Path,
    out_dir: Path,
    name: str,
    lr_dir: Path | None = None,
    hr_dir: Path | None = None,
    strip_images: int = 3,
    overwrite: bool = False,
) -> dict[str, list[Path]]:
    """Write table.md, table.csv, plots/*.png and strips/*.png for the sweep; returns the written paths by kind."""
    runs = collect_sweep(sweep_dir)
    if (out_dir / "table.md").exists() and not overwrite:
        raise FileExistsError(f"{out_dir / 'table.md'}: already exists (pass --overwrite to replace the report)")
    written: dict[str, list[Path]] = {"tables": [], "plots": [], "strips": []}
    for file_name, text in (("table.md", render_markdown(name, sweep_dir, runs)), ("table.csv", render_csv(runs))):
        write_bytes_atomic(out_dir / file_name, text.encode(), overwrite)
        written["tables"].append(out_dir / file_name)

    for metric in metric_columns(runs):
        for x_key in ("w", "tile_overlap"):
            png = plot_metric(runs, metric, x_key)
            if png is not None:
                path = out_dir / "plots" / f"{metric}_vs_{x_key}.png"
                write_bytes_atomic(path, png, overwrite)
                written["plots"].append(path)

    lr_dir = lr_dir or _setting_dir(runs, "lr_dir")
    hr_dir = hr_dir or _setting_dir(runs, "hr_dir")
    names = sorted({image for run in runs if run.ok for image in run.record["per_image"]})
    for image_name in names[:strip_images]:
        png = comparison_strip(runs, image_name, lr_dir, hr_dir)
        if png is not None:
            path = out_dir / "strips" / f"{image_name}.png"
            write_bytes_atomic(path, png, overwrite)
            written["strips"].append(path)
    return written


def log_to_wandb(name: str, runs: Sequence[Run], written: dict[str, list[Path]]) -> None:
    """Log the table as a ``wandb.Table`` and every plot/strip as an image to the active run (or a new one)."""
    import wandb

    settings, metrics, rows = build_rows(runs)
    started_here = wandb.run is None
    run = wandb.run or wandb.init(project="stablesr", name=name, job_type="report")
    payload = {"sweep_table": wandb.Table(columns=settings + metrics + ["images", "s/image", "status"], data=rows)}
    for kind in ("plots", "strips"):
        payload |= {f"{kind}/{path.stem}": wandb.Image(str(path)) for path in written[kind]}
    run.log(payload)
    if started_here:
        run.finish()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sr.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="folder holding the sweep's runs (searched for scores.json)")
    parser.add_argument("--name", help="report name (default: the sweep folder's name)")
    parser.add_argument("--out", type=Path, help="output folder (default: experiments/NAME)")
    parser.add_argument("--lr-dir", type=Path, help="LR images for the strips (default: settings.lr_dir)")
    parser.add_argument("--hr-dir", type=Path, help="HR images for the strips (default: settings.hr_dir)")
    parser.add_argument("--strip-images", type=int, default=3, help="how many images get a comparison strip")
    parser.add_argument("--wandb", action="store_true", help="log table and images to W&B")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    args = parser.parse_args(argv)
    name = args.name or args.sweep_dir.resolve().name
    out_dir = args.out or Path("experiments") / name
    try:
        written = build_report(
            args.sweep_dir, out_dir, name, args.lr_dir, args.hr_dir, args.strip_images, args.overwrite
        )
    except (FileNotFoundError, FileExistsError) as problem:
        raise SystemExit(f"sr.report: {problem}") from None
    if args.wandb:
        log_to_wandb(name, collect_sweep(args.sweep_dir), written)
    print(f"sr.report: wrote {sum(len(paths) for paths in written.values())} files to {out_dir}")


if __name__ == "__main__":
    main()
