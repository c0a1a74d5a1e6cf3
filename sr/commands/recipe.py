"""The recipe of the released tiny StableSR (``sr/released/stablesr_tiny``) and the machinery of step chains.

A chain is a list of :class:`Step`: a command run from the project root with a fixed run dir, done when its
output files exist. A finished step is skipped on a rerun, an interrupted ``train.py`` step resumes from its
``last.ckpt``, ``force`` redoes a step. ``scripts/release.py`` and ``scripts/demo.py`` run chains.

The release recipe (:func:`release_steps`), every stage on the bundled training photos (``data/samples/train``)::

    prior     train.py experiment=release_tiny_prior      VAE (L1 + KL, GAN late) then UNet, from scratch
    stage1    train.py experiment=release_tiny_stage1     time-aware encoder + SFT on the frozen prior
    cfw_data  python -m sr.commands.cfw_generate ...               CFW_DATA: pairs sampled by the stage-1 model
    cfw       train.py experiment=release_tiny_cfw        CFW on those pairs
    package   prior + stage 1 + CFW -> one pipeline folder (safetensors) + release.json

A step runs in reproducible mode (:mod:`sr.reproducibility`) unless it says otherwise: the demo's steps make committed
tables. The release's training steps run in the default fast mode (``reproducible=True`` of :func:`release_steps` or
``scripts/release.py --reproducible``, pins them): the pins cost about 2x on CPU, which would push the recipe past its
3-hour budget on 2 cores; without them the weights are repeatable on one machine (``trainer.deterministic``, a fixed
thread count) but may differ in the last bits on another CPU.
"""

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sr.commands.cfw_generate import sample_name
from sr.commands.config import find_project_root
from sr.data.cfw import sample_files
from sr.reproducibility import subprocess_environment
from sr.utils.processes import run_child

TRAIN_DIR = Path("data") / "samples" / "train"
RELEASE_NAME = "stablesr_tiny"
RELEASE_FILE = "release.json"
# The CFW training pairs of the recipe (python -m sr.commands.cfw_generate keys): 128 px GT crops, 20 respaced DDPM
# steps.
CFW_DATA = {"num_samples": 128, "crop_size": 128, "steps": 20, "seed": 10000}
# Losses reported in release.json: the mean of the last LOSS_WINDOW logged values of each loss column.
LOSS_WINDOW = 5
# Each command step's wall time in seconds, summed over its attempts (a resumed step adds to it), by step name, in
# the parent folder of the run dirs.
WALL_TIME_FILE = "recipe_wall_seconds.json"


@dataclass(frozen=True)
class Step:
    """One step of a chain: ``command`` (run from the project root, or an in-process ``action``), its run dir and
    the files that prove it is done."""

    name: str
    run_dir: Path
    outputs: list[Path]
    command: list[str] = field(default_factory=list)
    action: Callable[[], None] | None = None
    resumable: bool = False  # a train.py step: continue from run_dir/checkpoints/last.ckpt after an interruption
    reproducible: bool = True  # run in reproducible mode (sr.reproducibility)

    def done(self) -> bool:
        return all(path.exists() for path in self.outputs)


def train_step(
    name: str, experiment: str, run_dir: Path, outputs: list[Path], *overrides: str, reproducible: bool = True
) -> Step:
    command = [sys.executable, "train.py", f"experiment={experiment}", f"hydra.run.dir={run_dir}", *overrides]
    return Step(name, run_dir, outputs, command, resumable=True, reproducible=reproducible)


