"""No-reference metrics: NIQE through basicsr (its pristine-image parameters ship with it), MUSIQ / CLIP-IQA / MANIQA
through pyiqa when pyiqa and their weights are present.

- NIQE (Mittal et al. 2013): Mahalanobis-like distance between the multivariate Gaussian fitted to natural-scene
  statistics of 96x96 blocks of the image and the pristine model,
  ``sqrt((mu_p - mu)^T ((S_p + S) / 2)^-1 (mu_p - mu))``; on the MATLAB Y channel rounded to integers, after removing
  ``crop_border`` pixels per edge; lower is better.
- MUSIQ (KonIQ-10k head, higher is better, ~0-100), CLIP-IQA (RN50 with antonym prompt pairs, 0-1), MANIQA
  (KonIQ-10k, ~0-1): pyiqa 0.1.16's default ``musiq``, ``clipiqa``, ``maniqa`` models on the full image.
"""

import importlib.util

import numpy as np
import torch

# isort: off
import sr.compat.basicsr  # noqa: F401  (mends basicsr for current torchvision before basicsr.metrics is imported)
from basicsr.metrics.niqe import calculate_niqe
# isort: on

from sr.metrics.weights import (
    maniqa_backbone_expected_path,
    maniqa_backbone_path,
    missing_weights,
    not_available,
    portable_location,
    pyiqa_weight_path,
)

PYIQA_METRICS = ("musiq", "clipiqa", "maniqa")
PYIQA_VERSION = "0.1.16"
NIQE_MIN_SIZE = 192  # two 96x96 blocks: NIQE also fits its model at half resolution


def niqe_size_problem(height: int, width: int, crop_border: int) -> str | None:
    """None when an image of this size (after the border crop) is large enough for NIQE, else the reason."""
    height, width = height - 2 * crop_border, width - 2 * crop_border
    if min(height, width) >= NIQE_MIN_SIZE:
        return None
    return f"NIQE needs at least {NIQE_MIN_SIZE}x{NIQE_MIN_SIZE} px after the border crop, got {height}x{width}"


def niqe(image: torch.Tensor, crop_border: int) -> float:
    """NIQE of one RGB ``[1, 3, H, W]`` image in [0, 1] (basicsr's port of the MATLAB reference)."""
    problem = niqe_size_problem(image.shape[-2], image.shape[-1], crop_border)
    if problem:
        raise ValueError(problem)
    rgb_255 = image[0].permute(1, 2, 0).double().cpu().numpy() * 255.0
    bgr_255 = np.ascontiguousarray(rgb_255[:, :, ::-1])  # basicsr's colour conversion expects OpenCV channel order
    return float(calculate_niqe(bgr_255, crop_border=crop_border, input_order="HWC", convert_to="y"))


def pyiqa_unavailable(metric: str) -> str | None:
    """None when pyiqa and every weight file ``metric`` needs are present, else the ``"n/a (...)"`` string."""
    if importlib.util.find_spec("pyiqa") is None:
        return not_available(metric, f"pyiqa not installed; pip install pyiqa=={PYIQA_VERSION}")
    missing = missing_weights(metric, pyiqa_weight_path(metric))
    if missing is None and metric == "maniqa" and maniqa_backbone_path() is None:
        expected = maniqa_backbone_expected_path()
        missing = not_available(metric, f"missing {expected.name}, expected at {portable_location(expected)}",
                                here=expected)
    return missing


class PyiqaNoReference:
    """A pyiqa no-reference metric built from local weights only; ``__call__`` scores ``[1, 3, H, W]`` in [0, 1].

    Call :func:`pyiqa_unavailable` first: pyiqa downloads whatever is missing, which this project never allows.
    ``seed`` fixes the random crops MANIQA averages over (without touching the caller's RNG state).
    """

    def __init__(self, metric: str, device: str | torch.device, seed: int):
        if metric not in PYIQA_METRICS:
            raise ValueError(f"pyiqa metric must be one of {PYIQA_METRICS}, got {metric!r}")
        import pyiqa

        self.metric = pyiqa.create_metric(metric, device=torch.device(device), as_loss=False)
        self.seed = seed

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> float:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return float(self.metric(image).item())
