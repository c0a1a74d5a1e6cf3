"""Log a built sweep report (table, plots, strips) to Weights & Biases."""

from collections.abc import Sequence
from pathlib import Path

from sr.report.runs import Run
from sr.report.table import build_rows


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
