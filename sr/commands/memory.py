"""Peak memory of one upscale, estimated before the image is read, and the memory available for it.

The estimate is the memory an upscale adds on top of the loaded model (bytes, ``b`` = bytes per element of the
model's dtype)::

    P   = Hp * Wp             padded working image (sides rounded up to 64 px), the size the VAE sees
    V   = pixels the VAE runs on at once: P when one VAE tile covers the image, or when the exact tiled VAE
          (``vae_tile.mode``) runs on the CPU (it parks up to three whole activation maps in host memory, which is
          then the device's); else (estimate mode, or an accelerator) at most the estimate mode's GroupNorm
          statistics pass (the image scaled to at most STATS_SIDE px on its long side) plus one tile with its halo,
          (min(vae_tile, Hp) + 2 halo) * (min(vae_tile, Wp) + 2 halo)
    T   = tile.batch_size * tile.size^2                    latent pixels of one UNet call

    peak = IMAGE_COPIES * 3 * 4 * P                        float32 RGB buffers: upsampled, padded, decoded, colour fix
         + b * P * (c1 / 4 + c2 / 16)                      CFW encoder features f1 (H/2, c1 ch.) and f2 (H/4, c2 ch.)
         + VAE_ACTIVATIONS * c0 * b * V                    VAE activations at full resolution (c0 channels)
         + UNET_ACTIVATIONS * u0 * b * T                   UNet activations of one tile batch (u0 channels)
         + LATENT_COPIES * 4 * 4 * P / 64                  float32 latents (sample, LR latent, accumulators)
         + RUNTIME_OVERHEAD                                allocator slack, kernels' scratch buffers

``c0, c1, c2``: the VAE's ``block_out_channels``; ``u0``: the UNet's first ``block_out_channels``. The constants
count the live tensors of each kind at the peak. Measured on the ``tiny`` preset (float32, CPU, 1 step, peak RSS of
a fresh process above the RSS before the call, as ``benchmarks/sampling.py --memory-child`` measures it, with glibc's
mmap threshold fixed so that the peak is the live memory's): 4x upscales to 256^2 / 512^2 / 1024^2 took 45 / 182 /
710 MB with the default untiled VAE and 46 / 157 / 494 MB with 256 px exact VAE tiles (estimates 133 / 305 / 991 MB
for both). With glibc's default, dynamic threshold, heap fragmentation comes on top and varies from one process to the
next: the 512^2 case peaked 204-312 MB above its start in fresh processes, up to 2 % above its estimate. An earlier
measurement with 256 px tiles in estimate mode, under the default threshold, took 97 / 472 / 828 MB (estimates 133 /
380 / 1066 MB). ``tests/test_faults.py`` measures the default 512^2 case again and checks
``measured <= estimate <= ESTIMATE_MARGIN * measured``. The guard of ``sr.commands.upscale_folder``
skips an image whose estimate exceeds :func:`available_memory` or ``max_memory``, naming the settings that lower the
estimate (:func:`memory_levers`).
"""

import os
import resource
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import torch

from sr.sampling import output_size, round_up, working_scale

