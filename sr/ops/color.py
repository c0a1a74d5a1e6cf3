"""Colour correction of a super-resolved image towards its (upsampled) low-resolution input (docs/method.md#colour-correction).

Both tensors are ``[B, C, H, W]`` in ``[-1, 1]`` with the same shape (AdaIN only needs the same ``B`` and ``C``, as it
matches per-channel statistics); any channel count works (grey is ``C = 1``).
The correction is applied before the final clamp, so outputs may leave ``[-1, 1]`` slightly.

AdaIN, per image ``b`` and channel ``c`` over the ``H*W`` pixels::

    sigma(t) = sqrt(var_unbiased(t) + 1e-5)
    out      = (x - mean(x)) / sigma(x) * sigma(ref) + mean(ref)

Wavelet (the a-trous decomposition used by sd-webui-stablesr), with the 3x3 binomial kernel
``k = [[1,2,1],[2,4,2],[1,2,1]] / 16`` applied per channel at dilation ``r`` after replicate-padding by ``r``::

    low_0 = t;  low_{i+1} = blur_{2^i}(low_i)  for i = 0..levels-1      (r = 1, 2, 4, 8, 16 for 5 levels)
    high(t) = sum_i (low_i - low_{i+1}) = t - low_levels(t)
    out     = high(x) + low_levels(ref)

so the fine detail comes from ``x`` and the coarse colour from ``ref``.
"""

from typing import Literal

import torch
import torch.nn.functional as F

ADAIN_EPS = 1e-5
BINOMIAL_KERNEL_3X3 = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0

ColorFixMethod = Literal["adain", "wavelet", "none"]


def _check_pair(x: torch.Tensor, ref: torch.Tensor, same_size: bool = True) -> None:
    if x.ndim != 4 or ref.ndim != 4:
        raise ValueError(f"colour fix expects [B, C, H, W] tensors, got shapes {tuple(x.shape)} and {tuple(ref.shape)}")
    if x.shape[:2] != ref.shape[:2] or (same_size and x.shape != ref.shape):
        raise ValueError(f"colour fix needs x and ref of the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")


def adain_color_fix(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Match each channel's mean and std of ``x`` to ``ref``: ``(x - mu_x) / sigma_x * sigma_ref + mu_ref``.

    ``sigma = sqrt(var_unbiased + 1e-5)`` per image and channel over ``H*W``; ``ref`` may differ in ``H, W``.
    """
    _check_pair(x, ref, same_size=False)
    x_var, x_mean = torch.var_mean(x.flatten(2), dim=2, unbiased=True)
    ref_var, ref_mean = torch.var_mean(ref.flatten(2), dim=2, unbiased=True)
    scale = ((ref_var + ADAIN_EPS) / (x_var + ADAIN_EPS)).sqrt()
    return (x - x_mean[..., None, None]) * scale[..., None, None] + ref_mean[..., None, None]


def binomial_blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """Depthwise 3x3 binomial blur ``[[1,2,1],[2,4,2],[1,2,1]]/16`` at ``dilation``, replicate-padded by ``dilation``."""
    channels = image.shape[1]
    kernel = BINOMIAL_KERNEL_3X3.to(image).expand(channels, 1, 3, 3)
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, dilation=dilation, groups=channels)


def wavelet_low_frequency(image: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """``low_levels(image)``: the binomial blur applied ``levels`` times at dilations ``1, 2, 4, ..., 2^(levels-1)``."""
    low = image
    for level in range(levels):
        low = binomial_blur(low, dilation=2**level)
    return low


def wavelet_color_fix(x: torch.Tensor, ref: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Keep the wavelet detail of ``x`` and take the coarse band from ``ref``: ``x - low(x) + low(ref)``."""
    _check_pair(x, ref)
    if levels < 1:
        raise ValueError(f"wavelet colour fix needs levels >= 1, got {levels}")
    return x - wavelet_low_frequency(x, levels) + wavelet_low_frequency(ref, levels)


def color_fix(x: torch.Tensor, ref: torch.Tensor, method: ColorFixMethod) -> torch.Tensor:
    """Apply the colour correction named by ``method`` (``"adain"``, ``"wavelet"`` or ``"none"``)."""
    if method == "adain":
        return adain_color_fix(x, ref)
    if method == "wavelet":
        return wavelet_color_fix(x, ref)
    if method == "none":
        _check_pair(x, ref)
        return x
    raise ValueError(f"unknown colour fix method {method!r}; expected 'adain', 'wavelet' or 'none'")
