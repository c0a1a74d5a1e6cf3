"""Images/second of the ``realesrgan`` degradation on CPU (512x512 crops, batch 8), next to Real-ESRGAN's own
per-batch procedure: ``realesrgan`` 0.3.0 ``RealESRGANModel.feed_data`` driven by a minimal CPU harness, with the
per-sample kernels made as its ``RealESRGANDataset.__getitem__`` makes them (timed too, as our pipeline draws its own).

    .venv/bin/pip install --no-deps realesrgan==0.3.0
    .venv/bin/python benchmarks/degradation.py [--iterations 3] [--threads 2]

Both sides use StableSR-512's numbers (docs/method.md#degradations); Real-ESRGAN additionally rounds the LR to 8 bit and sharpens the
GT a second time after its pool, which is part of its procedure.
"""

import argparse
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sr.commands.config import CONFIG_DIR
from sr.compat import basicsr  # noqa: F401  (must precede the realesrgan import: torchvision shim)

STABLESR_OPT = {
    "scale": 4, "gt_size": 512, "queue_size": 180,
    "resize_prob": [0.2, 0.7, 0.1], "resize_range": [0.3, 1.5], "gaussian_noise_prob": 0.5, "noise_range": [1, 15],
    "poisson_scale_range": [0.05, 2.0], "gray_noise_prob": 0.4, "jpeg_range": [60, 95],
    "second_blur_prob": 0.5, "resize_prob2": [0.3, 0.4, 0.3], "resize_range2": [0.6, 1.2],
    "gaussian_noise_prob2": 0.5, "noise_range2": [1, 12], "poisson_scale_range2": [0.05, 1.0],
    "gray_noise_prob2": 0.4, "jpeg_range2": [60, 100],
}
KERNEL_OPT = {
    "kernel_list": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03], "sinc_prob": 0.1, "blur_sigma": [0.2, 1.5],
    "blur_sigma2": [0.2, 1.0], "betag_range": [0.5, 2.0], "betap_range": [1, 1.5], "final_sinc_prob": 0.8,
}


def realesrgan_kernels() -> dict[str, torch.Tensor]:
    """Kernel part of ``RealESRGANDataset.__getitem__`` (basicsr generators, global RNG as in Real-ESRGAN)."""
    from sr.compat.basicsr import degradations

    def blur_kernel(sigma):
        size = random.choice(range(7, 22, 2))
        if np.random.uniform() < KERNEL_OPT["sinc_prob"]:
            omega = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
            kernel = degradations.circular_lowpass_kernel(omega, size, pad_to=False)
        else:
            kernel = degradations.random_mixed_kernels(
                KERNEL_OPT["kernel_list"], KERNEL_OPT["kernel_prob"], size, sigma, sigma, [-math.pi, math.pi],
                KERNEL_OPT["betag_range"], KERNEL_OPT["betap_range"], noise_range=None)
        pad = (21 - size) // 2
        return torch.FloatTensor(np.pad(kernel, ((pad, pad), (pad, pad))))

    if np.random.uniform() < KERNEL_OPT["final_sinc_prob"]:
        size = random.choice(range(7, 22, 2))
        sinc = torch.FloatTensor(degradations.circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), size, 21))
    else:
        sinc = torch.zeros(21, 21)
        sinc[10, 10] = 1
    return {"kernel1": blur_kernel(KERNEL_OPT["blur_sigma"]), "kernel2": blur_kernel(KERNEL_OPT["blur_sigma2"]),
            "sinc_kernel": sinc}


def realesrgan_model(batch_size: int, channels_gt: tuple[int, int, int], channels_lq: tuple[int, int, int]):
    """``RealESRGANModel`` without networks: the attributes ``feed_data`` uses, on the CPU."""
    from realesrgan.models.realesrgan_model import RealESRGANModel

    from sr.compat.basicsr import DiffJPEG, USMSharp

    model = RealESRGANModel.__new__(RealESRGANModel)
    model.opt, model.is_train, model.device = dict(STABLESR_OPT), True, torch.device("cpu")
    model.jpeger, model.usm_sharpener = DiffJPEG(differentiable=False), USMSharp()
    model.queue_size = STABLESR_OPT["queue_size"]
    # feed_data allocates its pool with .cuda(); pre-allocating it on the CPU is the only change
    model.queue_lr = torch.zeros(model.queue_size, *channels_lq)
    model.queue_gt = torch.zeros(model.queue_size, *channels_gt)
    model.queue_ptr = 0
    return model


def timed(function, iterations: int) -> float:
    function()  # warm-up
    start = time.perf_counter()
    for _ in range(iterations):
        function()
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    batch, size = args.batch_size, args.size
    coarse = torch.rand(batch, 3, size // 16, size // 16)
    gt = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)

    pipeline = instantiate(OmegaConf.load(CONFIG_DIR / "degradation" / "realesrgan.yaml"))
    generator = torch.Generator().manual_seed(0)
    ours = timed(lambda: pipeline(gt, generator), args.iterations)

    model = realesrgan_model(batch, (3, size, size), (3, size // 4, size // 4))

    def reference_step():
        kernels = [realesrgan_kernels() for _ in range(batch)]
        data = {"gt": gt, **{key: torch.stack([k[key] for k in kernels]) for key in kernels[0]}}
        model.feed_data(data)

    reference = timed(reference_step, args.iterations)
    print(f"batch {batch} x {size}^2 on CPU, {args.threads} threads, {args.iterations} timed iterations each")
    print(f"ours (sr.data realesrgan):           {batch / ours:7.3f} images/s  ({ours:.2f} s/batch)")
    print(f"Real-ESRGAN feed_data + its kernels: {batch / reference:7.3f} images/s  ({reference:.2f} s/batch)")
    print(f"speed ratio ours / Real-ESRGAN:      {reference / ours:7.2f}x")


if __name__ == "__main__":
    main()
