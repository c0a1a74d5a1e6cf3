"""Build a sweep's report: tables, plots and comparison strips of every run below a folder.

``python -m sr.commands.report <sweep dir> [--name NAME] [--out experiments/NAME]`` gathers every ``scores.json`` below
the sweep into ``table.md`` / ``table.csv`` (the baselines each run scored, once per distinct setting, then one row per
run; failed runs marked with their error), plots every metric against ``w`` (one line per tile overlap) and against
``tile.overlap`` (one line per w) with the bicubic value as a reference line under ``plots/``, and writes
LR | SR(w=...) | bicubic | HR comparison strips under ``strips/`` and ``index.html``, the same as one page to
open offline in a browser (sortable table, comparison sliders over the images copied to ``compare/``, plots). The
files carry no machine-specific paths or timings and the same runs give byte-identical files; ``--timings`` adds
the seconds per image. ``--require-clean`` refuses to write from a tree whose tracked files differ from the commit
(the report's own folder aside), as a committed report should. ``--wandb`` logs the table and images to W&B. Exit
status 1 when a run failed or is unfinished (each named on stderr). A plain argparse tool: it reads result files
and composes no config.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sr.commands.report.build import build_report
from sr.commands.report.runs import collect_sweep
from sr.commands.report.wandb_log import log_to_wandb
from sr.errors import one_line_errors
from sr.utils.provenance import git_state


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sr.commands.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="folder holding the sweep's runs (searched for scores.json)")
    parser.add_argument("--name", help="report name (default: the sweep folder's name)")
    parser.add_argument("--out", type=Path, help="output folder (default: experiments/NAME)")
    parser.add_argument("--lr-dir", type=Path, help="LR images for the strips (default: settings.lr_dir)")
    parser.add_argument("--hr-dir", type=Path, help="HR images for the strips (default: settings.hr_dir)")
    parser.add_argument("--strip-images", type=int, default=3, help="how many images get a comparison strip")
    parser.add_argument("--timings", action="store_true",
                        help="add the seconds per image to the tables (machine-dependent: not for committed reports)")
    parser.add_argument("--require-clean", action="store_true",
                        help="refuse when tracked files differ from the git commit (the output folder aside)")
    parser.add_argument("--wandb", action="store_true", help="log table and images to W&B")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (one line otherwise)")
    args = parser.parse_args(argv)
    name = args.name or args.sweep_dir.resolve().name
    out_dir = args.out or Path("experiments") / name
    if args.require_clean:
        require_clean(out_dir)
    with one_line_errors("sr.commands.report", args.debug, debug_flag="--debug"):
        try:
            written = build_report(args.sweep_dir, out_dir, name, args.lr_dir, args.hr_dir, args.strip_images,
                                   args.overwrite, args.timings)
        except (FileNotFoundError, FileExistsError) as problem:
            raise SystemExit(f"sr.commands.report: {problem}") from None
        runs = collect_sweep(args.sweep_dir)
        if args.wandb:
            log_to_wandb(name, runs, written, {"sweep_dir": str(args.sweep_dir)}, args.sweep_dir)
    print(f"sr.commands.report: wrote {sum(len(paths) for paths in written.values())} files to {out_dir}")
    incomplete = [run for run in runs if not run.ok]
    for run in incomplete:
        print(f"sr.commands.report: {run.run_dir}: {run.record['status']}: {run.record['error']}", file=sys.stderr)
    if incomplete:
        raise SystemExit(1)


def require_clean(out_dir: Path) -> None:
    """Exit 1 with one line unless this checkout is a git commit without modified tracked files (``out_dir``, the
    report about to be rewritten, aside)."""
    state = git_state(ignore=(out_dir,))
    if state.modified:
        more = len(state.modified) - 5
        shown = ", ".join(state.modified[:5]) + (f" and {more} more" if more > 0 else "")
        raise SystemExit(f"sr.commands.report: --require-clean: tracked files differ from the commit ({shown}); commit or "
                         "stash them first")
    if state.revision in ("unknown", "uncommitted"):
        raise SystemExit(f"sr.commands.report: --require-clean: the code is not a git commit ({state.revision})")
