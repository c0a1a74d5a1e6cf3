"""The CPU demo (``make demo``): upscale the held-out photos with the released tiny StableSR and score a sweep.

    python scripts/demo.py                    # released weights (sr/released/stablesr_tiny): a few minutes on 2 cores
    python scripts/demo.py --train            # first retrain every stage with the release recipe (make demo-train)
    python scripts/demo.py --commit-report    # rerun the sweep from scratch and rewrite experiments/demo_tiny/
                                              # (make demo-report; refuses a dirty git tree)

Steps (each a subprocess with a fixed run dir under ``--runs``, skipped when its outputs exist, ``--force STEP``
redoes one): ``upscale`` (the held-out LR photos at the preset's default settings, w = 0.5) and ``eval``
(w x tile overlap sweep on the held-out pairs, with the bicubic and LR-latent baselines; report in
``<runs>/eval/report``). With ``--train`` the release recipe's steps (``sr/commands/recipe.py``) come first, into
``<runs>/train``, and the demo uses the model they package. Everything runs in reproducible mode
(``sr/reproducibility.py``), so the scores equal the committed table.
"""

import argparse
import sys
from pathlib import Path

from sr.commands.config import RELEASED_DIR, find_project_root
from sr.commands.recipe import RELEASE_NAME, Step, release_steps, run_chain
from sr.reproducibility import subprocess_environment
from sr.utils.processes import run_child

ROOT = find_project_root()
HELDOUT_LR = ROOT / "data" / "samples" / "heldout_pairs" / "lr"
COMMITTED_REPORT = ROOT / "experiments" / "demo_tiny"
# The sweep: the preset's 32-latent tile over the held-out 48 x 48 latents gives 2 x 2 tiles at overlap 16 (the
# default, half a tile) and 3 x 3 tiles at overlap 24.
SWEEP = ["w=0,0.5,1", "tile.overlap=16,24"]
METRICS = "metrics=[psnr_y,ssim_y,niqe,lpips_alex,fid]"


def demo_steps(runs: Path, weights: Path) -> list[Step]:
    model = ["model=stablesr_tiny", f"model.pretrained={weights}"]
    heldout = sorted(HELDOUT_LR.glob("*.png"))
    eval_dir = runs / "eval"
    return [
        Step("upscale", runs / "upscale", [runs / "upscale" / f"{path.stem}.png" for path in heldout],
             [sys.executable, "upscale.py", f"input={HELDOUT_LR}", f"output={runs / 'upscale'}", *model, "w=0.5",
              "seed=42"]),
        Step("eval", eval_dir, [eval_dir / "report" / "table.md"],
             [sys.executable, "eval.py", "-m", *model, "data=samples_heldout", "experiment_name=demo_tiny", *SWEEP,
              "seed=42", METRICS, "progress=false", "report_timings=true", f"hydra.sweep.dir={eval_dir}"]),
    ]


def commit_report(runs: Path) -> None:
    """Sweep from scratch with the committed weights, then write ``experiments/demo_tiny`` from a clean tree."""
    run_chain(demo_steps(runs, RELEASED_DIR / RELEASE_NAME)[1:], {"all"}, "demo")
    command = [sys.executable, "-m", "sr.commands.report", str(runs / "eval"), "--name", "demo_tiny", "--out",
               str(COMMITTED_REPORT), "--overwrite", "--require-clean"]
    print(f"[demo] report: {' '.join(command)}", flush=True)
    if run_child(command, cwd=ROOT, env=subprocess_environment(reproducible=True)) != 0:
        sys.exit("[demo] writing the committed report failed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo", help="parent of the step run dirs")
    parser.add_argument("--train", action="store_true", help="retrain every stage first (the release recipe)")
    parser.add_argument("--commit-report", action="store_true", help="rewrite experiments/demo_tiny from scratch")
    parser.add_argument("--force", action="append", default=[], help="redo this step (repeatable; `all`)")
    args = parser.parse_args(argv)
    runs = args.runs.resolve()
    if args.commit_report:
        commit_report(runs.parent / "demo_commit_report")
        print(f"[demo] committed report rewritten: {COMMITTED_REPORT}")
        return
    steps = demo_steps(runs, RELEASED_DIR / RELEASE_NAME)
    if args.train:
        trained = runs / "train" / RELEASE_NAME
        steps = release_steps(runs / "train", trained) + demo_steps(runs, trained)
    run_chain(steps, set(args.force), "demo")
    print("[demo] finished. Where things are:")
    for step in steps:
        print(f"  {step.name:8s} {step.run_dir}")
    print(f"  report   {runs / 'eval' / 'report' / 'table.md'}")


if __name__ == "__main__":
    main()
