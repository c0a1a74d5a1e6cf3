"""Write a sweep's report folder: table.md, table.csv, plots/*.png, strips/*.png and index.html with its
compare/ images."""

from collections.abc import Sequence
from pathlib import Path

from sr.commands.report.html import COMPARE_DIR, PAGE, browser_image, comparison_candidates, render_html
from sr.commands.report.plots import PLOT_AXES, plot_metric
from sr.commands.report.runs import METHOD, Run, collect_sweep, table_rows
from sr.commands.report.strips import comparison_strip
from sr.commands.report.table import metric_columns, render_csv, render_markdown
from sr.io import write_bytes_atomic


def build_report(
    sweep_dir: Path,
    out_dir: Path,
    name: str,
    lr_dir: Path | None = None,
    hr_dir: Path | None = None,
    strip_images: int = 3,
    overwrite: bool = False,
    timings: bool = False,
) -> dict[str, list[Path]]:
    """Write table.md, table.csv, plots/*.png, strips/*.png and index.html (``sr.commands.report.html``) with its compared
    images under compare/ for the sweep; returns the written paths by kind. The first ``strip_images`` images (by
    name) get a strip and a comparison view.

    ``timings``: add the seconds per image to the tables (machine-dependent, so off for committed reports). The
    same runs give byte-identical files.
    """
    runs = collect_sweep(sweep_dir)
    rows = table_rows(runs)
    if (out_dir / "table.md").exists() and not overwrite:
        raise FileExistsError(f"{out_dir / 'table.md'}: already exists (pass --overwrite to replace the report)")
    written: dict[str, list[Path]] = {"tables": [], "plots": [], "strips": [], "page": [], "compare": []}
    tables = (("table.md", render_markdown(name, sweep_dir, runs, rows, out_dir, timings)),
              ("table.csv", render_csv(sweep_dir, rows, timings)))
    for file_name, text in tables:
        write_bytes_atomic(out_dir / file_name, text.encode(), overwrite)
        written["tables"].append(out_dir / file_name)

    for metric in metric_columns(rows):
        for x_key in PLOT_AXES:
            png = plot_metric(rows, metric, x_key)
            if png is not None:
                path = out_dir / "plots" / f"{metric}_vs_{x_key.replace('.', '_')}.png"  # tile.overlap: no dot
                write_bytes_atomic(path, png, overwrite)
                written["plots"].append(path)

    lr_dir = lr_dir or _setting_dir(runs, "lr_dir")
    hr_dir = hr_dir or _setting_dir(runs, "hr_dir")
    names = sorted({image for run in runs if run.ok for image in run.record["per_image"]})
    for image_name in names[:strip_images]:
        png = comparison_strip(rows, image_name, lr_dir, hr_dir)
        if png is not None:
            path = out_dir / "strips" / f"{image_name}.png"
            write_bytes_atomic(path, png, overwrite)
            written["strips"].append(path)

    comparisons = {}
    for image_name in names[:strip_images]:
        candidates = comparison_candidates(rows, image_name, lr_dir, hr_dir)
        if any(candidate.label.startswith(METHOD) for candidate in candidates):
            comparisons[image_name] = candidates
            for candidate in candidates:
                path = out_dir / COMPARE_DIR / image_name / candidate.file_name
                write_bytes_atomic(path, browser_image(candidate.source), overwrite)
                written["compare"].append(path)
    plots = [path.relative_to(out_dir).as_posix() for path in written["plots"]]
    page = render_html(name, sweep_dir, runs, rows, plots, comparisons, timings)
    write_bytes_atomic(out_dir / PAGE, page.encode(), overwrite)
    written["page"].append(out_dir / PAGE)
    return written


def _setting_dir(runs: Sequence[Run], key: str) -> Path | None:
    """The first run's ``settings[key]`` folder (the eval inputs) when the caller names none."""
    for run in runs:
        if run.settings.get(key):
            return Path(run.settings[key])
    return None
