"""The sweep table: one row per run, setting columns then metric columns, as markdown and CSV."""

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from sr.metrics.registry import LOWER_IS_BETTER, METRIC_NAMES
from sr.report.runs import LEADING_SETTINGS, Run, status_counts
from sr.utils.provenance import command_line, git_revision

METRIC_DECIMALS = {"psnr": 2, "psnr_y": 2, "psnr_ycbcr": 2, "fid": 2, "fid_patch": 2, "musiq": 2, "niqe": 3}


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
        row.append("ok" if run.ok else f"{run.record['status'].upper()}: {run.record['error']}")
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
        f"Sweep: `{sweep_dir}` ({len(runs)} runs: {status_counts(runs)}).",
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
