"""Image-quality metrics for super-resolution, one registry (``sr.metrics.registry``) backed by pyiqa where its
conventions are the published tables' ones; ``MetricSuite`` (``sr.metrics.suite``) scores and summarises a run."""

from sr.metrics.fid import FID, FIDResult, clean_resize, load_inception, split_into_patches
from sr.metrics.full_reference import LPIPS, psnr, ssim
from sr.metrics.no_reference import PyiqaNoReference, niqe
from sr.metrics.registry import (
    LOWER_IS_BETTER,
    METRIC_NAMES,
    METRICS,
    PER_IMAGE_METRICS,
    SET_LEVEL_METRICS,
    MetricSpec,
)
from sr.metrics.suite import MetricSuite, quantize_8bit

__all__ = [
    "FID",
    "LOWER_IS_BETTER",
    "LPIPS",
    "METRICS",
    "METRIC_NAMES",
    "PER_IMAGE_METRICS",
    "SET_LEVEL_METRICS",
    "FIDResult",
    "MetricSpec",
    "MetricSuite",
    "PyiqaNoReference",
    "clean_resize",
    "load_inception",
    "niqe",
    "psnr",
    "quantize_8bit",
    "split_into_patches",
    "ssim",
]
