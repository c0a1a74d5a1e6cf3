"""What each CPU pin of ``sr/reproducibility.py`` costs and changes: the same upscale in fresh processes, in default
mode, in reproducible mode, and in default mode with one pin added at a time (not a test).

    .venv/bin/python benchmarks/reproducibility.py [--models tiny full] [--rounds 2] [--steps 4] [--image <LR png>]

Two models, random weights: ``tiny`` (the preset, seeded; a 32 px crop of a held-out LR image -> 128 px, ``--steps``
DDPM steps) and ``full`` (the SD-2.1-base StableSR architecture, ``model=sd21_base model.pretrained=null``; a 128 px
crop -> 512 px: one 64 x 64 latent tile, 2 steps). Sampled as ``upscale.py`` samples, seed 42, quantised as it
writes (8-bit). Each row is one process started from this environment without any pin; the rows run in turn,
``--rounds`` times, so that other work on the machine slows every row alike; the time of a row is its fastest round
(sampling only, after building the model), given as a ratio to the default row. Per row: the largest difference in
8-bit levels from the default run and from the reproducible run, and the sampling time. A pin's *effect* is its
row's difference from the default row (what it changes on this machine); its *cost* its time ratio. On a machine
whose default thread count is 2 (2 available cores), the thread pin costs nothing there and the ``1 thread`` row
shows what a thread count changes. The SHA-256 of the reproducible pixels is printed, to compare across machines.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr.reproducibility import SWITCH_VARIABLE, configure_cpu, reproducible_pins  # noqa: E402
from sr.reproducibility import reproducible_requested, subprocess_environment  # noqa: E402

DEFAULT_IMAGE = REPO / "data" / "samples" / "heldout_pairs" / "lr" / "coffee.png"
# model -> (upscale.py overrides, LR crop side in px); the latent tile is the whole latent (crop * 4 / 8)
MODELS = {"tiny": (["model=tiny"], 32), "full": (["model=sd21_base", "model.pretrained=null"], 128)}


def worker(args: argparse.Namespace) -> None:
    """One upscale into ``args.worker`` (8-bit pixels as ``.npy``); prints the sampling seconds."""
    configure_cpu(reproducible_requested())  # as the entry points do, before the models are imported
    import time

    import torch
    from hydra.utils import instantiate

    from sr.config import compose
    from sr.io import _quantise, read_image
    from sr.pipelines import sampling_arguments, use_scheduler

    if args.deterministic == "on":
        torch.use_deterministic_algorithms(True)
    overrides, size = MODELS[args.model]
    cfg = compose("upscale", ["input=unset", "output=unset", *overrides, f"steps={args.steps}", "input_size=0",
                              f"tile.size={size // 2}", "progress=false"])
    pipe = use_scheduler(instantiate(cfg.model), instantiate(cfg.scheduler))
    pipe.set_progress_bar_config(disable=True)
    lr = read_image(args.image).image[None, :, :size, :size]
    started = time.perf_counter()
    image = pipe(lr, generator=torch.Generator().manual_seed(cfg.seed), output_type="pt",
                 **sampling_arguments(cfg)).images[0]
    seconds = time.perf_counter() - started
    np.save(args.worker, _quantise(image, 8))  # as write_image quantises an 8-bit PNG
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads(),
                      "capability": torch.backends.cpu.get_cpu_capability()}))


def settings(base: dict[str, str]) -> list[tuple[str, dict[str, str], str]]:
    """``(row name, environment, deterministic algorithms on/off)``; the first row is default mode, the second
    reproducible mode."""
    default = subprocess_environment(False, base)
    reproducible = subprocess_environment(True, base)
    pins = reproducible_pins()
    return [
        ("default", default, "off"),
        ("reproducible (every pin)", reproducible, "on"),
        ("default, run again", default, "off"),
        ("reproducible, run again", reproducible, "on"),
        ("+ ATEN_CPU_CAPABILITY=avx2 alone", {**default, "ATEN_CPU_CAPABILITY": pins["ATEN_CPU_CAPABILITY"]}, "off"),
        ("+ ONEDNN_MAX_CPU_ISA=AVX2 alone", {**default, "ONEDNN_MAX_CPU_ISA": pins["ONEDNN_MAX_CPU_ISA"]}, "off"),
        ("+ MKL_CBWR=COMPATIBLE alone", {**default, "MKL_CBWR": pins["MKL_CBWR"]}, "off"),
        ("+ MKL_CBWR=AVX2 alone (Intel only)", {**default, "MKL_CBWR": "AVX2"}, "off"),
        ("+ deterministic algorithms alone", default, "on"),
        ("+ 1 thread alone", {**default, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, "off"),
        ("+ OMP_WAIT_POLICY=PASSIVE alone (not numerics)", {**default, "OMP_WAIT_POLICY": "PASSIVE"}, "off"),
        ("reproducible with MKL_CBWR=AVX2", {**reproducible, "MKL_CBWR": "AVX2"}, "on"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="LR image (its top-left crop is used)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "full"])
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of the tiny model (full: 2)")
    parser.add_argument("--rounds", type=int, default=2, help="times each row runs, in turn with the others")
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="row numbers to run (default: all)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", choices=("on", "off"), default="off", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args)
    # The rows start from this environment without any pin, so a variable exported in the shell changes no row.
    base = {key: value for key, value in os.environ.items()
            if key not in reproducible_pins() and key != SWITCH_VARIABLE}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    rows = settings(base)
    chosen = args.rows if args.rows is not None else list(range(len(rows)))
    if not {0, 1} <= set(chosen):
        sys.exit("--rows must include 0 (default) and 1 (reproducible): the references")
    for model in args.models:
        steps = args.steps if model == "tiny" else 2
        seconds, pixels, states = {index: [] for index in chosen}, {}, {}
        with tempfile.TemporaryDirectory() as folder:
            for _ in range(args.rounds):
                for index in chosen:
                    name, environment, deterministic = rows[index]
                    output = Path(folder) / f"{index}.npy"
                    command = [sys.executable, __file__, "--worker", str(output), "--model", model,
                               "--deterministic", deterministic, "--image", str(args.image), "--steps", str(steps)]
                    result = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=REPO)
                    if result.returncode != 0:
                        sys.exit(f"{model} / {name}: the worker failed:\n{result.stderr[-3000:]}")
                    state = json.loads(result.stdout.strip().splitlines()[-1])
                    seconds[index].append(state["seconds"])
                    states[index] = state
                    image = np.load(output).astype(np.int32)
                    if index in pixels and not np.array_equal(pixels[index], image):
                        sys.exit(f"{model} / {name}: two rounds of one row differ")
                    pixels[index] = image
        crop = MODELS[model][1]
        print(f"\n{model}: {crop}^2 px crop of {args.image.name} -> {4 * crop}^2, one latent tile, {steps} steps, "
              f"{args.rounds} rounds (fastest shown)")
        print("| setting | ATen kernels, threads | max diff vs default (8-bit levels) | max diff vs reproducible | "
              "sampling s | time / default |")
        print("|---|---|---|---|---|---|")
        fastest = {index: min(times) for index, times in seconds.items()}
        for index in chosen:
            versus = [int(np.abs(pixels[index] - pixels[reference]).max()) for reference in (0, 1)]
            print(f"| {rows[index][0]} | {states[index]['capability']}, {states[index]['threads']} | {versus[0]} | "
                  f"{versus[1]} | {fastest[index]:.2f} | {fastest[index] / fastest[0]:.2f} |")
        print(f"reproducible pixels SHA-256: {hashlib.sha256(pixels[1].astype(np.uint8).tobytes()).hexdigest()}")


if __name__ == "__main__":
    main()
