"""What each CPU numerics pin of ``sr/reproducibility.py`` changes: the same upscale in fresh processes, one setting
changed at a time, against the pinned run (not a test).

    .venv/bin/python benchmarks/reproducibility.py [--size 32] [--steps 10] [--image <LR png>]

The run: the ``tiny`` preset's random weights (seeded by the preset), a ``--size`` px crop of a held-out LR image,
4x, ``--steps`` DDPM steps, seed 42, sampled as ``upscale.py`` samples and quantised as it writes (8-bit PNG). Each
row is one process; the rows that change an environment variable opt out of the in-process pin
(``STABLESR_PIN_CPU=0``) and set every other pinned variable themselves, so they differ from the reference in that
variable only; the third row checks that this is the same as pinning in-process. The narrower instruction sets
(ATen ``default``, oneDNN SSE4.1) stand in for another machine's wider ones. Printed per row: the largest
difference in 8-bit levels, the share of pixels with any channel different, the PSNR between the two 8-bit outputs,
the largest difference before quantisation (the sampler's float output in [0, 1]) and the sampling time; then the
SHA-256 of the reference pixels, to compare with another machine's. About 5 minutes on 2 cores shared with a
training run (most of it importing diffusers, once per row).
"""

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr.reproducibility import PIN_SWITCH, THREADS_VARIABLE, pin_cpu_numerics, pinned_values  # noqa: E402
from sr.reproducibility import subprocess_environment  # noqa: E402

DEFAULT_IMAGE = REPO / "data" / "samples" / "heldout_pairs" / "lr" / "coffee.png"


def worker(args: argparse.Namespace) -> None:
    """One upscale into ``args.worker`` (8-bit PNG, and the float image beside it as ``.npy``); prints the sampling
    seconds."""
    pin_cpu_numerics()  # as the entry points do; a no-op in the rows that opt out and set the variables themselves
    # Imported after the pin: importing the models runs tensor operations, which fix ATen's kernels.
    import torch
    from hydra.utils import instantiate

    from sr.config import compose
    from sr.io import read_image, write_image
    from sr.pipelines import use_scheduler

    torch.use_deterministic_algorithms(args.deterministic == "on")
    # tile.size = the latent side (size * 4 / 8): one latent tile, the smallest run of the sampler
    cfg = compose("upscale", ["input=unset", "output=unset", "model=tiny", f"num_inference_steps={args.steps}",
                              f"tile.size={args.size // 2}", "progress=false"])
    pipe = use_scheduler(instantiate(cfg.model), instantiate(cfg.scheduler))
    pipe.set_progress_bar_config(disable=True)
    lr = read_image(args.image).image[None, :, :args.size, :args.size]
    started = time.perf_counter()
    image = pipe(lr, generator=torch.Generator().manual_seed(cfg.seed), output_type="pt",
                 **pipe.sampling_settings(cfg).arguments()).images[0]
    seconds = time.perf_counter() - started
    write_image(args.worker, image, overwrite=True)
    np.save(args.worker.with_suffix(".npy"), image.numpy())
    print(json.dumps({"seconds": seconds}))


def settings(base: dict[str, str]) -> list[tuple[str, dict[str, str], str]]:
    """``(row name, environment, deterministic on/off)``; the first row is the reference."""
    by_hand = {**base, **pinned_values(), PIN_SWITCH: "0"}  # the pins set before the process starts, not by it
    pinned = subprocess_environment(base)
    return [
        ("pinned (reference)", pinned, "on"),
        ("pinned, run again", pinned, "on"),
        ("pins set before start only (STABLESR_PIN_CPU=0)", by_hand, "on"),
        ("1 thread (STABLESR_CPU_THREADS=1)", subprocess_environment({**base, THREADS_VARIABLE: "1"}), "on"),
        ("ATEN_CPU_CAPABILITY=default", {**by_hand, "ATEN_CPU_CAPABILITY": "default"}, "on"),
        ("ONEDNN_MAX_CPU_ISA=SSE41", {**by_hand, "ONEDNN_MAX_CPU_ISA": "SSE41"}, "on"),
        ("MKL_CBWR unset", {key: value for key, value in by_hand.items() if key != "MKL_CBWR"}, "on"),
        ("deterministic algorithms off", pinned, "off"),
    ]


def compare(reference: np.ndarray, other: np.ndarray) -> tuple[int, float, float]:
    """Max |difference| in 8-bit levels, share of pixels with any channel different, PSNR (dB) between two 8-bit
    images ``[H, W, C]``."""
    difference = np.abs(reference.astype(np.int32) - other.astype(np.int32))
    mse = float(np.mean(difference.astype(np.float64) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    return int(difference.max()), float(np.any(difference > 0, axis=-1).mean()), psnr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="LR image (its top-left crop is used)")
    parser.add_argument("--size", type=int, default=32, help="side of the LR crop in px (a multiple of 4)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args)
    # The rows start from this environment without any pin, so a variable exported in the shell changes no row.
    base = {key: value for key, value in os.environ.items()
            if key not in pinned_values() and not key.startswith("STABLESR_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    started = time.perf_counter()
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, environment, deterministic) in enumerate(settings(base)):
            output = Path(folder) / f"{index}.png"
            command = [sys.executable, __file__, "--worker", str(output), "--deterministic", deterministic,
                       "--image", str(args.image), "--size", str(args.size), "--steps", str(args.steps)]
            result = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=REPO)
            if result.returncode != 0:
                sys.exit(f"{name}: the worker failed:\n{result.stderr[-3000:]}")
            seconds = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
            pixels, values = np.asarray(Image.open(output)), np.load(output.with_suffix(".npy"))
            if reference is None:
                reference, reference_values = pixels, values
            largest_float = float(np.abs(values.astype(np.float64) - reference_values).max())
            rows.append((name, *compare(reference, pixels), largest_float, seconds))
    print(f"{args.size}^2 px crop of {args.image.name} -> {4 * args.size}^2, tiny preset (random weights), "
          f"{args.steps} steps; pinned: {' '.join(f'{k}={v}' for k, v in pinned_values().items())}\n")
    print("| setting | max abs diff (8-bit levels) | pixels differing | PSNR vs pinned (dB) | max abs diff (float, "
          "[0, 1]) | sampling s |")
    print("|---|---|---|---|---|---|")
    for name, largest, share, psnr, largest_float, seconds in rows:
        print(f"| {name} | {largest} | {100 * share:.2f}% | {psnr:.2f} | {largest_float:.1e} | {seconds:.1f} |")
    print(f"\nreference pixels SHA-256: {hashlib.sha256(reference.tobytes()).hexdigest()}; "
          f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