def run_step(step: Step, force: bool, log_prefix: str) -> None:
    """Run ``step`` unless it is done (``force``: delete its run dir and redo it); exit with one line on failure."""
    if step.done() and not force:
        print(f"[{log_prefix}] {step.name}: outputs exist, skipping ({step.outputs[0]}); force it to redo")
        return
    if force and step.command:
        if step.run_dir.exists():
            shutil.rmtree(step.run_dir)
        forget_wall_time(step.run_dir.parent, step.name)  # the redo's time replaces the deleted run's
    started = time.monotonic()
    if step.action is not None:
        print(f"[{log_prefix}] {step.name}", flush=True)
        step.action()
    else:
        command = list(step.command)
        last_checkpoint = step.run_dir / "checkpoints" / "last.ckpt"
        if step.resumable and last_checkpoint.exists():
            command.append(f"ckpt_path={last_checkpoint}")
        print(f"[{log_prefix}] {step.name}: {' '.join(map(str, command))}", flush=True)
        returncode = run_child(command, cwd=find_project_root(), env=subprocess_environment(step.reproducible))
        if returncode != 0:
            sys.exit(f"[{log_prefix}] {step.name} failed (exit code {returncode}); logs in {step.run_dir}")
    missing = [str(path) for path in step.outputs if not path.exists()]
    if missing:
        sys.exit(f"[{log_prefix}] {step.name} finished but did not write {', '.join(missing)}")
    seconds = time.monotonic() - started
    if step.action is None:
        add_wall_time(step.run_dir.parent, step.name, seconds)
    print(f"[{log_prefix}] {step.name}: done in {seconds:.0f} s; run dir {step.run_dir}")


def add_wall_time(runs: Path, name: str, seconds: float) -> None:
    """Add ``seconds`` to step ``name``'s wall time in ``runs`` / :data:`WALL_TIME_FILE`."""
    times = wall_times(runs)
    times[name] = round(times.get(name, 0.0) + seconds, 1)
    _save_wall_times(runs, times)


def forget_wall_time(runs: Path, name: str) -> None:
    """Drop step ``name``'s recorded wall time in ``runs`` / :data:`WALL_TIME_FILE` (its run was deleted)."""
    times = wall_times(runs)
    if times.pop(name, None) is not None:
        _save_wall_times(runs, times)


def _save_wall_times(runs: Path, times: dict[str, float]) -> None:
    from sr.io import write_bytes_atomic

    write_bytes_atomic(runs / WALL_TIME_FILE, json.dumps(times, indent=2).encode(), overwrite=True)


def wall_times(runs: Path) -> dict[str, float]:
    """The recorded wall time of each step run under ``runs`` (empty when none)."""
    path = runs / WALL_TIME_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def run_chain(steps: list[Step], force: set[str], log_prefix: str) -> None:
    unknown = force - {step.name for step in steps} - {"all"}
    if unknown:
        sys.exit(f"[{log_prefix}] unknown step(s) {sorted(unknown)}; steps are {[step.name for step in steps]}")
    for step in steps:
        run_step(step, "all" in force or step.name in force, log_prefix)


