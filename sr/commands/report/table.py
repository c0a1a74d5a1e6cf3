"""The sweep table as markdown (``table.md``, for people) and CSV (``table.csv``, for machines).

Rows (:func:`sr.commands.report.runs.table_rows`): each distinct baseline once (``bicubic`` first, then ``lr_latent``),
then one per run (``stablesr``). Columns: ``method``, the settings, the metrics, ``images``, ``status``; the seconds per
image only when asked for (``timings``): they depend on the machine, so a committed table leaves them out and two
builds from the same runs are byte-identical.

In ``table.md``, a column whose value is the same on every row moves to one "Fixed settings" line above the table
(cells of a setting a row does not have, such as ``num_inference_steps`` on a baseline, shown ``–``, do not count); ``method`` and
the metrics always stay. A metric that is n/a shows ``n/a¹`` and its reason once, as a footnote below the table.
Every path, command and message is shown by :mod:`sr.commands.report.portable` (no absolute path of this machine), and
the git revisions name the modified tracked files when a tree was dirty. ``table.csv`` keeps every column.
"""

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sr.commands.report.portable import display_path, portable_command, portable_text
from sr.commands.report.runs import LEADING_SETTINGS, METHOD, Run, status_counts
from sr.metrics.registry import LOWER_IS_BETTER, METRIC_NAMES
from sr.utils.provenance import command_line, git_state

METRIC_DECIMALS = {"psnr": 2, "psnr_y": 2, "psnr_ycbcr": 2, "fid": 2, "fid_patch": 2, "musiq": 2, "niqe": 3}
ALWAYS_SHOWN = ("method",)
MODE_SETTING = "reproducible"  # the run's CPU mode: one sentence of the report, not a column
NOT_APPLICABLE = "–"
NOT_AVAILABLE = "n/a"
SUPERSCRIPT_DIGITS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
METHOD_DESCRIPTIONS = {
    "bicubic": "the LR resized to the output size by the pipeline's own bicubic resize, no colour fix",
    "lr_latent": "the LR's latent (posterior mode) decoded without diffusion at the run's w (CFW fused with the LR's "
                 "encoder features) and colour fix: the VAE + CFW ceiling without sampling",
    METHOD: "the run's sampled outputs",
}


