"""Memory and speed of the training stages and of inference per memory lever, FLOPs and roofline ratio (not a test).

    python benchmarks/full_size.py [--preset tiny|sd21_base|sd21_768v] [--crop 512] [--steps 3] [--threads N]
        [--levers none,unet_checkpointing,encoder_checkpointing,vae_checkpointing,sdpa,channels_last,bf16,all]
        (default: all of them, bf16 only where the device computes it natively)
        [--stages stage1,cfw,inference] [--tile 64] [--matmul-size 4096] [--measure-batches]

Random weights (``model.pretrained=null``), batch 1 unless said. Every (stage, lever) runs in a fresh child process
that reads its own peak: the RSS high-water mark (``VmHWM`` of ``/proc/self/status``, reset after the model is built
so the figure is the steps' peak; ``torch.cuda.max_memory_allocated`` instead on a GPU), the same peak over the memory
resident before the timed steps (model, optimizer state, inputs), and the median seconds per step after one warm-up
step. Stages:

- ``stage1``: one AdamW step of the stage-1 objective (``Stage1Module.stage1_loss``) on a ``--crop`` px batch;
- ``cfw``: one Adam step of the CFW generator loss at w = 1 (L1 + the STAND-IN perceptual net: LPIPS-VGG cannot be
  downloaded here, so its cost is not the real one) on a ``--crop`` px batch;
- ``inference``: one encoder + SFT + UNet call on a ``--tile`` latent tile (one sampling step of one tile).

Levers (``sr.models.memory``; ``bf16``: ``torch.autocast(bfloat16)``, what ``trainer.precision=bf16-mixed`` runs):
``none`` is every lever off with classic attention; each lever alone; ``all`` every lever that applies to the stage
(bf16 only where the device computes it natively: :func:`native_bf16`).
Then FLOPs (``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions) of one inference tile call and of
one training step, the machine's fp32 matmul peak (a timed ``--matmul-size`` square matmul, before and after the
runs, the better of the two) and the achieved FLOP/s of the all-off runs as a fraction of it, and a PROJECTION of the
largest stage-1 batch per GPU at 24/40/80 GB from the activation memory per sample (peak at batch 2 minus batch 1)
and the batch-1 peak. On a GPU, ``--measure-batches`` adds a measurement beside the projection: the largest batch
whose training step runs with the process's allocator capped at 24 / 40 / 80 GB
(``torch.cuda.set_per_process_memory_fraction``; caps above the card's memory are left out), found by doubling the
batch until it runs out of memory and bisecting.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGE_LEVERS = {
    "stage1": ("unet_checkpointing", "encoder_checkpointing", "sdpa", "channels_last", "bf16"),
    "cfw": ("vae_checkpointing", "sdpa", "channels_last", "bf16"),
    "inference": ("sdpa", "channels_last", "bf16"),
}
LEVER_SWITCHES = {
    "unet_checkpointing": {"gradient_checkpointing_unet": True},
    "encoder_checkpointing": {"gradient_checkpointing_encoder": True},
    "vae_checkpointing": {"gradient_checkpointing_vae": True},
    "sdpa": {"attention": "sdpa"},
    "channels_last": {"channels_last": True},
    "bf16": {},
}
ALL_LEVERS = ("none", *LEVER_SWITCHES, "all")
GPU_MEMORY_GB = (24, 40, 80)
GB = 1e9


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes in bf16 natively (a GPU; a CPU with AVX512-BF16 or AMX). Elsewhere autocast
    emulates it: a full-size stage-1 step took over 10 minutes instead of 73 s on this project's AVX2 machine."""
    return device.startswith("cuda") or torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def default_levers(device: str) -> str:
    """Every lever, bf16 only where :func:`native_bf16`: an emulated bf16 row would take most of the run."""
    return ",".join(lever for lever in ALL_LEVERS if lever != "bf16" or native_bf16(device))


def stage_levers(stage: str, lever: str, device: str) -> tuple[dict, bool]:
    """``module.memory`` switches and whether bf16 autocast is on, for ``lever`` in ``stage``; ``all`` leaves bf16
    out where it is emulated (:func:`native_bf16`)."""
    if lever == "all":
        names = tuple(name for name in STAGE_LEVERS[stage] if name != "bf16" or native_bf16(device))
    else:
        names = () if lever == "none" else (lever,)
    memory = {"attention": "classic"}
    for name in names:
        memory.update(LEVER_SWITCHES[name])
    return memory, "bf16" in names


