"""Train the released tiny StableSR from scratch on CPU and package it (the recipe: ``sr/commands/recipe.py``).

    python scripts/release.py [--runs runs/release] [--out runs/release/stablesr_tiny] [--force STEP] [--overwrite]
        [--reproducible]

Steps: prior, stage1, cfw_data, cfw, package (finished steps are skipped; ``--force all`` redoes every step). About
55 minutes on 2 CPU cores. Replacing the committed release is explicit:
``python scripts/release.py --out sr/released/stablesr_tiny --overwrite``.
"""

import argparse
from pathlib import Path

from sr.commands.config import find_project_root
from sr.commands.recipe import release_steps, run_chain


def main(argv: list[str] | None = None) -> None:
    root = find_project_root()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=root / "runs" / "release", help="parent of the step run dirs")
    parser.add_argument("--out", type=Path, help="the packaged model folder [<runs>/stablesr_tiny]")
    parser.add_argument("--force", action="append", default=[], help="redo this step (repeatable; `all`)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--reproducible", action="store_true",
                        help="train in reproducible mode (bit-identical across CPUs, about 2x slower)")
    args = parser.parse_args(argv)
    runs = args.runs.resolve()
    out = (args.out or runs / "stablesr_tiny").resolve()
    run_chain(release_steps(runs, out, args.overwrite, reproducible=args.reproducible), set(args.force), "release")
    print(f"[release] model folder: {out}")


if __name__ == "__main__":
    main()