def _is_table_setting(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def setting_columns(rows: Sequence[Run]) -> list[str]:
    """``method``, the leading settings (w, tile.overlap, num_inference_steps, model), then the other scalar
    settings by name (the CPU mode is a sentence of the report, not a column)."""
    keys = {key for row in rows for key, value in row.settings.items()
            if _is_table_setting(value) and key != MODE_SETTING}
    leading = ["method", *LEADING_SETTINGS]
    return leading[:1] + [key for key in leading[1:] if key in keys] + sorted(keys.difference(leading))


def mode_text(runs: Sequence[Run]) -> str:
    """The report's sentence on the CPU mode of its runs (their ``reproducible`` setting, sr/reproducibility.py)."""
    modes = [run.settings.get(MODE_SETTING) for run in runs]
    if modes and all(mode is True for mode in modes):
        return ("Made in reproducible mode (`reproducible=true`, sr/reproducibility.py: pinned CPU kernels and thread "
                "count).")
    if modes and all(mode is False for mode in modes):
        return "Made in default mode (this CPU's fastest kernels): other machines may differ in the last bits."
    reproducible = sum(mode is True for mode in modes)
    return (f"Not made in reproducible mode: {reproducible} of {len(modes)} runs were (the others in default mode or "
            "unrecorded).")


def metric_columns(rows: Sequence[Run]) -> list[str]:
    keys = {key for row in rows if row.ok for key in row.record["aggregate"]}
    return [name for name in METRIC_NAMES if name in keys] + sorted(keys.difference(METRIC_NAMES))


def format_aggregate(metric: str, value) -> str:
    """``mean ± std`` (set-level metrics: the value alone) with a precision suited to the metric; an n/a string is
    returned as it is (portable)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return portable_text(value)
    decimals = METRIC_DECIMALS.get(metric, 4)
    text = f"{value['mean']:.{decimals}f}"
    return text if value.get("std") is None else f"{text} ± {value['std']:.{decimals}f}"


def image_count(run: Run) -> int:
    return len(run.record["per_image"] or {})


def setting_value(row: Run, key: str):
    """The value of setting ``key`` on ``row``: ``NOT_APPLICABLE`` for a setting a baseline row does not have, ""
    when a run's record lacks it (a run that failed before its settings were known)."""
    if key == "method":
        return row.method
    if key not in row.settings:
        return NOT_APPLICABLE if row.method != METHOD else ""
    return row.settings[key]


def display_setting(value) -> str:
    """A setting as table.md shows it: None as ``none``, paths portable."""
    return "none" if value is None else portable_text(str(value))


def csv_setting(value) -> str:
    return "" if value is None or value == NOT_APPLICABLE else portable_text(str(value))


def status_text(row: Run) -> str:
    return "ok" if row.ok else f"{row.record['status'].upper()}: {portable_text(str(row.record['error']))}"


def seconds_text(row: Run) -> str:
    seconds = row.record["seconds_per_image"]
    return f"{seconds:.2f}" if isinstance(seconds, (int, float)) else ""


class _Footnotes:
    """n/a reasons numbered in order of first appearance; a cell shows ``n/a¹``, the reason appears once below."""

    def __init__(self):
        self.reasons: list[str] = []

    def cell(self, metric: str, value) -> str:
        text = format_aggregate(metric, value)
        if not text.startswith(f"{NOT_AVAILABLE} ("):
            return text
        reason = text[len(NOT_AVAILABLE) + 2:].removesuffix(")")
        if reason not in self.reasons:
            self.reasons.append(reason)
        return NOT_AVAILABLE + self.marker(self.reasons.index(reason))

    @staticmethod
    def marker(index: int) -> str:
        return str(index + 1).translate(SUPERSCRIPT_DIGITS)


@dataclass(frozen=True)
class TableLayout:
    """The sweep table as the reports show it (``table.md``, ``index.html``): ``shown`` columns as
    ``(header, cells)``, ``fixed`` settings (one value on every row) as ``(header, value)`` and the n/a reasons that
    the ``n/a¹`` cells point to."""

    shown: list[tuple[str, list[str]]]
    fixed: list[tuple[str, str]]
    footnotes: list[str]


def table_layout(rows: Sequence[Run], timings: bool = False) -> TableLayout:
    """The columns of ``rows`` (module docstring), a column with one value on every row moved to ``fixed``."""
    footnotes = _Footnotes()
    columns: list[tuple[str, list[str], bool]] = []   # (header, cells, may move to the fixed line)
    for key in setting_columns(rows):
        values = [setting_value(row, key) for row in rows]
        columns.append((key, [v if v == NOT_APPLICABLE else display_setting(v) for v in values],
                        key not in ALWAYS_SHOWN))
    for metric in metric_columns(rows):
        cells = [footnotes.cell(metric, row.record["aggregate"].get(metric)) if row.ok else "" for row in rows]
        columns.append((_metric_header(metric), cells, False))
    columns.append(("images", [str(image_count(row)) for row in rows], True))
    if timings:
        columns.append(("s/image", [seconds_text(row) for row in rows], False))
    columns.append(("status", [status_text(row) for row in rows], True))

    fixed, shown = [], []
    for header, cells, movable in columns:
        applicable = [cell for cell in cells if cell != NOT_APPLICABLE]
        if movable and len(set(applicable)) == 1:
            fixed.append((header, applicable[0]))
        else:
            shown.append((header, cells))
    return TableLayout(shown, fixed, footnotes.reasons)


def footnote_marker(index: int) -> str:
    """``¹`` for the first n/a reason."""
    return _Footnotes.marker(index)


def render_markdown(name: str, sweep_dir: Path, runs: Sequence[Run], rows: Sequence[Run], out_dir: Path,
                    timings: bool = False) -> str:
    """``table.md`` of ``rows`` (:func:`sr.commands.report.runs.table_rows` of ``runs``; module docstring)."""
    layout = table_layout(rows, timings)
    report_git = git_state(ignore=(out_dir,))
    commands = sorted({portable_command(run.record["command"]) for run in runs if run.record["command"]})
    lines = [
        f"# {name}",
        "",
        f"Sweep: `{display_path(sweep_dir.absolute())}` ({len(runs)} runs: {status_counts(runs)}).",
        (f"Report: `{portable_command(command_line())}` at git revision "
         f"{_revision_text(report_git.revision, report_git.modified)}."),
        f"Runs' git revisions: {_runs_revisions(runs)}.",
        f"Eval commands: {'; '.join(f'`{command}`' for command in commands)}.",
        mode_text(runs),
        "",
        "Conventions:",
        "",
    ]
    for conventions in _distinct_conventions(runs):
        lines += [f"- {key}: {portable_text(str(value))}" for key, value in conventions.items()]
    lines += [
        (
            "- table cells: mean ± population std over images (set-level FID: one value per run); "
            "↓ lower is better, others higher; – a setting the row's method does not have"
        ),
        "- methods: " + "; ".join(f"{method} = {text}" for method, text in METHOD_DESCRIPTIONS.items()
                                  if any(row.method == method for row in rows)),
        "",
    ]
    if layout.fixed:
        settings = ", ".join(f"`{header}={value}`" for header, value in layout.fixed)
        lines += [f"Fixed settings (the same on every row): {settings}.", ""]
    lines += [
        "| " + " | ".join(header for header, _ in layout.shown) + " |",
        "|" + "|".join("---" for _ in layout.shown) + "|",
    ]
    for index in range(len(rows)):
        lines.append("| " + " | ".join(_escape(cells[index]) for _, cells in layout.shown) + " |")
    if layout.footnotes:
        lines += ["", "Not available:", ""]
        lines += [f"- {footnote_marker(i)} `{reason}`" for i, reason in enumerate(layout.footnotes)]
    return "\n".join(lines) + "\n"


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def _revision_text(revision: str, modified: Sequence[str]) -> str:
    """The revision in backticks; a dirty one (``+dirty``) followed by the modified tracked files, never silent."""
    if not modified:
        return f"`{revision}`"
    return f"`{revision}` (modified tracked files: {', '.join(f'`{name}`' for name in modified)})"


def _runs_revisions(runs: Sequence[Run]) -> str:
    distinct = sorted({(str(run.record["git_revision"]), tuple(run.record["git_modified"] or ()))
                       for run in runs if run.record["git_revision"]})
    return ", ".join(_revision_text(revision, modified) for revision, modified in distinct) or "none recorded"


def _metric_header(metric: str) -> str:
    return f"{metric} ↓" if metric in LOWER_IS_BETTER else metric


def _distinct_conventions(runs: Sequence[Run]) -> list[dict]:
    distinct: list[dict] = []
    for run in runs:
        conventions = run.record.get("conventions")
        if conventions and conventions not in distinct:
            distinct.append(conventions)
    return distinct


def render_csv(sweep_dir: Path, rows: Sequence[Run], timings: bool = False) -> str:
    """``table.csv``: every column; mean and std in separate columns, n/a strings verbatim (portable), ``run_dir``
    relative to the sweep folder."""
    settings, metrics = setting_columns(rows), metric_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        settings
        + [f"{metric}_{part}" for metric in metrics for part in ("mean", "std")]
        + ["images"] + (["seconds_per_image"] if timings else [])
        + ["status", "error", "git_revision", "run_dir"]
    )
    for row in rows:
        cells = [csv_setting(setting_value(row, key)) for key in settings]
        for metric in metrics:
            value = row.record["aggregate"].get(metric)
            if isinstance(value, dict):
                cells += [value["mean"], "" if value.get("std") is None else value["std"]]
            else:
                cells += [portable_text(value or ""), ""]
        cells += [image_count(row)] + ([row.record["seconds_per_image"] or ""] if timings else [])
        cells += [row.record["status"], portable_text(row.record["error"] or ""), row.record["git_revision"] or ""]
        cells.append(row.run_dir.relative_to(sweep_dir).as_posix())
        writer.writerow(cells)
    return buffer.getvalue()
