"""Colour fidelity measures of an output against its HR, in 8-bit levels (both images quantised as their PNGs are).

- :func:`largest_channel_mean_difference`, a global cast: ``max_c |mean(q(output)_c) - mean(q(hr)_c)| * 255``;
- :func:`mean_chroma_error`, local colour: ``mean_p || C q(output)_p - C q(hr)_p || * 255`` with ``C`` the BT.601
  (Cb, Cr) rows (:data:`CHROMA`).

``q(x) = round(255 x) / 255`` (:func:`sr.metrics.quantize_8bit`). A colour fix toward the LR's channel means (AdaIN)
drives the first to zero whatever the local colours; the second still sees colours washed toward grey or brown.
"""

import torch

from sr.metrics.suite import quantize_8bit

# ITU-R BT.601 full-range chroma rows (Cb, Cr) of the RGB -> YCbCr matrix; each row sums to 0, so grey has no chroma
CHROMA = torch.tensor([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=torch.float64)


def largest_channel_mean_difference(output: torch.Tensor, hr: torch.Tensor) -> float:
    """The largest per-channel mean colour difference of two RGB images ``[3, H, W]`` in [0, 1], in 8-bit levels
    (module docstring). 0 when every channel keeps the HR's mean; a cast of one level per pixel in one channel
    gives 1."""
    means = [quantize_8bit(image.double()).mean(dim=(-2, -1)) for image in (output, hr)]
    return float((means[0] - means[1]).abs().max() * 255)


def mean_chroma_error(output: torch.Tensor, hr: torch.Tensor) -> float:
    """The mean per-pixel chroma distance of two RGB images ``[3, H, W]`` in [0, 1], in 8-bit levels (module
    docstring). A change of brightness alone (the same offset on R, G and B) scores 0; washing saturated colours
    toward grey scores high even when every channel mean is kept."""
    difference = quantize_8bit(output.double()) - quantize_8bit(hr.double())
    return float(torch.einsum("kc,chw->khw", CHROMA, difference).norm(dim=0).mean() * 255)
