"""Batched, seeded image degradation pipelines (Real-ESRGAN second-order model as configured by StableSR, docs/method.md#training-data, docs/method.md#degradations).

A pipeline is a list of *stages*; each stage maps ``(image [B,3,h,w], context, generator) -> image`` and is built by
Hydra from a ``_target_`` entry, so a new pipeline is a new YAML file in ``conf/degradation/``.

Randomness: every stage draws its parameters from a ``numpy.random.Generator`` seeded from the caller's
``torch.Generator`` (one 63-bit draw per stage call) and its noise fields from the ``torch.Generator`` itself, so one
seed gives the same LR bit for bit and no global RNG (torch, numpy, ``random``) is read or changed. Which draws are
per batch and which per sample follows docs/method.md#degradations: per batch = resize direction/factor/interpolation, Gaussian-vs-Poisson,
the second-blur coin and the sinc/JPEG order coin; per sample = kernels, noise sigma/scale, gray flag, JPEG quality.

LR size: ``(floor(H / scale), floor(W / scale))`` for a GT of ``H x W`` (Real-ESRGAN's ``ori_h // scale`` for integer
scales, extended to non-integer ones).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import rgb_to_grayscale

from sr.compat.basicsr import DiffJPEG, USMSharp, filter2D
from sr.data.kernels import delta_kernel, pad_kernel, random_mixed_kernel, random_sinc_kernel

INTERPOLATION_MODES = ("area", "bilinear", "bicubic")
REAL_ESRGAN_KERNEL_SIZES = tuple(range(7, 22, 2))


@dataclass(frozen=True)
class DegradationContext:
    """What every stage may need besides the image: the GT size and the overall scale factor."""

    gt_size: tuple[int, int]
    scale: float

    @property
    def target_size(self) -> tuple[int, int]:
        """Final LR size ``(floor(H / scale), floor(W / scale))``."""
        return lr_size(self.gt_size, self.scale)


def lr_size(gt_size: Sequence[int], scale: float) -> tuple[int, int]:
    """``(floor(H / scale), floor(W / scale))``; raises if that is empty."""
    height, width = (int(gt_size[0] / scale), int(gt_size[1] / scale))
    if height < 1 or width < 1:
        raise ValueError(f"GT of size {tuple(gt_size)} is too small for scale {scale}")
    return height, width


def numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded by one draw from ``generator`` (advances it by one step)."""
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item()
    return np.random.default_rng(seed)


def _check_probabilities(name: str, probabilities: Sequence[float], count: int) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (count,) or (probabilities < 0).any() or not math.isclose(probabilities.sum(), 1.0):
        raise ValueError(f"{name} must be {count} non-negative numbers summing to 1, got {list(probabilities)}")
    return probabilities


def _check_range(name: str, value_range: Sequence[float]) -> tuple[float, float]:
    if len(value_range) != 2 or value_range[0] > value_range[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(value_range)}")
    return float(value_range[0]), float(value_range[1])


def _check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    unknown = [mode for mode in modes if mode not in INTERPOLATION_MODES]
    if not modes or unknown:
        raise ValueError(f"interpolation modes must be a non-empty subset of {INTERPOLATION_MODES}, got {list(modes)}")
    return tuple(modes)


def _resize(image: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool = False) -> torch.Tensor:
    if mode == "area":
        return F.interpolate(image, size=size, mode="area")
    return F.interpolate(image, size=size, mode=mode, align_corners=False, antialias=antialias)


class USMSharpen:
    """Unsharp masking of the GT, basicsr ``USMSharp.forward``: with ``B = G * I`` (``G`` the ``radius``² Gaussian of
    ``USMSharp``, cv2 sigma rule for sigma 0) and the soft mask ``m = G * [|I - B| * 255 > threshold]``,
    ``out = m * clip(I + weight (I - B), 0, 1) + (1 - m) * I``.

    StableSR-512 uses the sharpened GT both as degradation source and as training target. The Gaussian is passed to
    ``filter2D`` once per sample: that takes basicsr's grouped-convolution path, which gives the same numbers as the
    shared-kernel path and is about 5x faster on CPU.
    """

    def __init__(self, radius: int = 51, weight: float = 0.5, threshold: float = 10.0):
        self.weight = weight
        self.threshold = threshold
        self.kernel = USMSharp(radius=radius, sigma=0).kernel  # [1, radius, radius], sums to 1

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.to(image).expand(image.shape[0], -1, -1)
        residual = image - filter2D(image, kernel)
        mask = (torch.abs(residual) * 255 > self.threshold).to(image.dtype)
        soft_mask = filter2D(mask, kernel)
        sharp = torch.clamp(image + self.weight * residual, 0, 1)
        return soft_mask * sharp + (1 - soft_mask) * image


