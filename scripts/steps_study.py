"""Fewer sampling steps, measured: quality against steps for DDPM (respaced), DDIM and DPM-Solver++ with the released
tiny StableSR on the held-out pairs; writes ``experiments/steps_tiny/`` (table, plots, ``summary.md``).

    python scripts/steps_study.py [--runs runs/steps_tiny] [--out experiments/steps_tiny] [--tolerance-db 0.1] \
        [eval.py overrides, default: model=stablesr_tiny]

The sweep is one ``eval.py`` multirun at w = 0 (the plain decoder: CFW does not depend on the sampler, so this
measures the sampler alone); finished runs are reused when rerun with the same ``--runs``. The summary names the
fastest setting whose mean PSNR-Y is within ``--tolerance-db`` of 200-step DDPM, the released sampler: fewest UNet
evaluations (= steps: every scheduler here calls the UNet once per step), then measured seconds per image.
"""

import argparse
import sys
from pathlib import Path

from sr.commands.config import find_project_root
from sr.commands.report.runs import collect_sweep
from sr.io import write_bytes_atomic
from sr.reproducibility import subprocess_environment
from sr.utils.processes import run_child

ROOT = find_project_root()
SCHEDULERS = ("ddpm", "ddim", "dpmsolver")
STEPS = (5, 10, 20, 50, 200)
REFERENCE = ("DDPMScheduler", 200)


def run(command: list[str]) -> None:
    print(f"[steps] {' '.join(command)}", flush=True)
    if run_child(command, cwd=ROOT, env=subprocess_environment(reproducible=True)) != 0:
        sys.exit(f"[steps] failed: {' '.join(command)}")


def summary(runs_dir: Path, tolerance_db: float) -> str:
    """Markdown: the reference, every setting within tolerance, and the fastest of them."""
    rows = []
    for run_record in collect_sweep(runs_dir):
        if not run_record.ok:
            continue
        settings, aggregate = run_record.settings, run_record.record["aggregate"]
        rows.append((settings["scheduler"], int(settings["num_inference_steps"]), aggregate["psnr_y"]["mean"],
                     aggregate["ssim_y"]["mean"], run_record.record["seconds_per_image"]))
    reference = next(row for row in rows if row[:2] == REFERENCE)
    close = sorted((row for row in rows if row[2] >= reference[2] - tolerance_db), key=lambda row: (row[1], row[4]))
    lines = [
        f"# Fewest steps within {tolerance_db} dB of {REFERENCE[1]}-step DDPM",
        "",
        f"Reference: {REFERENCE[0]} {REFERENCE[1]} steps, PSNR-Y {reference[2]:.2f} dB, SSIM-Y {reference[3]:.4f}, "
        f"{reference[4]:.2f} s/image.",
        "",
        "| scheduler | steps | PSNR-Y | SSIM-Y | s/image | speed-up over the reference |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {n} | {p:.2f} | {q:.4f} | {t:.2f} | {reference[4] / t:.1f}x |" for s, n, p, q, t in close]
    fastest = close[0]
    lines += ["", f"Fastest within {tolerance_db} dB: **{fastest[0]} with {fastest[1]} steps** "
              f"({reference[4] / fastest[4]:.1f}x faster than the reference, PSNR-Y {fastest[2]:.2f} dB)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "steps_tiny", help="the sweep dir")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "steps_tiny", help="the report folder")
    parser.add_argument("--tolerance-db", type=float, default=0.1)
    parser.add_argument("overrides", nargs="*", default=["model=stablesr_tiny"], help="more eval.py overrides")
    args = parser.parse_args(argv)
    run([sys.executable, "eval.py", "-m", *args.overrides, "data=samples_heldout", "experiment_name=steps_tiny", "w=0",
         f"scheduler={','.join(SCHEDULERS)}", f"num_inference_steps={','.join(map(str, STEPS))}", "seed=42",
         "metrics=[psnr_y,ssim_y,niqe]", "baselines=[bicubic]", "progress=false", "report=false",
         f"hydra.sweep.dir={args.runs}"])
    run([sys.executable, "-m", "sr.commands.report", str(args.runs), "--name", "steps_tiny", "--out", str(args.out),
         "--overwrite", "--timings", "--require-clean"])
    text = summary(args.runs, args.tolerance_db)
    write_bytes_atomic(args.out / "summary.md", text.encode(), overwrite=True)
    print(text)


if __name__ == "__main__":
    main()
