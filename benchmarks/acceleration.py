"""Seconds per image and peak memory of 4x upscales per precision and speed-up, side by side (not a test).

    .venv/bin/python benchmarks/acceleration.py [--device cpu] [--model tiny] [--sizes 256 512]
        [--dtypes float32 bfloat16] [--variants batched per_tile compiled channels_last] [--steps 3] [--budget 1800]
        [--compile-backend inductor] [--out <table.md>]

``benchmarks/gpu_check.sh`` runs it on one GPU with ``--device cuda --model sd21_base --sizes 512 2048 4096
--dtypes float32 float16``.

Every (variant, dtype) runs in a fresh process (clean peak-memory counters and compile caches) over the sizes in
increasing order; each size is one 4x upscale of a random ``size/4`` LR image to a ``size x size`` output with the
preset's settings and random weights (``sd21_base``: ``input_size`` 512, latent tiles 64 with overlap 32; ``tiny``:
tiles 32 with overlap 16; both: exact tiled VAE with 1024 px tiles, host-parked) and ``--steps`` denoising steps.
Variants: ``batched`` (4 latent tiles per UNet call, eager), ``per_tile`` (1 per call, eager), ``compiled`` (4 per
call, ``torch.compile`` of the UNet, one warm-up upscale of the same size first so compilation is not timed),
``channels_last`` (4 per call, eager, channels-last weights). Eager variants warm up once on a small image.
Peak memory: ``torch.cuda.max_memory_allocated`` over the timed upscale (on CPU: the peak RSS delta, ``VmHWM``).
Runs are launched in priority order (batched fp32/fp16 first) while ``--budget`` seconds remain; a run that does
not fit is listed as not run. Prints one table (markdown) and the ratios; ``--out`` also writes it.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# variant: (tiles per UNet call, torch.compile, channels-last)
VARIANTS = {"batched": (4, False, False), "per_tile": (1, False, False), "compiled": (4, True, False),
            "channels_last": (4, False, True)}


def peak_bytes_reset(device: str) -> int:
    """Reset the peak counter; return the memory in use now."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")


def build(model: str, dtype: str, device: str, steps: int, variant: str, backend: str):
    """The preset with random weights on ``device`` in ``dtype`` set up for ``variant``, and ``lr -> image``."""
    tile_batch, compile_unet, channels_last = VARIANTS[variant]
    from hydra.utils import instantiate

    from sr.commands.config import compose
    from sr.models.acceleration import accelerate

    cfg = compose("upscale", ["input=unset", "output=unset", f"model={model}", "model.pretrained=null",
                              f"model.torch_dtype={dtype}"])
    with torch.device(device):
        pipe = instantiate(cfg.model)
    pipe.set_progress_bar_config(disable=True)
    accelerate(pipe, compile=compile_unet, channels_last=channels_last, backend=backend)
    return lambda lr: pipe(lr.to(device), num_inference_steps=steps, tile={"batch_size": tile_batch},
                           generator=torch.Generator(device).manual_seed(0), output_type="pt").images