def release_steps(
    runs: Path, out: Path, overwrite: bool = False, overrides: dict[str, list[str]] | None = None,
    reproducible: bool = False,
) -> list[Step]:
    """The recipe's chain (module docstring): run dirs under ``runs``, the packaged model folder at ``out``;
    ``overrides`` adds command-line overrides per step name (the tests' smoke run shrinks every stage with it);
    ``reproducible`` runs the training and sampling steps in reproducible mode (2x slower on CPU)."""
    extra = overrides or {}
    cfw_data_settings = CFW_DATA | dict(item.split("=", 1) for item in extra.get("cfw_data", []))
    prior_dir = runs / "prior" / "model"
    stage1_weights = runs / "stage1" / "stage1.safetensors"
    cfw_data = runs / "cfw_data"
    cfw_weights = runs / "cfw" / "cfw.safetensors"
    names = [sample_name(i) for i in range(int(cfw_data_settings["num_samples"]))]
    return [
        train_step("prior", "release_tiny_prior", runs / "prior", [prior_dir / "unet", prior_dir / "vae"],
                   *extra.get("prior", []), reproducible=reproducible),
        train_step("stage1", "release_tiny_stage1", runs / "stage1", [stage1_weights], f"model.pretrained={prior_dir}",
                   *extra.get("stage1", []), reproducible=reproducible),
        Step(
            "cfw_data",
            cfw_data,
            [path for name in names for path in sample_files(cfw_data, name).values()],
            [sys.executable, "-m", "sr.commands.cfw_generate", f"model.pretrained={prior_dir}",
             f"model.stage1_weights={stage1_weights}", f"out={cfw_data}", f"hydra.run.dir={runs / 'cfw_data_log'}",
             f"source_dirs=[{TRAIN_DIR}]", *(f"{key}={value}" for key, value in cfw_data_settings.items())],
            reproducible=reproducible,
        ),
        train_step("cfw", "release_tiny_cfw", runs / "cfw", [cfw_weights], f"model.pretrained={prior_dir}",
                   f"data.root={cfw_data}", *extra.get("cfw", []), reproducible=reproducible),
        Step("package", out, [out / "model_index.json", out / RELEASE_FILE],
             action=lambda: package(runs, out, cfw_data_settings, overwrite, reproducible)),
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def final_losses(run_dir: Path) -> dict[str, float]:
    """Mean of the last :data:`LOSS_WINDOW` logged values of every loss-like column of ``run_dir/csv/metrics.csv``;
    empty when the run has no such log (another logger, or a log lost to a resume before ResumableCSVLogger)."""
    import csv

    if not (run_dir / "csv" / "metrics.csv").is_file():
        return {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = {}
    for column in rows[0] if rows else []:
        if column in ("epoch", "step") or "/" not in column or column.startswith("val"):
            continue
        values = [float(row[column]) for row in rows if row.get(column) not in (None, "")]
        if values:
            losses[column] = round(sum(values[-LOSS_WINDOW:]) / len(values[-LOSS_WINDOW:]), 6)
    return losses


def _provenance(run_dir: Path) -> dict:
    provenance = json.loads((run_dir / "provenance.json").read_text())
    return {key: provenance[key] for key in ("git_revision", "command") if key in provenance}


def package(
    runs: Path, out: Path, cfw_data_settings: dict, overwrite: bool = False, reproducible: bool = False
) -> Path:
    """Assemble the release folder ``out``: the prior with the stage-1 and CFW weights loaded, saved with
    ``StableSRPipeline.save_pretrained`` (safetensors), and ``release.json`` (recipe, data list with SHA-256, each
    step's git revision and command, final losses, parameter counts)."""
    from hydra.utils import instantiate

    from sr.commands.config import compose
    from sr.io import write_bytes_atomic

    root = find_project_root()
    # the release preset (conf/model/stablesr_tiny.yaml) with the run's weights: the folder records its sampling
    # defaults, so from_pretrained(out) samples as `upscale.py model=stablesr_tiny` does
    model = compose("upscale", ["model=stablesr_tiny", f"model.pretrained={runs / 'prior' / 'model'}",
                                f"model.stage1_weights={runs / 'stage1' / 'stage1.safetensors'}",
                                f"model.cfw_weights={runs / 'cfw' / 'cfw.safetensors'}"]).model
    pipe = instantiate(model)
    if out.exists() and not overwrite:
        sys.exit(f"[release] {out}: already exists (pass --overwrite to replace it)")
    pipe.save_pretrained(out)
    photos = sorted((root / TRAIN_DIR).glob("*.png"))
    release = {
        "name": RELEASE_NAME,
        "recipe": "python scripts/release.py (make release-train); configs sr/conf/experiment/release_tiny_*.yaml",
        "training_photos": {str(path.relative_to(root)): sha256(path) for path in photos},
        "cfw_data": cfw_data_settings,
        "reproducible_mode": reproducible,
        "steps": {
            name: {**_provenance(runs / name), "final_losses": final_losses(runs / name)}
            for name in ("prior", "stage1", "cfw")
        },
        "wall_seconds": wall_times(runs),
        "parameters": {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                       for name in ("unet", "vae", "time_aware_encoder", "sft", "cfw")},
        "files": {str(path.relative_to(out)): sha256(path) for path in sorted(out.rglob("*.safetensors"))},
    }
    # run dirs in the recorded commands are machine paths: keep them relative to the project root
    text = json.dumps(release, indent=2).replace(f"{root}/", "") + "\n"
    write_bytes_atomic(out / RELEASE_FILE, text.encode(), overwrite=True)
    return out
