"""Plots of one metric against one setting (``w``, ``tile_overlap``), as PNG bytes."""

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sr.metrics.registry import LOWER_IS_BETTER
from sr.report.runs import Run
from sr.report.table import setting_columns

PLOT_AXES = ("w", "tile_overlap")


def figure_png(figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
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
    return figure_png(figure)
