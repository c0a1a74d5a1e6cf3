"""Plots of one metric against one setting (``w``, ``tile.overlap``), as PNG bytes.

Figures are drawn in one fixed style (matplotlib's defaults, DejaVu Sans, fixed dpi) whatever the local
matplotlibrc says, and saved without the software-version metadata, so the same rows give byte-identical files.
"""

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sr.commands.report.runs import METHOD, Run
from sr.commands.report.table import display_setting, setting_columns
from sr.metrics.registry import LOWER_IS_BETTER

PLOT_AXES = ("w", "tile.overlap", "num_inference_steps")
LOG_AXES = ("num_inference_steps",)   # drawn on a log scale (5 ... 200)
DPI = 110
STYLE = {"font.family": "DejaVu Sans", "figure.dpi": DPI, "savefig.dpi": DPI}
REFERENCE = "bicubic"   # baseline drawn as a horizontal line in every plot


@contextmanager
def report_style() -> Iterator[None]:
    """Draw inside this: matplotlib's default style plus ``STYLE``, not the machine's matplotlibrc."""
    with plt.style.context(["default", STYLE]):
        yield


def figure_png(figure) -> bytes:
    """The figure as PNG bytes without metadata (no matplotlib version); the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def _mean(row: Run, metric: str) -> float | None:
    value = row.record["aggregate"].get(metric) if row.ok else None
    return value["mean"] if isinstance(value, dict) and math.isfinite(value["mean"]) else None


def varying_settings(rows: Sequence[Run], exclude: str) -> list[str]:
    """Settings (other than ``exclude``) whose value differs between ``rows``: what names their lines."""
    return [key for key in setting_columns(rows)
            if key != exclude and len({str(row.settings.get(key)) for row in rows}) > 1]


def settings_label(row: Run, keys: list[str], default: str) -> str:
    return ", ".join(f"{key}={display_setting(row.settings.get(key))}" for key in keys) or default


def plot_metric(rows: Sequence[Run], metric: str, x_key: str) -> bytes | None:
    """PNG of ``metric`` against setting ``x_key``: one line per combination of the runs' other settings, and each
    bicubic row's value as a dashed horizontal reference line; None if no run has a value or ``x_key`` takes fewer
    than two values (an axis the sweep did not vary)."""
    runs = [row for row in rows if row.method == METHOD and row.ok]
    if len({str(run.settings.get(x_key)) for run in runs}) < 2:
        return None
    line_keys = varying_settings(runs, x_key)   # fixed settings are in the table's header, not in every label
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for run in runs:
        mean, x = _mean(run, metric), run.settings.get(x_key)
        if mean is not None and isinstance(x, (int, float)):
            std = run.record["aggregate"][metric].get("std") or 0.0
            lines.setdefault(settings_label(run, line_keys, METHOD), []).append((x, mean, std))
    if not lines:
        return None
    references = [row for row in rows if row.method == REFERENCE and _mean(row, metric) is not None]
    reference_keys = varying_settings(references, "method")
    with report_style():
        figure, axis = plt.subplots(figsize=(5.5, 3.8))
        axis.set_xlabel(x_key)
        if x_key in LOG_AXES:
            axis.set_xscale("log")
        axis.set_ylabel(f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)")
        for label, points in sorted(lines.items()):
            xs, means, stds = map(np.asarray, zip(*sorted(points)))
            axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
        for row in references:
            detail = settings_label(row, reference_keys, "")
            axis.axhline(_mean(row, metric), linestyle="--", linewidth=1, color="0.4",
                         label=f"{REFERENCE} ({detail})" if detail else REFERENCE)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
        return figure_png(figure)
