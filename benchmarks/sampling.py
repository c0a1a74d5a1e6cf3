"""Benchmark of progressive aggregation sampling and the any-size pipeline on the tiny preset (not a test).

    .venv/bin/python benchmarks/sampling.py [--steps 2] [--repeats 3] [--sizes 512 1024 2048] [--threads 2]
                                            [--vae-tile 256] [--memory-only | --skip-memory]

Prints, side by side:
1. batched tiles vs one tile per UNet call: time ratio (goal >= 1.3x on 2 CPU cores);
2. aggregation overhead: full ``sr.sampling.denoise`` time / time of the bare ``StableSR.predict`` calls on the
   same tile batches and steps (goal <= 1.05);
3. peak memory of a full 4x upscale to 512^2, 1024^2, 2048^2 outputs, each in a fresh process: peak RSS
   (``VmHWM``, reset via ``/proc/self/clear_refs`` after building and warming up the model) minus the RSS just
   before the upscale (Linux only). A least-squares fit
   ``delta = constant + bytes_per_pixel * output_pixels`` separates what the sampler/VAE tiles add (the constant,
   MB) from image-sized buffers (bytes per output pixel; one float32 RGB image is 12 B/px).
"""

import argparse
import ctypes
import ctypes.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
sys.path.insert(0, str(REPO))

from hydra.utils import instantiate  # noqa: E402

from sr.commands.config import compose  # noqa: E402
from sr.ops.tiling import TileGrid  # noqa: E402
from sr.pipelines import use_scheduler  # noqa: E402
from sr.sampling import TileFusion, denoise  # noqa: E402


def load(overrides: list[str]):
    """(run config, pipeline sampling with the config's scheduler) of ``conf/upscale.yaml`` + ``overrides``."""
    cfg = compose("upscale", ["input=unset", "output=unset", "model=tiny", "progress=false", *overrides])
    pipe = use_scheduler(instantiate(cfg.model), instantiate(cfg.scheduler))
    pipe.set_progress_bar_config(disable=True)
    return cfg, pipe


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bare_predict_time(model, z_lr: torch.Tensor, tile: int, overlap: int, batch: int, steps: int) -> float:
    """The same model.predict calls denoise makes (same tile batches, steps), with no aggregation or stepping."""
    fusion = TileFusion(TileGrid.build(*z_lr.shape[-2:], tile, overlap), z_lr, batch)
    x_batches = [lr_tiles.clone() for lr_tiles in fusion.lr_tile_batches]
    timestep = torch.tensor(999)

    def run():
        with torch.no_grad():
            for _ in range(steps):
                for x, lr_tiles in zip(x_batches, fusion.lr_tile_batches):
                    model.predict(x, timestep, lr_tiles)

    return timed(run)


def sampler_benchmark(steps: int, repeats: int) -> None:
    """Timings are the minimum over ``repeats`` interleaved runs: robust to other processes sharing the cores."""
    _, pipe = load([])
    model, tile = pipe.model, pipe.config.latent_tile
    overlap, side = tile // 2, 2 * tile  # 3 x 3 tiles
    z_lr = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
    tiles = len(TileGrid.build(side, side, tile, overlap))

    def sample(batch: int, num_steps: int) -> None:
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(num_steps)
        denoise(model.predict, scheduler, z_lr, tile, overlap, batch, "lr", torch.Generator().manual_seed(0))

    sample(tiles, 1)  # warm-up
    results = {batch: [float("inf"), float("inf")] for batch in (1, tiles)}
    for _ in range(repeats):
        for batch in results:
            full = timed(lambda: sample(batch, steps))
            bare = bare_predict_time(model, z_lr, tile, overlap, batch, steps)
            results[batch] = [min(results[batch][0], full), min(results[batch][1], bare)]
    print(f"latent {side}x{side}, tile {tile}, overlap {overlap} ({tiles} tiles), {steps} DDPM steps, "
          f"{torch.get_num_threads()} threads, min of {repeats} runs")
    print(f"{'tiles per call':>15} {'sample s':>10} {'bare predict s':>15} {'overhead':>9}")
    for batch, (full, bare) in results.items():
        print(f"{batch:>15} {full:>10.2f} {bare:>15.2f} {full / bare:>9.3f}")
    print(f"batched speed-up (1 tile per call / {tiles} per call): {results[1][0] / results[tiles][0]:.2f}x")


