"""What each CPU pin of ``sr/reproducibility.py`` costs and changes: the same sampling chain in fresh processes, in
default mode, in reproducible mode, and in default mode with one pin added at a time (not a test).

    .venv/bin/python benchmarks/reproducibility.py [--models tiny full] [--rounds 2] [--steps 4] [--rows 0 1 ...]

Two models, random weights: ``tiny`` (the preset, seeded; ``--steps`` DDPM steps) and ``full`` (the SD-2.1-base
StableSR architecture, ``model=sd21_base model.pretrained=null``; 2 steps). The chain: ``sr.sampling.denoise`` on one
latent tile (the preset's ``latent_tile``: 16 x 16 tiny, 64 x 64 full) from a seeded random LR latent, as
``upscale.py`` samples; then decoded (untimed) and quantised as an 8-bit PNG holds it. Each row is one process started
from this environment without any pin; the rows run in turn, ``--rounds`` times, so that other work on the machine
slows every row alike; the time of a row is its fastest round, also given as a ratio to the default row. Per row:
the largest difference in 8-bit levels from the default run and from the reproducible run. A pin's *effect* is its
row's difference from the default row (what it changes on this machine), its *cost* its time ratio. Where the
default thread count is 2 (2 available cores) the thread pin costs nothing; the ``1 thread`` row shows what a thread
count changes. The SHA-256 of the reproducible pixels is printed, to compare across machines.
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

from sr.reproducibility import (
    SWITCH_VARIABLE,
    configure_cpu,
    reproducible_pins,
    reproducible_requested,
    subprocess_environment,
)

# model -> upscale.py overrides (random weights)
MODELS = {"tiny": ["model=tiny"], "full": ["model=sd21_base", "model.pretrained=null"]}


def worker(args: argparse.Namespace) -> None:
    """One sampling chain into ``args.worker`` (its decoded 8-bit pixels as ``.npy``); prints the chain's seconds."""
    configure_cpu(reproducible_requested())  # as the entry points do, before the models are imported
    import time

    import torch
    from hydra.utils import instantiate

    from sr.commands.config import compose
    from sr.sampling import denoise

    if args.deterministic == "on":
        torch.use_deterministic_algorithms(True)
    cfg = compose("upscale", ["input=unset", "output=unset", *MODELS[args.model], f"num_inference_steps={args.steps}"])
    pipe = instantiate(cfg.model)
    model, tile = pipe.model, pipe.config.latent_tile
    z_lr = torch.randn(1, 4, tile, tile, generator=torch.Generator().manual_seed(0))
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(args.steps)
    started = time.perf_counter()
    with torch.no_grad():
        latent, _ = denoise(model.predict, scheduler, z_lr, tile, tile // 2, 1, "lr", torch.Generator().manual_seed(42))
    seconds = time.perf_counter() - started
    with torch.no_grad():
        image = ((model.decode(latent) + 1) / 2).clamp(0, 1)[0]
    np.save(args.worker, (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())  # as an 8-bit PNG holds it
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
                               "--deterministic", deterministic, "--steps", str(steps)]
                    result = subprocess.run(command, check=False, env=environment, capture_output=True, text=True,
                                            cwd=REPO)
                    if result.returncode != 0:
                        sys.exit(f"{model} / {name}: the worker failed:\n{result.stderr[-3000:]}")
                    state = json.loads(result.stdout.strip().splitlines()[-1])
                    seconds[index].append(state["seconds"])
                    states[index] = state
                    image = np.load(output).astype(np.int32)
                    if index in pixels and not np.array_equal(pixels[index], image):
                        sys.exit(f"{model} / {name}: two rounds of one row differ")
                    pixels[index] = image
        print(f"\n{model}: one latent tile (the preset's latent_tile), {steps} steps, {args.rounds} rounds (fastest "
              "shown)")
        print("| setting | ATen kernels, threads | max diff vs default (8-bit levels) | max diff vs reproducible | "
              "chain s | time / default |")
        print("|---|---|---|---|---|---|")
        fastest = {index: min(times) for index, times in seconds.items()}
        for index in chosen:
            versus = [int(np.abs(pixels[index] - pixels[reference]).max()) for reference in (0, 1)]
            print(f"| {rows[index][0]} | {states[index]['capability']}, {states[index]['threads']} | {versus[0]} | "
                  f"{versus[1]} | {fastest[index]:.2f} | {fastest[index] / fastest[0]:.2f} |")
        print(f"reproducible pixels SHA-256: {hashlib.sha256(pixels[1].astype(np.uint8).tobytes()).hexdigest()}")


if __name__ == "__main__":
    main()