PIXEL_PAD_MULTIPLE = 64
STATS_SIDE = 1024          # long side of the tiled VAE's GroupNorm statistics pass (sr.models.tiled_vae)
VAE_HALO = 32              # tiled VAE halo in pixels (sr.models.tiled_vae.tiled_encode)
IMAGE_COPIES = 8
VAE_ACTIVATIONS = 6
UNET_ACTIVATIONS = 24
LATENT_COPIES = 12
RUNTIME_OVERHEAD = 64 * 1024**2
ESTIMATE_MARGIN = 2.0
CGROUP_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current"))


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of one upscale (``total``) and its terms, plus the output size it was made for."""

    total: int
    terms: dict[str, int]
    output_height: int
    output_width: int


def estimate_peak(
    height: int, width: int, *, scale: float, input_size: int | None, vae_tile: int, vae_tile_mode: str,
    vae_channels: list[int], unet_channels: int, tile_size: int, tile_batch_size: int,
    dtype: torch.dtype = torch.float32, on_host: bool = True,
) -> MemoryEstimate:
    """The module docstring's formula for an ``height x width`` input upscaled by ``scale`` with the tiled VAE in
    ``vae_tile_mode`` (``on_host``: the upscale runs on the CPU)."""
    element = torch.empty((), dtype=dtype).element_size()
    work = output_size(height, width, working_scale(height, width, scale, input_size))
    padded = [round_up(side, PIXEL_PAD_MULTIPLE) for side in work]
    pixels = padded[0] * padded[1]
    if max(padded) <= vae_tile or (on_host and vae_tile_mode == "exact"):
        vae_pixels = pixels
    else:
        tile_pixels = (min(vae_tile, padded[0]) + 2 * VAE_HALO) * (min(vae_tile, padded[1]) + 2 * VAE_HALO)
        reduction = min(1.0, STATS_SIDE / max(padded))
        vae_pixels = tile_pixels + round(padded[0] * reduction) * round(padded[1] * reduction)
    c0, c1, c2 = vae_channels[0], vae_channels[1], vae_channels[min(2, len(vae_channels) - 1)]
    terms = {
        "images": IMAGE_COPIES * 3 * 4 * pixels,
        "cfw_features": int(element * pixels * (c1 / 4 + c2 / 16)),
        "vae": VAE_ACTIVATIONS * c0 * element * vae_pixels,
        "unet": UNET_ACTIVATIONS * unet_channels * element * tile_batch_size * tile_size**2,
        "latents": LATENT_COPIES * 4 * 4 * pixels // 64,
        "runtime": RUNTIME_OVERHEAD,
    }
    target = output_size(height, width, scale)
    return MemoryEstimate(sum(terms.values()), terms, target[0], target[1])


def estimate_upscale_peak(pipe, settings, height: int, width: int) -> MemoryEstimate:
    """:func:`estimate_peak` for a ``StableSRPipeline`` call with resolved ``SamplingSettings``."""
    return estimate_peak(
        height, width, scale=settings.scale, input_size=settings.input_size, vae_tile=settings.vae_tile.size,
        vae_tile_mode=settings.vae_tile.mode, vae_channels=list(pipe.vae.config.block_out_channels),
        unet_channels=pipe.unet.config.block_out_channels[0],
        tile_size=settings.tile.size, tile_batch_size=settings.tile.batch_size, dtype=pipe.vae.dtype,
        on_host=next(pipe.vae.parameters()).device.type == "cpu",
    )


def memory_levers(pipe, settings, height: int, width: int) -> list[tuple[str, MemoryEstimate]]:
    """The setting changes that lower :func:`estimate_upscale_peak` for this upscale, lowest estimate first, each as
    ``(override, estimate with it)``. Candidates, each kept only when the formula says it helps:
    ``vae_tile.mode=estimate`` (on the CPU the exact mode holds whole activation maps), half the ``vae_tile.size``
    (the VAE term where tiles are in use), ``tile.batch_size=1`` (the UNet term) and half the ``scale`` (every
    per-pixel term)."""
    current = estimate_upscale_peak(pipe, settings, height, width).total
    candidates = {"vae_tile.mode=estimate": replace(settings, vae_tile=replace(settings.vae_tile, mode="estimate")),
                  "tile.batch_size=1": replace(settings, tile=replace(settings.tile, batch_size=1)),
                  f"scale={settings.scale / 2:g}": replace(settings, scale=settings.scale / 2)}
    half_tile = settings.vae_tile.size // 2
    if half_tile >= PIXEL_PAD_MULTIPLE and half_tile % PIXEL_PAD_MULTIPLE == 0:
        candidates[f"vae_tile.size={half_tile}"] = replace(settings, vae_tile=replace(settings.vae_tile,
                                                                                         size=half_tile))
    levers = [(override, estimate_upscale_peak(pipe, changed, height, width)) for override, changed in
              candidates.items()]
    return sorted(((override, estimate) for override, estimate in levers if estimate.total < current),
                  key=lambda lever: lever[1].total)


def _cgroup_headroom() -> int | None:
    limit_file, current_file = CGROUP_FILES
    try:
        limit = limit_file.read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(current_file.read_text().strip())
    except (OSError, ValueError):
        return None


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes an upscale on ``device`` can still allocate.

    CUDA: free device memory plus what PyTorch's allocator holds but does not use. CPU: the smallest of the
    system's available memory, the container's cgroup headroom (``memory.max - memory.current``) and the address
    space left under ``ulimit -v``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    candidates = [psutil.virtual_memory().available]
    if (headroom := _cgroup_headroom()) is not None:
        candidates.append(headroom)
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        candidates.append(soft - psutil.Process(os.getpid()).memory_info().vms)
    return max(0, min(candidates))


def format_bytes(count: int) -> str:
    """``"1.5 GB"`` (binary units, as ``max_memory`` reads them)."""
    for unit, size in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"
