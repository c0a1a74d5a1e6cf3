"""``MetricSuite``: the one object eval.py uses to score SR images against GT and summarise a run.

Metric names (higher is better unless marked lower):

=============  =========  ==============================================================================
name           kind       definition
=============  =========  ==============================================================================
``psnr``       per image  PSNR on RGB, dB (identical images: 80 dB cap, see ``sr.metrics.full_reference``)
``ssim``       per image  SSIM on RGB (mean of the three channels)
``psnr_y``     per image  PSNR on pyiqa's Y = 0.299R+0.587G+0.114B (StableSR's published-table convention)
``ssim_y``     per image  SSIM on pyiqa's Y rounded to 8 bits (StableSR's published-table convention)
``psnr_ycbcr`` per image  PSNR on basicsr/MATLAB studio-swing YCbCr Y (classic SR tables; ~1.3 dB above psnr_y)
``ssim_ycbcr`` per image  SSIM on basicsr/MATLAB studio-swing YCbCr Y
``lpips_alex`` per image  LPIPS v0.1, AlexNet (lower)
``lpips_vgg``  per image  LPIPS v0.1, VGG-16 (lower)
``niqe``       per image  NIQE, basicsr (lower)
``musiq``      per image  MUSIQ-KonIQ, pyiqa
``clipiqa``    per image  CLIP-IQA, pyiqa
``maniqa``     per image  MANIQA-KonIQ, pyiqa
``fid``        set level  image-level FID, SR folder against GT folder, clean-fid resize (lower)
``fid_patch``  set level  FID over non-overlapping ``fid_patch_size`` patches of every image (lower)
=============  =========  ==============================================================================

Conventions: every image is first quantised to 8 bits (``round(255 x) / 255``), so scoring tensors equals scoring
the saved PNGs; ``crop_border`` pixels per edge are removed for PSNR/SSIM/NIQE only (basicsr's convention is
``crop_border = scale``; pyiqa, which produced StableSR's published numbers, crops nothing: pass 0 to match those).
A metric whose weights or library are missing is the string ``"n/a (...)"`` everywhere, never a number.
"""

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sr.io import IMAGE_SUFFIXES, list_images, read_image
from sr.metrics.fid import FID, load_inception
from sr.metrics.full_reference import LPIPS, psnr, ssim
from sr.metrics.no_reference import (
    PYIQA_METRICS,
    PYIQA_VERSION,
    PyiqaNoReference,
    niqe,
    niqe_size_problem,
    pyiqa_unavailable,
)
from sr.metrics.weights import inception_path, missing_weights, torchvision_backbone_path

FULL_REFERENCE_METRICS = ("psnr", "ssim", "psnr_y", "ssim_y", "psnr_ycbcr", "ssim_ycbcr", "lpips_alex", "lpips_vgg")
METRIC_SPACES = {
    "psnr": "rgb",
    "ssim": "rgb",
    "psnr_y": "y",
    "ssim_y": "y",
    "psnr_ycbcr": "ycbcr",
    "ssim_ycbcr": "ycbcr",
}
PER_IMAGE_METRICS = FULL_REFERENCE_METRICS + ("niqe",) + PYIQA_METRICS
SET_LEVEL_METRICS = ("fid", "fid_patch")
METRIC_NAMES = PER_IMAGE_METRICS + SET_LEVEL_METRICS
LOWER_IS_BETTER = frozenset({"lpips_alex", "lpips_vgg", "niqe", "fid", "fid_patch"})

Score = float | str
Aggregate = dict[str, float | int | None] | str


def quantize_8bit(image: torch.Tensor) -> torch.Tensor:
    """``round(255 x) / 255``: the values a PNG written from ``image`` reads back as."""
    return torch.round(image.clamp(0, 1) * 255.0) / 255.0