def child(args: argparse.Namespace) -> None:
    """One (variant, dtype) over all sizes; one JSON line per size."""
    compile_unet = VARIANTS[args.variant][1]
    upscale = build(args.model, args.dtype, args.device, args.steps, args.variant, args.compile_backend)
    if not compile_unet:
        upscale(torch.rand(1, 3, 32, 32))  # warm-up: kernels, allocator
    for size in args.sizes:
        lr = torch.rand(1, 3, size // 4, size // 4, generator=torch.Generator().manual_seed(0))
        warmup = 0.0
        if compile_unet:
            start = time.perf_counter()
            upscale(lr)
            warmup = time.perf_counter() - start
        before = peak_bytes_reset(args.device)
        start = time.perf_counter()
        image = upscale(lr)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = peak_bytes(args.device)
        assert image.shape[-2:] == (size, size), image.shape
        print(json.dumps({"size": size, "seconds": seconds, "peak": peak, "before": before, "warmup": warmup,
                          "finite": bool(torch.isfinite(image).all())}), flush=True)


def run_all(args: argparse.Namespace) -> list[dict]:
    deadline = time.monotonic() + args.budget
    rows = []
    order = [(variant, dtype) for variant in args.variants for dtype in args.dtypes]
    for variant, dtype in order:
        remaining = deadline - time.monotonic()
        if remaining < 20:
            rows += [{"variant": variant, "dtype": dtype, "size": size, "status": "not run (budget)"}
                     for size in args.sizes]
            continue
        command = [sys.executable, __file__, "--child", "--variant", variant, "--dtype", dtype, "--device", args.device,
                   "--model", args.model, "--steps", str(args.steps), "--compile-backend", args.compile_backend,
                   "--sizes", *map(str, args.sizes)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=remaining)
            stdout, status = result.stdout, ("ok" if result.returncode == 0 else f"failed (exit {result.returncode})")
            if result.returncode != 0:
                print(result.stderr[-2000:], file=sys.stderr)
        except subprocess.TimeoutExpired as timeout:
            stdout = (timeout.stdout or b"").decode() if isinstance(timeout.stdout, bytes) else (timeout.stdout or "")
            status = "timeout (budget)"
        done = {}
        for line in stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                done[row["size"]] = row
        for size in args.sizes:
            row = done.get(size, {"status": status if status != "ok" else "missing"})
            rows.append({"variant": variant, "dtype": dtype, "size": size, "status": row.get("status", "ok"), **row})
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    memory = "peak accelerator memory (max_memory_allocated)" if args.device.startswith("cuda") else \
        "peak RSS delta (VmHWM, CPU)"
    lines = [f"4x upscales, `{args.model}` random weights, {args.steps} steps, device {describe_device(args.device)}; "
             f"seconds per image and {memory}.", "",
             "| output | dtype | variant | s / image | peak GB | note |", "|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["size"], r["dtype"], r["variant"])):
        if row["status"] != "ok":
            lines.append(f"| {row['size']}^2 | {row['dtype']} | {row['variant']} | - | - | {row['status']} |")
            continue
        peak = row["peak"] - (0 if args.device.startswith("cuda") else row["before"])
        note = f"compile warm-up {row['warmup']:.1f} s" if row["warmup"] else ""
        note += "" if row["finite"] else " NON-FINITE OUTPUT"
        lines.append(f"| {row['size']}^2 | {row['dtype']} | {row['variant']} | {row['seconds']:.2f} | "
                     f"{peak / 2**30:.2f} | {note.strip()} |")
    seconds = {(r["size"], r["dtype"], r["variant"]): r["seconds"] for r in rows if r["status"] == "ok"}
    lines.append("")
    for size in args.sizes:
        ratios = []
        fp32, half = "float32", next((d for d in args.dtypes if d != "float32"), None)
        if half and (size, fp32, "batched") in seconds and (size, half, "batched") in seconds:
            ratios.append(f"{half} / float32 speed-up {seconds[(size, fp32, 'batched')] / seconds[(size, half, 'batched')]:.2f}x")
        for dtype in args.dtypes:
            if (size, dtype, "compiled") in seconds and (size, dtype, "batched") in seconds:
                ratios.append(f"compiled / eager ({dtype}) "
                              f"{seconds[(size, dtype, 'batched')] / seconds[(size, dtype, 'compiled')]:.2f}x")
            if (size, dtype, "channels_last") in seconds and (size, dtype, "batched") in seconds:
                ratios.append(f"channels-last / default ({dtype}) "
                              f"{seconds[(size, dtype, 'batched')] / seconds[(size, dtype, 'channels_last')]:.2f}x")
            if (size, dtype, "per_tile") in seconds and (size, dtype, "batched") in seconds:
                ratios.append(f"batched / per-tile ({dtype}) "
                              f"{seconds[(size, dtype, 'per_tile')] / seconds[(size, dtype, 'batched')]:.2f}x")
        if ratios:
            lines.append(f"- {size}^2: " + "; ".join(ratios))
    return "\n".join(lines) + "\n"


def describe_device(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} (torch {torch.__version__})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1800, help="seconds for all runs together")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: dry runs)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible (the CPU default is --device cpu --model tiny)")
    if args.child:
        child(args)
        return
    text = table(run_all(args), args)
    print(text)
    if args.out:
        from sr.io import write_bytes_atomic

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(args.out, text.encode(), overwrite=True)


if __name__ == "__main__":
    main()
