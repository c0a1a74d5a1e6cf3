"""Reflect padding to a minimum size or a multiple, and the output sizes of an upscale, for images and latents.

``F.pad(mode="reflect")`` needs the pad to be smaller than the side it mirrors. To pad a side of length ``L`` by
``p >= L`` we reflect repeatedly, at most ``L' - 1`` pixels at a time where ``L'`` is the current (growing) length,
so tiny inputs (a 1-pixel row, an 8x8 latent padded to a 64x64 tile) pad without error. Padding is always added on
the bottom and right, so the original content stays at ``[..., :H, :W]`` and cropping back is a plain slice.
"""

import torch
import torch.nn.functional as F


def round_up(length: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ``>= length``: ``ceil(length / multiple) * multiple``."""
    if multiple < 1:
        raise ValueError(f"padding multiple must be positive, got {multiple}")
    return -(-length // multiple) * multiple


def reflect_pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``x [B, C, H, W]`` reflect-padded on the bottom/right to ``[B, C, height, width]`` (no smaller than H, W)."""
    current_h, current_w = x.shape[-2:]
    if height < current_h or width < current_w:
        raise ValueError(f"cannot pad a {current_h}x{current_w} tensor down to {height}x{width}")
    if (height > current_h and current_h < 2) or (width > current_w and current_w < 2):
        # A single row/column has nothing to mirror; repeating it is the only sensible extension.
        x = F.pad(x, (0, width - current_w if current_w < 2 else 0, 0, height - current_h if current_h < 2 else 0),
                  mode="replicate")
        current_h, current_w = x.shape[-2:]
    while current_h < height or current_w < width:
        pad_h = min(height - current_h, current_h - 1)
        pad_w = min(width - current_w, current_w - 1)
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        current_h, current_w = x.shape[-2:]
    return x


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(round(height * scale), round(width * scale))``, at least 1 pixel per side."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def working_scale(height: int, width: int, scale: float, input_size: int | None) -> float:
    """``max(input_size / min(height, width), scale)`` (the model works at >= ``input_size`` on the short side)."""
    return max(input_size / min(height, width), scale) if input_size else scale