class MetricSuite:
    """Scores SR images against GT with the metrics in ``names`` (see the module docstring).

    Args:
        names: metric names from ``METRIC_NAMES``.
        crop_border: pixels removed from each edge for PSNR/SSIM/NIQE.
        device: where networks run.
        lpips_backbones: stand-in LPIPS feature networks by net (``{"alex": module}``), for tests.
        fid_feature_extractor: stand-in FID feature network (uint8 ``[N,3,299,299]`` -> ``[N,D]``), for tests.
        fid_patch_size: patch side for ``fid_patch``.
        seed: seed for metrics with random crops (MANIQA).
    """

    def __init__(
        self,
        names: Sequence[str],
        crop_border: int,
        device: str | torch.device = "cpu",
        lpips_backbones: dict[str, nn.Module] | None = None,
        fid_feature_extractor: nn.Module | None = None,
        fid_patch_size: int = 128,
        seed: int = 0,
    ):
        unknown = [name for name in names if name not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRIC_NAMES)}")
        if crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {crop_border}")
        self.names = list(dict.fromkeys(names))
        self.crop_border = crop_border
        self.device = torch.device(device)
        self.fid_patch_size = fid_patch_size
        self.unavailable: dict[str, str] = {}
        self._lpips: dict[str, LPIPS] = {}
        self._pyiqa: dict[str, PyiqaNoReference] = {}
        self._fid: dict[str, FID] = {}

        lpips_backbones = lpips_backbones or {}
        for net in ("alex", "vgg"):
            name = f"lpips_{net}"
            if name not in self.names:
                continue
            backbone = lpips_backbones.get(net)
            missing = None if backbone is not None else missing_weights(name, torchvision_backbone_path(net))
            if missing:
                self.unavailable[name] = missing
            else:
                self._lpips[name] = LPIPS(net, backbone=backbone).to(self.device)

        for name in PYIQA_METRICS:
            if name in self.names:
                missing = pyiqa_unavailable(name)
                if missing:
                    self.unavailable[name] = missing
                else:
                    self._pyiqa[name] = PyiqaNoReference(name, self.device, seed)

        fid_names = [name for name in SET_LEVEL_METRICS if name in self.names]
        if fid_names:
            extractor = fid_feature_extractor
            missing = None if extractor is not None else missing_weights("fid", inception_path())
            for name in fid_names:
                if missing:
                    self.unavailable[name] = missing
                    continue
                extractor = extractor if extractor is not None else load_inception(inception_path())
                patch_size = fid_patch_size if name == "fid_patch" else None
                self._fid[name] = FID(extractor, device=self.device, patch_size=patch_size)

    def conventions(self) -> dict[str, str]:
        """Human-readable scoring conventions, recorded in scores.json and printed under every table."""
        return {
            "images": "RGB quantised to 8 bits before scoring (same as scoring the saved PNGs)",
            "psnr_ssim": "psnr_y/ssim_y on pyiqa's Y = 0.299R+0.587G+0.114B (SSIM on Y rounded to 8 bits), as in "
            "StableSR's tables; psnr_ycbcr/ssim_ycbcr on basicsr's (65.481R+128.553G+24.966B+16)/255; "
            "PSNR capped at 80 dB (MSE eps 1e-8); SSIM 11x11 Gaussian sigma 1.5, valid filtering",
            "crop_border": f"{self.crop_border} px per edge for PSNR/SSIM/NIQE (none for LPIPS, FID, pyiqa metrics)",
            "lpips": "LPIPS v0.1 (lpips package), inputs [0,1] mapped to [-1,1]",
            "fid": "image-level FID, SR set vs GT set, clean-fid PIL-bicubic resize to 299 then uint8, "
            "torch-fidelity Inception-v3 pool3 (2048-d), torchmetrics Frechet distance"
            + (f"; fid_patch on non-overlapping {self.fid_patch_size}px patches" if "fid_patch" in self.names else ""),
            "no_reference": f"NIQE basicsr (Y channel); MUSIQ-KonIQ / CLIP-IQA / MANIQA-KonIQ pyiqa {PYIQA_VERSION}",
        }

    @torch.no_grad()
    def score_image(self, sr: torch.Tensor, hr: torch.Tensor | None, name: str) -> dict[str, Score]:
        """Per-image metrics of ``sr`` against ``hr`` (both ``[1, 3, H, W]`` in [0, 1]; ``hr`` None: no-reference only)."""
        _check_image(sr, f"{name}: SR")
        if hr is not None:
            _check_image(hr, f"{name}: GT")
            if hr.shape != sr.shape:
                raise ValueError(f"{name}: SR {tuple(sr.shape)} and GT {tuple(hr.shape)} differ in size")
            hr = quantize_8bit(hr.to(self.device, torch.float32))
        sr = quantize_8bit(sr.to(self.device, torch.float32))

        scores: dict[str, Score] = {}
        for metric in self.names:
            if metric in SET_LEVEL_METRICS:
                continue
            if metric in self.unavailable:
                scores[metric] = self.unavailable[metric]
            elif metric in FULL_REFERENCE_METRICS and hr is None:
                scores[metric] = "n/a (no ground truth)"
            elif metric.startswith("psnr"):
                scores[metric] = float(psnr(sr, hr, self.crop_border, METRIC_SPACES[metric]).item())
            elif metric.startswith("ssim"):
                scores[metric] = float(ssim(sr, hr, self.crop_border, METRIC_SPACES[metric]).item())
            elif metric in self._lpips:
                scores[metric] = float(self._lpips[metric](sr, hr).item())
            elif metric == "niqe":
                problem = niqe_size_problem(sr.shape[-2], sr.shape[-1], self.crop_border)
                scores[metric] = f"n/a ({problem})" if problem else niqe(sr, self.crop_border)
            else:
                scores[metric] = self._pyiqa[metric](sr)
        return scores

    def set_level(
        self, sr: str | Path | Sequence[torch.Tensor], hr: str | Path | Sequence[torch.Tensor]
    ) -> dict[str, Aggregate]:
        """Set-level metrics (FID) of the SR set against the GT set, in ``summary``'s aggregate form.

        Each set is a folder of images or a sequence of ``[1, 3, H, W]`` / ``[3, H, W]`` tensors in [0, 1].
        Returns ``{name: {"mean": value, "std": None, "n": sr_image_count}}`` or ``{name: "n/a (...)"}``.
        """
        results: dict[str, Aggregate] = {}
        for metric in (name for name in SET_LEVEL_METRICS if name in self.names):
            if metric in self.unavailable:
                results[metric] = self.unavailable[metric]
                continue
            try:
                result = self._fid[metric](_uint8_images(sr), _uint8_images(hr))
            except ValueError as error:
                results[metric] = f"n/a ({error})"
                warnings.warn(f"{metric}: {results[metric]}", stacklevel=2)
                continue
            results[metric] = {"mean": result.value, "std": None, "n": result.sr_images}
        return results

    def summary(
        self, per_image: dict[str, dict[str, Score]], set_level: dict[str, Aggregate] | None = None
    ) -> dict[str, Aggregate]:
        """Aggregate per-image scores: ``{metric: {"mean", "std" (population, ddof=0), "n"}}`` or the n/a string.

        ``set_level`` (from :meth:`set_level`) is merged in unchanged. A metric that is n/a for any image is n/a.
        """
        aggregate: dict[str, Aggregate] = {}
        for metric in self.names:
            if metric in SET_LEVEL_METRICS:
                if set_level is not None and metric in set_level:
                    aggregate[metric] = set_level[metric]
                continue
            values = [scores[metric] for scores in per_image.values() if metric in scores]
            reasons = [value for value in values if isinstance(value, str)]
            if reasons:
                aggregate[metric] = reasons[0]
            elif not values:
                aggregate[metric] = "n/a (no images scored)"
            else:
                array = np.asarray(values, dtype=np.float64)
                aggregate[metric] = {"mean": float(array.mean()), "std": float(array.std()), "n": len(values)}
        return aggregate


def _check_image(image: torch.Tensor, label: str) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[:2] != (1, 3):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{label} must be a [1, 3, H, W] tensor, got {shape}")
    low, high = float(image.min()), float(image.max())
    if math.isnan(low) or math.isnan(high) or low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"{label} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")


def _folder_images(folder: Path) -> list[Path]:
    """The images directly inside ``folder`` (see :func:`sr.io.list_images`); a missing or empty folder is an error."""
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _uint8_images(images: str | Path | Sequence[torch.Tensor]):
    """Yield uint8 ``[3, H, W]`` images from a folder or from [0, 1] tensors (quantised like saved PNGs; an 8-bit
    file gives back exactly its stored values, since ``round(255 * k / 255) = k``)."""
    if isinstance(images, (str, Path)):
        images = (read_image(path).rgb for path in _folder_images(Path(images)))
    for image in images:
        image = image.squeeze(0) if image.dim() == 4 else image
        yield torch.round(image.detach().clamp(0, 1) * 255.0).to(torch.uint8).cpu()