def build(preset: str, stage: str, memory: dict, device: str):
    """The preset's model with random weights and ``memory`` levers, as its training module sets it up; and the
    module (``stage1``/``cfw``) or None."""
    from hydra.utils import instantiate

    from sr.commands.config import compose
    from sr.models.memory import apply_memory_levers, memory_levers
    from sr.training.losses import AutoencoderLoss
    from sr.training.stage1 import Stage1Module
    from sr.training.stage2 import CFWModule

    cfg = compose("upscale", ["input=unset", "output=unset", f"model={preset}", "model.pretrained=null"])
    pipe = instantiate(cfg.model).to(device)
    if stage == "stage1":
        return Stage1Module(pipe, memory=memory).to(device)
    if stage == "cfw":
        return CFWModule(pipe, AutoencoderLoss(perceptual="stand_in"), memory=memory).to(device)
    pipe.model.freeze_except(None)
    apply_memory_levers(pipe.model, memory_levers(memory))
    return pipe.model


def step_function(stage: str, module, crop: int, tile: int, batch: int, device: str, bf16: bool):
    """One step of ``stage`` (module docstring) as a closure; inputs fixed and random."""
    generator = torch.Generator().manual_seed(0)
    images = [(torch.rand(batch, 3, crop, crop, generator=generator) * 2 - 1).to(device) for _ in range(2)]
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
    if stage == "inference":
        x_t, z_lr = (torch.randn(batch, 4, tile, tile, generator=generator).to(device) for _ in range(2))
        timesteps = torch.full((batch,), 500, device=device)

        def inference():
            with torch.no_grad(), autocast:
                module.predict(x_t, timesteps, z_lr)
        return inference
    if stage == "stage1":
        optimizer = module.configure_optimizers()

        def loss():
            return module.stage1_loss(*images, torch.Generator().manual_seed(1))
    else:
        from sr.training.losses import Reconstruction

        optimizer = module.configure_optimizers()[0]
        module.loss.discriminator.requires_grad_(False)
        latent = torch.randn(batch, 4, crop // 8, crop // 8, generator=generator).to(device)

        def loss():
            with torch.no_grad():
                features = module.model.autoencoder.encode(images[0]).features
            output = module.model.decode(latent, features, w=1.0)
            return module.loss.generator_loss(images[1], Reconstruction(output), step=0)[0]

    def train_step():
        with autocast:
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train_step


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(args) -> dict:
    """Measure one (stage, lever, batch) in this process; the parent starts one process per configuration."""

    # benchmarks/acceleration.py, beside this file
    from acceleration import peak_bytes, peak_bytes_reset

    torch.set_num_threads(args.threads)
    stage, lever, batch = args.child.split(":")
    if batch == "search":
        return {"stage": stage, "lever": lever, "batches": measured_batches(args, stage, lever)}
    memory, bf16 = stage_levers(stage, lever, args.device)
    module = build(args.preset, stage, memory, args.device)
    step = step_function(stage, module, args.crop, args.tile, int(batch), args.device, bf16)
    step()  # warm-up: allocator, optimizer state, kernels
    synchronize(args.device)
    before = peak_bytes_reset(args.device)
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        synchronize(args.device)
        seconds.append(time.perf_counter() - start)
    peak = peak_bytes(args.device)
    return {"stage": stage, "lever": lever, "batch": int(batch), "seconds": statistics.median(seconds),
            "peak_bytes": peak, "before_bytes": before}


def run_child(args, stage: str, lever: str, batch: int | str = 1) -> dict:
    command = [sys.executable, __file__, "--child", f"{stage}:{lever}:{batch}", "--preset", args.preset,
               "--crop", str(args.crop), "--steps", str(args.steps), "--threads", str(args.threads),
               "--tile", str(args.tile), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"full_size: {stage}/{lever} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def flops(args, stages: list[str]) -> dict[str, int]:
    """FLOPs of one inference tile call and of one stage-1 training step (all levers off), batch 1, for those of
    them in ``stages``."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    counted = {}
    for stage in [stage for stage in ("inference", "stage1") if stage in stages]:
        memory, _ = stage_levers(stage, "none", args.device)
        step = step_function(stage, build(args.preset, stage, memory, args.device), args.crop, args.tile, 1,
                             args.device, False)
        with FlopCounterMode(display=False) as counter:
            step()
        counted[stage] = counter.get_total_flops()
    return counted


def matmul_peak(size: int, device: str, threads: int) -> float:
    """FLOP/s of a timed fp32 ``size x size`` matmul (``2 size^3`` FLOPs), best of 5 after a warm-up."""
    torch.set_num_threads(threads)
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    a @ b
    best = math.inf
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def fits(args, module, stage: str, batch: int, bf16: bool) -> bool:
    """Whether one training step at ``batch`` runs within the allocator's cap."""
    try:
        step_function(stage, module, args.crop, args.tile, batch, args.device, bf16)()
        synchronize(args.device)
        return True
    except RuntimeError as error:  # torch.OutOfMemoryError is one; so are allocator failures reported as text
        if not isinstance(error, torch.OutOfMemoryError) and "out of memory" not in str(error).lower():
            raise
        return False
    finally:
        module.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def measured_batches(args, stage: str, lever: str, limit: int = 1024) -> dict[int, int]:
    """MEASURED on a GPU: the largest batch whose ``stage`` step fits each cap of :data:`GPU_MEMORY_GB` that the card
    has, raising the cap in order so each search starts at the last fitting batch."""
    torch.set_num_threads(args.threads)
    memory, bf16 = stage_levers(stage, lever, args.device)
    module = build(args.preset, stage, memory, args.device)
    total = torch.cuda.get_device_properties(args.device).total_memory
    largest, found = 0, {}
    for gb in GPU_MEMORY_GB:
        if gb * GB > total:
            continue
        torch.cuda.set_per_process_memory_fraction(gb * GB / total, args.device)
        low, high = largest, None  # low fits (0: nothing known), high does not
        batch = max(1, 2 * largest)
        while high is None and batch <= limit:
            if fits(args, module, stage, batch, bf16):
                low, batch = batch, 2 * batch
            else:
                high = batch
        high = high or limit + 1
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(args, module, stage, middle, bf16) else (low, middle)
        found[gb] = largest = low
    return found


def largest_batch(memory_gb: float, peak_batch1: float, per_sample: float) -> int:
    """PROJECTION: ``floor((memory - (peak_1 - per_sample)) / per_sample)``, the batch whose projected peak fits."""
    if per_sample <= 0:
        return 0
    return max(0, math.floor((memory_gb * GB - (peak_batch1 - per_sample)) / per_sample))


class PrintedLines(list):
    """The report's lines, each printed as it is added: a run stopped by a time budget keeps what it measured."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)

    def __iadd__(self, lines):
        for line in lines:
            self.append(line)
        return self


def report(args) -> str:
    levers = [lever for lever in args.levers.split(",") if lever]
    unknown = sorted(set(levers) - set(ALL_LEVERS))
    if unknown:
        raise SystemExit(f"full_size: unknown lever {unknown[0]!r}; expected some of {','.join(ALL_LEVERS)}")
    stages = [stage for stage in args.stages.split(",") if stage]
    if not stages or set(stages) - set(STAGE_LEVERS):
        raise SystemExit(f"full_size: --stages takes some of {','.join(STAGE_LEVERS)}, got {args.stages!r}")
    lines = PrintedLines()
    lines += [(f"preset `{args.preset}`, device {args.device}, crop {args.crop} px, latent tile {args.tile}, "
              f"{args.threads} threads, median of {args.steps} steps, batch 1, random weights"), ""]
    results = {}
    # before and after the runs, the best of both: a busy moment must not lower the roofline
    peak = matmul_peak(args.matmul_size, args.device, args.threads)
    for stage, applicable in [(stage, STAGE_LEVERS[stage]) for stage in stages]:
        unit = "s per tile step" if stage == "inference" else "s per step"
        lines += [f"### {stage}", "", (f"| lever | peak memory (MB) | step peak over resident (MB) | {unit} | "
                                       "memory vs none | time vs none |"), "|---|---|---|---|---|---|"]
        for lever in [lever for lever in levers if lever in ("none", "all") or lever in applicable]:
            results[stage, lever] = result = run_child(args, stage, lever)
            none = results.get((stage, "none"), result)
            step_peak = result["peak_bytes"] - result["before_bytes"]
            lines.append(f"| {lever} | {result['peak_bytes'] / 1e6:.1f} | {step_peak / 1e6:.1f} | "
                         f"{result['seconds']:.4f} | {result['peak_bytes'] / none['peak_bytes']:.3f} | "
                         f"{result['seconds'] / none['seconds']:.3f} |")
        lines.append("")

    counted = flops(args, stages)
    peak = max(peak, matmul_peak(args.matmul_size, args.device, args.threads))
    lines += ["### FLOPs and roofline ratio (all levers off, fp32)", "",
              f"measured fp32 matmul peak ({args.matmul_size}^2): {peak / 1e9:.2f} GFLOP/s", "",
              "| call | GFLOP | s | achieved GFLOP/s | fraction of matmul peak |", "|---|---|---|---|---|"]
    for stage, label in (("inference", f"encoder + SFT + UNet, {args.tile}x{args.tile} latent tile"),
                         ("stage1", f"stage-1 training step, {args.crop} px")):
        if (stage, "none") in results:
            seconds = results[stage, "none"]["seconds"]
            achieved = counted[stage] / seconds
            lines.append(f"| {label} | {counted[stage] / 1e9:.3f} | {seconds:.4f} | {achieved / 1e9:.2f} | "
                         f"{achieved / peak:.3f} |")
    lines.append("")

    if "stage1" not in stages:
        return "\n".join(lines)
    if args.measure_batches:
        lines += ["### MEASURED: largest stage-1 batch per GPU memory cap", "",
                  "| levers | " + " | ".join(f"{gb} GB" for gb in GPU_MEMORY_GB) + " |",
                  "|---|" + "---|" * len(GPU_MEMORY_GB)]
        for lever in [lever for lever in ("none", "all") if lever in levers]:
            found = {int(gb): n for gb, n in run_child(args, "stage1", lever, batch="search")["batches"].items()}
            lines.append(f"| {lever} | " + " | ".join(str(found.get(gb, "n/a (card smaller)"))
                                                       for gb in GPU_MEMORY_GB) + " |")
        lines.append("")
    lines += ["### PROJECTION: largest stage-1 batch per GPU (from measured activation memory per sample)", "",
              "| levers | peak batch 1 (MB) | per sample (MB) | " + " | ".join(f"{gb} GB" for gb in GPU_MEMORY_GB)
              + " |", "|---|---|---|" + "---|" * len(GPU_MEMORY_GB)]
    for lever in [lever for lever in ("none", "all") if lever in levers]:
        one, two = results["stage1", lever], run_child(args, "stage1", lever, batch=2)
        per_sample = two["peak_bytes"] - one["peak_bytes"]
        batches = [largest_batch(gb, one["peak_bytes"], per_sample) for gb in GPU_MEMORY_GB]
        lines.append(f"| {lever} | {one['peak_bytes'] / 1e6:.1f} | {per_sample / 1e6:.1f} | "
                     + " | ".join(str(b) for b in batches) + " |")
    lines += ["", ("The projection assumes memory grows linearly with the batch from the measured batch-1 and "
                   "batch-2 peaks; on the CPU the peak is the process RSS, on a GPU the allocator's peak.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd21_base", choices=("tiny", "sd21_base", "sd21_768v"))
    parser.add_argument("--crop", type=int, default=512, help="training crop side in pixels")
    parser.add_argument("--tile", type=int, default=64, help="inference latent tile side")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--levers", help="default: every lever, bf16 only where native (default_levers); naming "
                        "bf16 measures it anyway")
    parser.add_argument("--stages", default=",".join(STAGE_LEVERS), help="some of stage1,cfw,inference")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--measure-batches", action="store_true",
                        help="GPU only: measure the largest stage-1 batch under 24/40/80 GB caps (module docstring)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_batches and not args.device.startswith("cuda"):
        raise SystemExit("full_size: --measure-batches needs a CUDA device (on the CPU the table is projected)")
    if args.crop % 64 or args.crop <= 0:
        raise SystemExit(f"full_size: --crop must be a positive multiple of 64, got {args.crop}")
    if args.levers is None:
        args.levers = default_levers(args.device)
    if args.child:
        print(json.dumps(child(args)))
        return
    report(args)


if __name__ == "__main__":
    main()
