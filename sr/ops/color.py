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

Grey in, grey out (:func:`keep_grey`, after the colour fix): the model invents chroma (green/magenta tints) even for a
grey input, so an output whose input is grey is replaced by its ITU-R BT.601 luma ``Y' = 0.299 R + 0.587 G + 0.114 B``,
the Y that PSNR-Y / SSIM-Y score.
"""

from typing import Literal

import torch
import torch.nn.functional as F

ADAIN_EPS = 1e-5
# ITU-R BT.601 luma weights of R, G, B: the Y of the Y-channel metrics (sr.metrics, pyiqa's ``psnry``)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
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


def luma(image: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of ``[B, 3, H, W]`` as ``[B, 1, H, W]``: ``Y' = 0.299 R + 0.587 G + 0.114 B``.

    Evaluated as ``G + 0.299 (R - G) + 0.114 (B - G)`` (the same in exact arithmetic, as 0.587 = 1 - 0.299 - 0.114):
    in floats it returns a grey pixel's value exactly, so ``luma`` of an image whose channels are equal is that
    channel, bit for bit.
    """
    red, green, blue = image.unbind(dim=1)
    red_weight, _, blue_weight = LUMA_WEIGHTS
    return (green + red_weight * (red - green) + blue_weight * (blue - green)).unsqueeze(1)


def grey_items(images: torch.Tensor) -> torch.Tensor:
    """Which images of a ``[B, C, H, W]`` batch are grey (bool ``[B]``): one channel, or all channels exactly equal."""
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    return (images == images[:, :1]).flatten(1).all(dim=1)


def keep_grey(output: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Grey in, grey out: ``output`` ``[B, 3, H, W]`` with every image whose ``source`` ``[B, C, h, w]`` is grey
    (:func:`grey_items`: ``C = 1``, or three exactly equal channels) replaced by its luma.

    Per image ``b`` with a grey source::

        Y'_b = 0.299 R_b + 0.587 G_b + 0.114 B_b        (:func:`luma` of the output)
        out_b = Y'_b                   if C = 1  (one channel: a grey file stays a grey file)
        out_b = (Y'_b, Y'_b, Y'_b)     if C = 3

    and ``out_b = output_b`` for a colour source, so a batch may mix grey and colour images. Why ``Y'``: it is the Y
    that PSNR-Y / SSIM-Y score, so a grey image's scores are unchanged and only the chroma the model invented (which
    a grey input cannot hold) is dropped; the channel mean ``(R + G + B) / 3`` would instead move Y wherever the
    output is tinted. Idempotent: an output that is already grey is returned bit for bit (:func:`luma`).
    """
    if output.ndim != 4 or output.shape[1] != 3 or source.ndim != 4 or source.shape[0] != output.shape[0]:
        raise ValueError(f"keep_grey expects an RGB output [B, 3, H, W] and its source [B, C, h, w], got shapes "
                         f"{tuple(output.shape)} and {tuple(source.shape)}")
    if source.shape[1] == 1:
        return luma(output)
    grey = grey_items(source).to(output.device).view(-1, 1, 1, 1)
    return torch.where(grey, luma(output).expand_as(output), output)
