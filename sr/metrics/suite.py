"""``MetricSuite``: the one object eval.py uses to score SR images against GT and summarise a run.

The metrics, their definitions and the library computing each are listed once, in :mod:`sr.metrics.registry`.

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
from sr.metrics.no_reference import PYIQA_VERSION
from sr.metrics.registry import (
    FULL_REFERENCE,
    METRIC_NAMES,
    METRICS,
    SET_LEVEL,
    SET_LEVEL_METRICS,
    MetricContext,
    Score,
)

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
        context = MetricContext(
            crop_border, self.device, seed, fid_patch_size, dict(lpips_backbones or {}), fid_feature_extractor
        )
        self.unavailable: dict[str, str] = {}
        self._scorers = {}
        for name in self.names:
            built = METRICS[name].build(context)
            if isinstance(built, str):
                self.unavailable[name] = built
            else:
                self._scorers[name] = built

    def conventions(self) -> dict[str, str]:
        """Human-readable scoring conventions, recorded in scores.json and printed under every table."""
        conventions = {
            "images": "RGB quantised to 8 bits before scoring (same as scoring the saved PNGs)",
            "crop_border": f"{self.crop_border} px per edge for PSNR/SSIM/NIQE (none for LPIPS, FID, pyiqa NR metrics)",
            "pyiqa": PYIQA_VERSION,
        }
        for name in self.names:
            spec = METRICS[name]
            size = f" ({self.fid_patch_size} px)" if name == "fid_patch" else ""
            conventions[name] = f"{spec.definition}{size}; {spec.backend}"
        return conventions

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
            kind = METRICS[metric].kind
            if kind == SET_LEVEL:
                continue
            if metric in self.unavailable:
                scores[metric] = self.unavailable[metric]
            elif kind == FULL_REFERENCE:
                scores[metric] = "n/a (no ground truth)" if hr is None else self._scorers[metric](sr, hr)
            else:
                scores[metric] = self._scorers[metric](sr)
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
                result = self._scorers[metric](_uint8_images(sr), _uint8_images(hr))
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
