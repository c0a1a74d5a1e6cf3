"""Log a sweep report to Weights & Biases: the table with numeric columns, the plots, the strips and the eval config.

:func:`wandb_table` keeps numbers as numbers (``<metric>`` = mean, ``<metric>_std`` = population std over images;
empty when n/a or the run failed), unlike the display table, with the same rows (baselines first, ``method``
column) and every setting column; :func:`log_to_wandb` logs it with the plots and strips
to a new W&B run whose files go to ``<results dir>/wandb`` (the run or sweep folder, not the working directory).
"""

from collections.abc import Sequence
from pathlib import Path

from sr.commands.report.runs import Run, table_rows
from sr.commands.report.table import image_count, metric_columns, setting_columns

PROJECT = "stablesr"


def wandb_table(runs: Sequence[Run]) -> tuple[list[str], list[list]]:
    """(columns, rows) of the sweep table with numbers kept as numbers (module docstring)."""
    runs = table_rows(list(runs))
    settings, metrics = setting_columns(runs), metric_columns(runs)
    columns = settings + [name for metric in metrics for name in (metric, f"{metric}_std")]
    columns += ["images", "seconds_per_image", "status"]
    rows = []
    for run in runs:
        row = [run.method] + [run.settings.get(key) for key in settings[1:]]   # settings[0] is "method"
        for metric in metrics:
            value = run.record["aggregate"].get(metric) if run.ok else None
            numeric = isinstance(value, dict)
            row += [value["mean"] if numeric else None, value.get("std") if numeric else None]
        row += [image_count(run), run.record["seconds_per_image"], "ok" if run.ok else f"failed: {run.record['error']}"]
        rows.append(row)
    return columns, rows


def log_to_wandb(name: str, runs: Sequence[Run], written: dict[str, list[Path]], config: dict,
                 results_dir: Path) -> None:
    """Log the table, plots and strips to a new W&B run (files in ``<results_dir>/wandb``) with ``config``."""
    import wandb

    columns, rows = wandb_table(runs)
    run = wandb.init(project=PROJECT, name=name, job_type="eval", dir=str(results_dir), config=config,
                     reinit="finish_previous")
    payload = {"sweep_table": wandb.Table(columns=columns, data=rows)}
    for kind in ("plots", "strips"):
        payload |= {f"{kind}/{path.stem}": wandb.Image(str(path)) for path in written[kind]}
    run.log(payload)
    run.finish()
