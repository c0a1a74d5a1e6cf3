"""Fréchet Inception Distance between an SR set and a GT set, with clean-fid's resize (the pyiqa convention).

``FID = |mu_sr - mu_gt|^2 + Tr(S_sr + S_gt - 2 (S_sr S_gt)^(1/2))`` over feature vectors of the two sets (torchmetrics'
``FrechetInceptionDistance`` accumulates the means/covariances in float64 and evaluates this).

Pipeline per image (8-bit RGB ``[3, H, W]``):

1. optional patch mode: split into non-overlapping ``patch_size`` squares, row-major, remainder dropped; every patch
   is a sample (image-level FID on a few hundred images is dominated by estimator bias; patches give more samples);
2. clean-fid resize to 299x299: PIL bicubic on each channel as a float32 image, clipped to [0, 255]
   (Parmar et al., CVPR 2022), rounded back to uint8 because torch-fidelity's extractor takes 8-bit input
   (clean-fid feeds the unrounded floats: a difference of at most half a grey level per pixel);
3. features: torch-fidelity's TF-ported Inception-v3, 2048-d pool3 (the FID network), or an injected stand-in that
   maps uint8 ``[N, 3, 299, 299]`` to ``[N, D]``.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from tqdm import tqdm

FID_INPUT_SIZE = 299


def clean_resize(image: torch.Tensor, size: int = FID_INPUT_SIZE) -> torch.Tensor:
    """clean-fid resize of a uint8 ``[3, H, W]`` image: float32 ``[3, size, size]`` in [0, 255] (PIL bicubic, 'F' mode)."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"clean_resize expects a uint8 [3, H, W] image, got {image.dtype} {tuple(image.shape)}")
    channels = [
        np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
        for channel in image.numpy()
    ]
    return torch.from_numpy(np.stack(channels).clip(0, 255))


def split_into_patches(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Non-overlapping ``patch_size`` squares of a ``[C, H, W]`` image, row-major: ``[P, C, patch_size, patch_size]``."""
    channels, height, width = image.shape
    rows, cols = height // patch_size, width // patch_size
    if rows == 0 or cols == 0:
        raise ValueError(f"image {height}x{width} is smaller than the FID patch size {patch_size}")
    cropped = image[:, : rows * patch_size, : cols * patch_size]
    patches = cropped.reshape(channels, rows, patch_size, cols, patch_size).permute(1, 3, 0, 2, 4)
    return patches.reshape(rows * cols, channels, patch_size, patch_size)


class _FirstOutput(nn.Module):
    """torch-fidelity extractors return a tuple of requested features; FID needs the single 2048-d one."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)[0]


def load_inception(weights_path: Path) -> nn.Module:
    """torch-fidelity's FID Inception-v3 (2048-d pool3 features) from a local file; never downloads.

    The file is first opened with ``torch.load(weights_only=True)`` so only a plain tensor state dict is accepted
    (torch-fidelity itself unpickles it without that restriction).
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    if not weights_path.is_file():
        raise FileNotFoundError(f"FID Inception weights missing: expected {weights_path}")
    torch.load(weights_path, map_location="cpu", weights_only=True)
    extractor = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_path)
    )
    return _FirstOutput(extractor)


@dataclass(frozen=True)
class FIDResult:
    value: float
    sr_images: int
    hr_images: int
    sr_samples: int
    hr_samples: int


class FID:
    """FID between two image sets (see module docstring).

    Args:
        feature_extractor: uint8 ``[N, 3, 299, 299]`` -> ``[N, D]`` (e.g. :func:`load_inception`).
        device: where features are computed.
        patch_size: None for image-level FID; an int for patch-level FID on ``patch_size`` squares.
        batch_size: samples per forward pass.
    """

    def __init__(
        self,
        feature_extractor: nn.Module,
        device: str | torch.device = "cpu",
        patch_size: int | None = None,
        batch_size: int = 32,
    ):
        self.feature_extractor = feature_extractor.eval()
        self.device = torch.device(device)
        self.patch_size = patch_size
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, sr_images: Iterable[torch.Tensor], hr_images: Iterable[torch.Tensor]) -> FIDResult:
        """``sr_images``/``hr_images``: iterables of uint8 ``[3, H, W]`` images. Raises ValueError below 2 samples."""
        # torchmetrics probes the feature size with a CPU tensor, so the extractor joins the device afterwards.
        metric = FrechetInceptionDistance(feature=self.feature_extractor.cpu()).to(self.device)
        sr_count, sr_samples = self._accumulate(metric, sr_images, real=False)
        hr_count, hr_samples = self._accumulate(metric, hr_images, real=True)
        if sr_samples < 2 or hr_samples < 2:
            raise ValueError(f"FID needs at least 2 samples per set, got {sr_samples} SR and {hr_samples} GT")
        value = float(metric.compute().item())
        return FIDResult(value, sr_count, hr_count, sr_samples, hr_samples)

    def _accumulate(
        self, metric: FrechetInceptionDistance, images: Iterable[torch.Tensor], real: bool
    ) -> tuple[int, int]:
        batch: list[torch.Tensor] = []
        image_count = sample_count = 0
        for image in tqdm(images, desc=f"FID features ({'GT' if real else 'SR'})", leave=False):
            image_count += 1
            samples = split_into_patches(image, self.patch_size) if self.patch_size else image.unsqueeze(0)
            for sample in samples:
                batch.append(clean_resize(sample).round().to(torch.uint8))
                if len(batch) == self.batch_size:
                    metric.update(torch.stack(batch).to(self.device), real=real)
                    sample_count += len(batch)
                    batch = []
        if batch:
            metric.update(torch.stack(batch).to(self.device), real=real)
            sample_count += len(batch)
        return image_count, sample_count
