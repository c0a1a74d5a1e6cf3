"""Random blur and sinc kernels for the Real-ESRGAN / StableSR degradation model (docs/method.md#training-data).

The kernel shapes are basicsr's own functions (``bivariate_Gaussian``, ``bivariate_generalized_Gaussian``,
``bivariate_plateau``, ``circular_lowpass_kernel``). basicsr's ``random_*`` wrappers draw their parameters from numpy's
and Python's *global* generators, so here the same parameter distributions are drawn from an explicit
``numpy.random.Generator`` instead (``random_bivariate_*`` in ``basicsr/data/degradations.py``):

- ``sigma_x ~ U[sigma_lo, sigma_hi]``; isotropic kernels use ``sigma_y = sigma_x`` and rotation 0, anisotropic ones
  ``sigma_y ~ U[sigma_lo, sigma_hi]`` and rotation ``theta ~ U[-pi, pi]``.
- shape ``beta``: with probability 1/2 ``U[beta_lo, 1]``, otherwise ``U[1, beta_hi]``.
- sinc (circular low-pass, ``k(r) = w_c J1(w_c r) / (2 pi r)``, normalised to sum 1): cutoff
  ``w_c ~ U[pi/3, pi]`` for sizes < 13 and ``U[pi/5, pi]`` otherwise (Real-ESRGAN's dataset rule).
"""

import math
from collections.abc import Sequence

import numpy as np

from sr.compat.basicsr import degradations

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def _draw_beta(rng: np.random.Generator, beta_range: Sequence[float]) -> float:
    if rng.uniform() < 0.5:
        return rng.uniform(beta_range[0], 1.0)
    return rng.uniform(1.0, beta_range[1])


def random_mixed_kernel(
    rng: np.random.Generator,
    kernel_size: int,
    kernel_list: Sequence[str],
    kernel_prob: Sequence[float],
    sigma_range: Sequence[float],
    betag_range: Sequence[float],
    betap_range: Sequence[float],
) -> np.ndarray:
    """One ``kernel_size``² blur kernel of a type drawn from ``kernel_list`` with ``kernel_prob`` (sums to 1)."""
    kernel_type = kernel_list[rng.choice(len(kernel_list), p=np.asarray(kernel_prob) / np.sum(kernel_prob))]
    isotropic = kernel_type.endswith("iso") and not kernel_type.endswith("aniso")
    sigma_x = rng.uniform(sigma_range[0], sigma_range[1])
    if isotropic:
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y = rng.uniform(sigma_range[0], sigma_range[1])
        theta = rng.uniform(-math.pi, math.pi)
    if kernel_type in ("iso", "aniso"):
        return degradations.bivariate_Gaussian(kernel_size, sigma_x, sigma_y, theta, isotropic=isotropic)
    if kernel_type in ("generalized_iso", "generalized_aniso"):
        beta = _draw_beta(rng, betag_range)
        return degradations.bivariate_generalized_Gaussian(
            kernel_size, sigma_x, sigma_y, theta, beta, isotropic=isotropic
        )
    if kernel_type in ("plateau_iso", "plateau_aniso"):
        beta = _draw_beta(rng, betap_range)
        return degradations.bivariate_plateau(kernel_size, sigma_x, sigma_y, theta, beta, isotropic=isotropic)
    raise ValueError(f"unknown blur kernel type {kernel_type!r}; expected one of {KERNEL_TYPES}")


def random_sinc_kernel(rng: np.random.Generator, kernel_size: int, cutoff_range: Sequence[float] | None = None) -> np.ndarray:
    """Circular low-pass kernel with cutoff ``U[cutoff_range]``; default range is Real-ESRGAN's size-dependent one."""
    if cutoff_range is None:
        cutoff_range = (math.pi / 3, math.pi) if kernel_size < 13 else (math.pi / 5, math.pi)
    cutoff = rng.uniform(cutoff_range[0], cutoff_range[1])
    return degradations.circular_lowpass_kernel(cutoff, kernel_size, pad_to=0)


def pad_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad an odd square kernel symmetrically to ``size``² (a no-op when already that size)."""
    pad = (size - kernel.shape[0]) // 2
    if pad < 0 or kernel.shape[0] % 2 == 0 or size % 2 == 0:
        raise ValueError(f"cannot pad a {kernel.shape[0]}x{kernel.shape[0]} kernel to {size}x{size} (both odd, grow only)")
    return np.pad(kernel, ((pad, pad), (pad, pad)))


def delta_kernel(size: int) -> np.ndarray:
    """The identity filter: a ``size``² kernel with a single 1 in the centre."""
    kernel = np.zeros((size, size))
    kernel[size // 2, size // 2] = 1.0
    return kernel
