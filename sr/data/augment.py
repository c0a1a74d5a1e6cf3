"""Colour augmentation of training crops: the bundled photos are mostly earthy, the users' photos are not.

A crop is ``[3, H, W]`` in ``[0, 1]``; the random factors come from the ``numpy`` generator the dataset seeds per item
(``HRImageDataset``), so a run and its resume draw the same ones. With ``u = (1, 1, 1) / sqrt(3)`` the grey axis,
each pixel's RGB vector ``x`` goes through

- a hue rotation by ``theta ~ U(-pi, pi)`` about the grey axis (Rodrigues):
  ``R = cos(theta) I + sin(theta) [u]_x + (1 - cos(theta)) u u^T``. ``R u = u`` and ``R`` is orthogonal, so grey
  stays grey and the channel sum is unchanged, while yellows and reds become greens, cyans, blues and magentas;
- a saturation factor ``s``: ``x' = g + s (x - g)``, ``g = mean_c(x)`` (the projection on the grey axis);
- a brightness factor ``b``: ``x' = b x``;

then a clamp to ``[0, 1]``.
"""

import math

import numpy as np
import torch


def hue_rotation_matrix(angle: float) -> torch.Tensor:
    """The ``[3, 3]`` rotation by ``angle`` radians about the grey axis (Rodrigues' formula above)."""
    axis = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
    cross = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
                         dtype=torch.float64)
    return (math.cos(angle) * torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross
            + (1 - math.cos(angle)) * torch.outer(axis, axis)).float()


def colour_jitter(
    image: torch.Tensor,
    rng: np.random.Generator,
    saturation: tuple[float, float] = (0.7, 1.6),
    brightness: tuple[float, float] = (0.8, 1.2),
) -> torch.Tensor:
    """A random hue rotation (uniform over the whole circle), saturation ``s ~ U(saturation)`` and brightness
    ``b ~ U(brightness)`` of a ``[3, H, W]`` image in ``[0, 1]`` (formulas in the module docstring)."""
    rotation = hue_rotation_matrix(float(rng.uniform(-math.pi, math.pi)))
    saturation_factor, brightness_factor = float(rng.uniform(*saturation)), float(rng.uniform(*brightness))
    rotated = torch.einsum("ij,jhw->ihw", rotation, image.float())
    grey = rotated.mean(dim=0, keepdim=True)
    return ((grey + saturation_factor * (rotated - grey)) * brightness_factor).clamp(0, 1).to(image.dtype)