def proc_status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``: resident now, ``VmHWM``: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")


def fix_malloc_mmap_threshold(threshold: int = 128 * 1024) -> None:
    """Fix glibc's mmap threshold in this (child) process so that a measured peak is the live memory's.

    glibc raises its threshold after freeing an mmapped block (up to 32 MB), so later buffers below it come from the
    heap, where freed chunks are kept: the same 4x upscale to 512^2 then peaked 204-312 MB above its start from one
    fresh process to the next, against 182 MB +- 0.3 with the threshold fixed at glibc's default 128 KiB."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if libc.mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: not glibc?")


def memory_child(output_side: int, steps: int, vae_tile: int) -> None:
    fix_malloc_mmap_threshold()
    cfg, pipe = load([f"num_inference_steps={steps}", "tile.batch_size=4", f"vae_tile.size={vae_tile}",
                      "vae_tile.overlap=64"])
    settings = {**pipe.sampling_settings(cfg).arguments(), "output_type": "pt"}

    def upscaler(image, generator):
        return pipe(image, generator=generator, **settings).images

    upscaler(torch.rand(1, 3, 16, 16), torch.Generator().manual_seed(0))  # warm-up: allocator, kernels
    lr = torch.rand(1, 3, output_side // 4, output_side // 4, generator=torch.Generator().manual_seed(0))
    # Reset the kernel's peak-RSS mark (VmHWM) so model building and warm-up do not count.
    Path("/proc/self/clear_refs").write_text("5")
    before = proc_status_bytes("VmRSS")
    seconds = timed(lambda: upscaler(lr, torch.Generator().manual_seed(0)))
    peak = proc_status_bytes("VmHWM")
    print(json.dumps({"side": output_side, "before": before, "peak": peak, "seconds": seconds}))


def memory_benchmark(sizes: list[int], steps: int, vae_tile: int) -> None:
    rows = []
    for side in sizes:
        result = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(side), "--steps", str(steps),
             "--threads", str(torch.get_num_threads()), "--vae-tile", str(vae_tile)],
            capture_output=True, text=True, check=True,
        )
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"4x upscale, tiny preset, {steps} step(s), latent tiles 32 (overlap 16), VAE tiles {vae_tile} px; "
          "peak RSS delta = VmHWM during the upscale - RSS before it")
    print(f"{'output':>10} {'seconds':>8} {'RSS before MB':>14} {'peak delta MB':>14} {'delta B/px':>11}")
    deltas = []
    for row in rows:
        delta = max(row["peak"] - row["before"], 0)
        deltas.append(delta)
        pixels = row["side"] ** 2
        print(f"{row['side']:>5}^2 px {row['seconds']:>8.1f} {row['before'] / 2**20:>14.0f} {delta / 2**20:>14.0f} "
              f"{delta / pixels:>11.1f}")
    if len(rows) >= 2:
        pixels = torch.tensor([float(row["side"] ** 2) for row in rows], dtype=torch.float64)
        design = torch.stack([torch.ones_like(pixels), pixels], dim=1)
        solution = torch.linalg.lstsq(design, torch.tensor(deltas, dtype=torch.float64)[:, None]).solution[:, 0]
        print(f"fit: delta = {solution[0] / 2**20:.0f} MB + {solution[1]:.1f} B x output pixels "
              f"(one float32 RGB output image = 12 B/px)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--vae-tile", type=int, default=256, help="VAE tile side in pixels (vae_tile.size)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_child:
        memory_child(args.memory_child, args.steps, args.vae_tile)
        return
    if not args.memory_only:
        sampler_benchmark(args.steps, args.repeats)
    if not args.skip_memory:
        memory_benchmark(args.sizes, 1, args.vae_tile)


if __name__ == "__main__":
    main()
