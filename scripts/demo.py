"""The CPU demo (``make demo``): train the tiny prior, stage 1, (CFW), upscale the held-out LR images, (evaluate).

Each step is a subprocess with a fixed run dir ``runs/demo/<step>``; a step whose outputs already exist is skipped,
so the demo can be rerun after an interruption (``--force`` redoes every step, ``--force-step NAME`` one step).

    python scripts/demo.py [--force] [--force-step stage1] [--runs runs/demo] [--upscale-steps 20]
"""

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELDOUT_LR = ROOT / "data" / "samples" / "heldout_pairs" / "lr"


@dataclass(frozen=True)
class Step:
    """One demo step: the command (run from the repo root), its run dir and the files that prove it is done."""

    name: str
    command: list[str]
    run_dir: Path
    outputs: list[Path]
    resumable: bool = False  # a train.py step: continue from run_dir/checkpoints/last.ckpt after an interruption

    def done(self) -> bool:
        return all(path.exists() for path in self.outputs)


def train_step(name: str, experiment: str, run_dir: Path, outputs: list[Path], *overrides: str) -> Step:
    command = [sys.executable, "train.py", f"experiment={experiment}", f"hydra.run.dir={run_dir}", *overrides]
    return Step(name, command, run_dir, outputs, resumable=True)


def demo_steps(runs: Path, upscale_steps: int) -> list[Step]:
    """The chain, in order. Extension points for the lead are marked ``EXTENSION``."""
    prior_dir = runs / "prior" / "model"
    stage1_weights = runs / "stage1" / "stage1.safetensors"
    steps = [
        train_step("prior", "prior_tiny", runs / "prior", [prior_dir / "unet", prior_dir / "vae"]),
        train_step("stage1", "stablesr_tiny", runs / "stage1", [stage1_weights], f"model.pretrained={prior_dir}"),
        # EXTENSION (CFW): generate the CFW training data with the stage-1 weights, then
        #   train_step("cfw", "cfw_tiny", runs / "cfw", [runs / "cfw" / "cfw.safetensors"], ...)
        # and add f"model.cfw_weights={runs / 'cfw' / 'cfw.safetensors'}" (and w=0.5) to the upscale step below.
        Step(
            "upscale",
            [sys.executable, "upscale.py", f"input={HELDOUT_LR}", f"output={runs / 'upscale'}", "model=tiny",
             f"model.pretrained={prior_dir}", f"model.stage1_weights={stage1_weights}", f"steps={upscale_steps}",
             "w=0.0", "seed=42"],
            runs / "upscale",
            [runs / "upscale" / f"{path.stem}.png" for path in sorted(HELDOUT_LR.glob("*.png"))],
        ),
        # EXTENSION (eval): score runs/demo/upscale against data/samples/heldout_pairs/hr, e.g.
        #   Step("eval", [sys.executable, "eval.py", ...], runs / "eval", [runs / "eval" / "metrics.json"])
    ]
    return steps


def run_step(step: Step, force: bool) -> None:
    if step.done() and not force:
        print(f"[demo] {step.name}: outputs exist, skipping ({', '.join(map(str, step.outputs))}); --force to redo")
        return
    if force and step.run_dir.exists():
        shutil.rmtree(step.run_dir)
    command = list(step.command)
    last_checkpoint = step.run_dir / "checkpoints" / "last.ckpt"
    if step.resumable and last_checkpoint.exists():
        command.append(f"ckpt_path={last_checkpoint}")
    print(f"[demo] {step.name}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, check=False, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"[demo] {step.name} failed (exit code {result.returncode}); logs in {step.run_dir}")
    missing = [str(path) for path in step.outputs if not path.exists()]
    if missing:
        sys.exit(f"[demo] {step.name} finished but did not write {', '.join(missing)}")
    print(f"[demo] {step.name}: done in {time.monotonic() - started:.0f} s; run dir {step.run_dir}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo", help="parent of the step run dirs")
    parser.add_argument("--force", action="store_true", help="redo every step (deletes its run dir first)")
    parser.add_argument("--force-step", action="append", default=[], help="redo only this step (repeatable)")
    parser.add_argument("--upscale-steps", type=int, default=20, help="sampling steps of the upscale step")
    args = parser.parse_args(argv)
    steps = demo_steps(args.runs.resolve(), args.upscale_steps)
    unknown = set(args.force_step) - {step.name for step in steps}
    if unknown:
        parser.error(f"unknown step(s) {sorted(unknown)}; steps are {[step.name for step in steps]}")
    for step in steps:
        run_step(step, args.force or step.name in args.force_step)
    print("[demo] finished. Where things are:")
    for step in steps:
        print(f"  {step.name:8s} run dir {step.run_dir}  (checkpoints/, csv/metrics.csv, *.log, config_resolved.yaml)")
        for path in step.outputs:
            print(f"           output  {path}")


if __name__ == "__main__":
    main()