class RandomBlur:
    """Per-sample random blur (Real-ESRGAN's kernel1/kernel2), applied with probability ``apply_prob`` per batch.

    Each sample gets a kernel of odd size drawn uniformly from ``kernel_sizes``: with probability ``sinc_prob`` a sinc
    (see :mod:`sr.data.kernels`), otherwise a mixed Gaussian-family kernel; all are zero-padded to ``pad_to``² and
    applied with basicsr's reflect-padded ``filter2D``.
    """

    def __init__(
        self,
        kernel_list: Sequence[str],
        kernel_prob: Sequence[float],
        blur_sigma: Sequence[float],
        betag_range: Sequence[float],
        betap_range: Sequence[float],
        sinc_prob: float,
        kernel_sizes: Sequence[int] = REAL_ESRGAN_KERNEL_SIZES,
        pad_to: int = 21,
        apply_prob: float = 1.0,
    ):
        self.kernel_list = tuple(kernel_list)
        self.kernel_prob = _check_probabilities("kernel_prob", kernel_prob, len(self.kernel_list))
        self.blur_sigma = _check_range("blur_sigma", blur_sigma)
        self.betag_range = _check_range("betag_range", betag_range)
        self.betap_range = _check_range("betap_range", betap_range)
        self.sinc_prob = sinc_prob
        self.kernel_sizes = tuple(kernel_sizes)
        if any(size % 2 == 0 or size > pad_to for size in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd and <= pad_to={pad_to}, got {list(self.kernel_sizes)}")
        self.pad_to = pad_to
        self.apply_prob = apply_prob

    def sample_kernel(self, rng: np.random.Generator) -> np.ndarray:
        """One unpadded kernel (size from ``kernel_sizes``, sums to 1)."""
        kernel_size = int(rng.choice(self.kernel_sizes))
        if rng.uniform() < self.sinc_prob:
            return random_sinc_kernel(rng, kernel_size)
        return random_mixed_kernel(
            rng, kernel_size, self.kernel_list, self.kernel_prob, self.blur_sigma, self.betag_range, self.betap_range
        )

    def __call__(self, image: torch.Tensor, context: DegradationContext, generator: torch.Generator) -> torch.Tensor:
        rng = numpy_rng(generator)
        if rng.uniform() >= self.apply_prob:
            return image
        kernels = np.stack([pad_kernel(self.sample_kernel(rng), self.pad_to) for _ in range(image.shape[0])])
        return apply_kernels(image, kernels)


class RandomSincFilter:
    """Real-ESRGAN's final sinc filter: per sample, with probability ``prob`` a sinc of random odd size from
    ``kernel_sizes`` and cutoff ``U[cutoff_range]`` (padded to ``pad_to``), otherwise the identity."""

    def __init__(
        self,
        prob: float,
        kernel_sizes: Sequence[int] = REAL_ESRGAN_KERNEL_SIZES,
        cutoff_range: Sequence[float] = (math.pi / 3, math.pi),
        pad_to: int = 21,
    ):
        self.prob = prob
        self.kernel_sizes = tuple(kernel_sizes)
        self.cutoff_range = _check_range("cutoff_range", cutoff_range)
        self.pad_to = pad_to

    def sample_kernel(self, rng: np.random.Generator) -> np.ndarray:
        """One ``pad_to``² kernel: a padded sinc or the delta."""
        if rng.uniform() < self.prob:
            kernel_size = int(rng.choice(self.kernel_sizes))
            return pad_kernel(random_sinc_kernel(rng, kernel_size, self.cutoff_range), self.pad_to)
        return delta_kernel(self.pad_to)

    def __call__(self, image: torch.Tensor, context: DegradationContext, generator: torch.Generator) -> torch.Tensor:
        rng = numpy_rng(generator)
        kernels = np.stack([self.sample_kernel(rng) for _ in range(image.shape[0])])
        return apply_kernels(image, kernels)


class RandomResize:
    """Per-batch random resize: direction up/down/keep with ``resize_prob``, factor ``U[1, hi]`` (up) or
    ``U[lo, 1]`` (down) for ``resize_range = [lo, hi]``, interpolation drawn uniformly from ``modes``.

    ``reference="input"`` scales the current image (first stage: ``scale_factor=s``); ``reference="target"`` resizes
    to ``(int(H / scale * s), int(W / scale * s))`` of the GT size (Real-ESRGAN's second stage).
    """

    def __init__(
        self,
        resize_prob: Sequence[float],
        resize_range: Sequence[float],
        modes: Sequence[str] = INTERPOLATION_MODES,
        reference: str = "input",
    ):
        self.resize_prob = _check_probabilities("resize_prob (up, down, keep)", resize_prob, 3)
        self.resize_range = _check_range("resize_range", resize_range)
        if not self.resize_range[0] <= 1.0 <= self.resize_range[1]:
            raise ValueError(f"resize_range must contain 1, got {list(resize_range)}")
        self.modes = _check_modes(modes)
        if reference not in ("input", "target"):
            raise ValueError(f"reference must be 'input' or 'target', got {reference!r}")
        self.reference = reference

    def sample(self, rng: np.random.Generator) -> tuple[float, str]:
        """``(factor, interpolation mode)`` for one batch."""
        direction = rng.choice(3, p=self.resize_prob)
        if direction == 0:
            factor = rng.uniform(1.0, self.resize_range[1])
        elif direction == 1:
            factor = rng.uniform(self.resize_range[0], 1.0)
        else:
            factor = 1.0
        return float(factor), self.modes[rng.choice(len(self.modes))]

    def __call__(self, image: torch.Tensor, context: DegradationContext, generator: torch.Generator) -> torch.Tensor:
        factor, mode = self.sample(numpy_rng(generator))
        if self.reference == "input":
            size = (int(image.shape[-2] * factor), int(image.shape[-1] * factor))
        else:
            height, width = context.gt_size
            size = (int(height / context.scale * factor), int(width / context.scale * factor))
        return _resize(image, (max(size[0], 1), max(size[1], 1)), mode)


class ResizeToTarget:
    """Resize to the final LR size with an interpolation drawn uniformly (per batch) from ``modes``.

    ``antialias=True`` low-passes before bilinear/bicubic downscaling (PIL/MATLAB-style ``imresize``)."""

    def __init__(self, modes: Sequence[str] = INTERPOLATION_MODES, antialias: bool = False):
        self.modes = _check_modes(modes)
        self.antialias = antialias

    def __call__(self, image: torch.Tensor, context: DegradationContext, generator: torch.Generator) -> torch.Tensor:
        mode = self.modes[numpy_rng(generator).choice(len(self.modes))]
        return _resize(image, context.target_size, mode, antialias=self.antialias)


def apply_kernels(image: torch.Tensor, kernels: np.ndarray) -> torch.Tensor:
    """Per-sample ``filter2D`` with ``kernels`` [B, k, k] (odd k, centred, zero-padded).

    The all-zero border shared by the batch is trimmed first (same result, less work). Images no larger than the
    kernel radius cannot be reflect-padded; for them the kernels are cut to ``2 min(h, w) - 1`` taps and
    renormalised to sum 1 (only tiny demo crops reach this)."""
    centre = kernels.shape[-1] // 2
    rows, cols = np.nonzero(np.abs(kernels).sum(axis=0))
    support = int(max(np.abs(rows - centre).max(), np.abs(cols - centre).max()))
    radius = min(support, min(image.shape[-2:]) - 1)
    kernels = kernels[:, centre - radius : centre + radius + 1, centre - radius : centre + radius + 1]
    if radius < support:
        kernels = kernels / kernels.sum(axis=(1, 2), keepdims=True)
    return filter2D(image, torch.from_numpy(np.ascontiguousarray(kernels)).to(image))


def gaussian_noise(
    image: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Noise ``n = sigma / 255 * z``, ``z ~ N(0, 1)`` per pixel and channel, or one ``z`` shared by the three
    channels where ``gray`` (basicsr ``generate_gaussian_noise_pt``; here each gray sample gets its own field)."""
    batch, channels, height, width = image.shape
    shape = (batch, channels, height, width)
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=image.dtype).to(image.device)
    if gray.any():
        gray_noise = torch.randn((batch, 1, height, width), generator=generator, device=generator.device, dtype=image.dtype)
        noise = torch.where(gray.view(-1, 1, 1, 1), gray_noise.to(image.device).expand(shape), noise)
    return noise * sigma.view(-1, 1, 1, 1) / 255.0


def _distinct_levels(image_8bit: torch.Tensor) -> torch.Tensor:
    """Number of distinct 8-bit values per sample (basicsr uses ``len(torch.unique(img[i]))``; a bincount is faster)."""
    batch = image_8bit.shape[0]
    offsets = torch.arange(batch, device=image_8bit.device).view(-1, *([1] * (image_8bit.dim() - 1))) * 256
    counts = torch.bincount((image_8bit.long() + offsets).flatten(), minlength=256 * batch)
    return (counts.view(batch, 256) > 0).sum(dim=1)


def _poisson_shot_noise(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """basicsr ``generate_poisson_noise_pt`` for scale 1: ``x = round(255 img) / 255``, ``v = 2^ceil(log2(#levels))``,
    noise ``= Poisson(x v) / v - x``."""
    image_8bit = torch.clamp((image * 255.0).round(), 0, 255)
    quantised = image_8bit / 255.0
    levels = 2.0 ** torch.ceil(torch.log2(_distinct_levels(image_8bit).to(image.dtype)))
    rates = (quantised * levels.view(-1, 1, 1, 1)).to(generator.device)
    return torch.poisson(rates, generator=generator).to(image.device) / levels.view(-1, 1, 1, 1) - quantised


def poisson_noise(image: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shot noise scaled by ``scale``: colour noise of the RGB image, or (where ``gray``) the noise of its luma
    (``rgb_to_grayscale``) copied to the three channels (basicsr ``generate_poisson_noise_pt``)."""
    noise = torch.zeros_like(image)
    colour = ~gray
    if colour.any():
        noise[colour] = _poisson_shot_noise(image[colour], generator)
    if gray.any():
        noise[gray] = _poisson_shot_noise(rgb_to_grayscale(image[gray]), generator).expand(-1, image.shape[1], -1, -1)
    return noise * scale.view(-1, 1, 1, 1)


class RandomNoise:
    """Gaussian (probability ``gaussian_noise_prob``, per batch) or Poisson noise, then clip to [0, 1] (no rounding).

    Per sample: Gaussian ``sigma ~ U[noise_range]`` (in 8-bit units), Poisson ``scale ~ U[poisson_scale_range]``,
    gray noise with probability ``gray_noise_prob``.
    """

    def __init__(
        self,
        gaussian_noise_prob: float,
        noise_range: Sequence[float],
        poisson_scale_range: Sequence[float],
        gray_noise_prob: float,
    ):
        self.gaussian_noise_prob = gaussian_noise_prob
        self.noise_range = _check_range("noise_range", noise_range)
        self.poisson_scale_range = _check_range("poisson_scale_range", poisson_scale_range)
        self.gray_noise_prob = gray_noise_prob

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[bool, np.ndarray, np.ndarray]:
        """``(use_gaussian, per-sample sigma or Poisson scale, per-sample gray flags)`` for one batch."""
        use_gaussian = bool(rng.uniform() < self.gaussian_noise_prob)
        strength_range = self.noise_range if use_gaussian else self.poisson_scale_range
        strength = rng.uniform(strength_range[0], strength_range[1], size=batch_size)
        gray = rng.uniform(size=batch_size) < self.gray_noise_prob
        return use_gaussian, strength, gray

    def __call__(self, image: torch.Tensor, context: DegradationContext, generator: torch.Generator) -> torch.Tensor:
        use_gaussian, strength, gray = self.sample(numpy_rng(generator), image.shape[0])
        strength = torch.as_tensor(strength, dtype=image.dtype, device=image.device)
        gray = torch.as_tensor(gray, device=image.device)
        noise_fn = gaussian_noise if use_gaussian else poisson_noise
        return torch.clamp(image + noise_fn(image, strength, gray, generator), 0, 1)


class RandomJPEG:
    """Clamp to [0, 1] then basicsr ``DiffJPEG(differentiable=False)`` with per-sample quality ``U[quality_range]``."""

    def __init__(self, quality_range: Sequence[float]):
        self.quality_range = _check_range("quality_range", quality_range)
        if not 1 <= self.quality_range[0] <= self.quality_range[1] <= 100:
            raise ValueError(f"JPEG quality_range must lie in [1, 100], got {list(quality_range)}")
        self._jpeg = DiffJPEG(differentiable=False)

    def sample(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """Per-sample JPEG qualities."""
        return rng.uniform(self.quality_range[0], self.quality_range[1], size=batch_size)

    def __call__(self, image: torch.Tensor, context: DegradationContext, generator: torch.Generator) -> torch.Tensor:
        quality = torch.as_tensor(self.sample(numpy_rng(generator), image.shape[0]), dtype=image.dtype, device=image.device)
        self._jpeg.to(image.device)
        return self._jpeg(torch.clamp(image, 0, 1), quality=quality)


class RandomChoice:
    """Runs one of ``branches`` (each a list of stages), chosen per batch with ``probs``; e.g. Real-ESRGAN's two
    orders of [resize to target + sinc] and the last JPEG."""

    def __init__(self, branches: Sequence[Sequence], probs: Sequence[float]):
        self.branches = [list(branch) for branch in branches]
        self.probs = _check_probabilities("probs", probs, len(self.branches))

    def __call__(self, image: torch.Tensor, context: DegradationContext, generator: torch.Generator) -> torch.Tensor:
        branch = self.branches[numpy_rng(generator).choice(len(self.branches), p=self.probs)]
        for stage in branch:
            image = stage(image, context, generator)
        return image


class DegradationPipeline:
    """GT batch in [0, 1] -> ``(lq, gt_target)``: optional USM sharpening of the GT (the sharpened GT is then both
    the degradation source and the target), the stages in order, clamp to [0, 1].

    ``lq`` has size ``(floor(H / scale), floor(W / scale))``; the stages must end there (a ``ResizeToTarget`` stage).
    ``no_degradation_prob`` is applied by consumers that bicubic-upsample the LR back to the GT size (StableSR replaces
    the upsampled LR by the GT with this probability, per batch); the pipeline itself always degrades.
    """

    def __init__(
        self,
        scale: float,
        stages: Sequence,
        gt_sharpener: USMSharpen | None = None,
        no_degradation_prob: float = 0.0,
    ):
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if not 0.0 <= no_degradation_prob <= 1.0:
            raise ValueError(f"no_degradation_prob must be in [0, 1], got {no_degradation_prob}")
        self.scale = float(scale)
        self.stages = list(stages)
        self.gt_sharpener = gt_sharpener
        self.no_degradation_prob = no_degradation_prob

    @torch.no_grad()
    def __call__(self, gt: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if gt.dim() != 4 or gt.shape[1] != 3:
            raise ValueError(f"degradation expects a [B, 3, H, W] batch, got shape {tuple(gt.shape)}")
        context = DegradationContext(gt_size=(gt.shape[-2], gt.shape[-1]), scale=self.scale)
        target = self.gt_sharpener(gt) if self.gt_sharpener is not None else gt
        out = target
        for stage in self.stages:
            out = stage(out, context, generator)
        if tuple(out.shape[-2:]) != context.target_size:
            raise ValueError(
                f"degradation stages ended at size {tuple(out.shape[-2:])}, expected {context.target_size} "
                "(end the pipeline with a ResizeToTarget stage)"
            )
        return torch.clamp(out, 0, 1).contiguous(), target
