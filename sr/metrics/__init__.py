"""Image-quality metrics for super-resolution, with published-table conventions (see ``sr.metrics.suite``)."""

from sr.metrics.fid import FID, FIDResult, clean_resize, load_inception, split_into_patches
from sr.metrics.full_reference import LPIPS, psnr, ssim
from sr.metrics.no_reference import PyiqaNoReference, niqe
from sr.metrics.suite import (
    LOWER_IS_BETTER,
    METRIC_NAMES,
    PER_IMAGE_METRICS,
    SET_LEVEL_METRICS,
    MetricSuite,
    quantize_8bit,
)

__all__ = [
    "FID",
    "LOWER_IS_BETTER",
    "LPIPS",
    "METRIC_NAMES",
    "PER_IMAGE_METRICS",
    "SET_LEVEL_METRICS",
    "FIDResult",
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
