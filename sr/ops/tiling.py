"""Overlapping tile grids and Gaussian-weighted aggregation (docs/method.md#aggregation).

Grid per axis, for a length ``L >= tile`` and ``stride = tile - overlap``::

    n       = smallest n with (n - 1) * stride + tile >= L   =  1 + ceil((L - tile) / stride)
    offsets = [0, stride, 2 * stride, ..., (n - 2) * stride, L - tile]

so the last tile is pulled back to end exactly at the border (it may overlap its neighbour by more than ``overlap``).
A length shorter than the tile is the caller's business (pad the image, or shrink the tile).

Tile weight (``var = 0.01``, i.e. sigma = 0.1 * tile), a float64 outer product::

    wx[i] = exp(-(i - cx)^2 / W^2 / (2 var)) / sqrt(2 pi var)
    wy[j] = exp(-(j - cy)^2 / H^2 / (2 var)) / sqrt(2 pi var)
    w     = outer(wy, wx)

with the centres chosen by ``weighting``:

- ``centred`` (our default): ``cy = (H - 1)/2``, ``cx = (W - 1)/2``, so the weight is symmetric on both axes;
- ``official`` (the released code, docs/method.md#aggregation and docs/method.md#quirk-3): ``cy = H/2``, ``cx = (W - 1)/2``, i.e. y is half a
  pixel off-centre. Needed to reproduce the released sampler's outputs exactly.

Aggregation is the weighted average ``sum_k w * out_k / sum_k w``.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch

DEFAULT_TILE_WEIGHT_VAR = 0.01
TileWeighting = Literal["centred", "official"]
TILE_WEIGHTINGS: tuple[TileWeighting, ...] = ("centred", "official")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: ``i * (tile - overlap)`` for all but the last, which is ``length - tile``."""
    if tile < 1:
        raise ValueError(f"tile size must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must satisfy 0 <= overlap < tile ({tile}), got {overlap}")
    if length < tile:
        raise ValueError(f"length {length} is shorter than the tile {tile}; pad the input or use a smaller tile")
    stride = tile - overlap
    count = 1 + math.ceil((length - tile) / stride)
    return [i * stride for i in range(count - 1)] + [length - tile]


def check_tile_weighting(weighting: str) -> None:
    """Raise a one-line ``ValueError`` unless ``weighting`` is one of ``TILE_WEIGHTINGS``."""
    if weighting not in TILE_WEIGHTINGS:
        raise ValueError(f"unknown tile weighting {weighting!r}; expected one of {', '.join(TILE_WEIGHTINGS)}")


def _gaussian_profile(size: int, var: float, centre: float) -> torch.Tensor:
    """``exp(-(i - centre)^2 / size^2 / (2 var)) / sqrt(2 pi var)`` for ``i = 0 .. size - 1``, float64."""
    positions = torch.arange(size, dtype=torch.float64)
    return torch.exp(-((positions - centre) ** 2) / size**2 / (2 * var)) / math.sqrt(2 * math.pi * var)


def gaussian_weights(
    tile_h: int, tile_w: int, var: float = DEFAULT_TILE_WEIGHT_VAR, weighting: TileWeighting = "centred"
) -> torch.Tensor:
    """``[tile_h, tile_w]`` float64 ``outer(wy, wx)``; y centred at ``(tile_h - 1)/2`` (``centred``) or ``tile_h/2``
    (``official``), x at ``(tile_w - 1)/2`` in both (module doc)."""
    if tile_h < 1 or tile_w < 1:
        raise ValueError(f"tile size must be positive, got {tile_h}x{tile_w}")
    if var <= 0:
        raise ValueError(f"Gaussian tile weight variance must be positive, got {var}")
    check_tile_weighting(weighting)
    centre_y = tile_h / 2 if weighting == "official" else (tile_h - 1) / 2
    return torch.outer(_gaussian_profile(tile_h, var, centre_y), _gaussian_profile(tile_w, var, (tile_w - 1) / 2))


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one ``height x width`` image and their blending weights, built once and reused every step.

    ``slices[k]`` is ``(rows, cols)`` of tile ``k`` in row-major order (y outer, x inner); ``weights`` is the
    ``[tile_h, tile_w]`` float64 Gaussian; ``inverse_weight_sum`` is the ``[height, width]`` float64
    ``1 / sum_k w_k`` over the tiles covering each pixel.
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    slices: tuple[tuple[slice, slice], ...]
    weights: torch.Tensor
    inverse_weight_sum: torch.Tensor

    @classmethod
    def build(
        cls,
        height: int,
        width: int,
        tile: int | tuple[int, int],
        overlap: int | tuple[int, int],
        var: float = DEFAULT_TILE_WEIGHT_VAR,
        weighting: TileWeighting = "centred",
    ) -> "TileGrid":
        """Grid of ``tile`` (square or ``(tile_h, tile_w)``) tiles with ``overlap`` (per axis) over the image,
        blended with the ``weighting`` Gaussian (``centred`` or ``official``, module doc)."""
        tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
        overlap_h, overlap_w = (overlap, overlap) if isinstance(overlap, int) else overlap
        rows = tile_starts(height, tile_h, overlap_h)
        cols = tile_starts(width, tile_w, overlap_w)
        slices = tuple((slice(y, y + tile_h), slice(x, x + tile_w)) for y in rows for x in cols)
        weights = gaussian_weights(tile_h, tile_w, var, weighting)
        weight_sum = torch.zeros(height, width, dtype=torch.float64)
        for tile_slice in slices:
            weight_sum[tile_slice] += weights
        return cls(height, width, tile_h, tile_w, slices, weights, 1.0 / weight_sum)

    def __len__(self) -> int:
        return len(self.slices)

    def _check_image_size(self, image: torch.Tensor) -> None:
        if tuple(image.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"tensor of spatial size {tuple(image.shape[-2:])} does not match the tile grid's "
                f"{(self.height, self.width)}"
            )

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """All tiles of ``image [..., H, W]`` stacked along a new first dimension: ``[N, ..., tile_h, tile_w]``."""
        self._check_image_size(image)
        return torch.stack([image[(..., *tile_slice)] for tile_slice in self.slices])

    def new_accumulator(self, leading_shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype):
        """Zeros ``[*leading_shape, H, W]`` to pass to ``add_tile`` one tile at a time (streamed aggregation)."""
        return torch.zeros((*leading_shape, self.height, self.width), device=device, dtype=dtype)

    def add_tile(self, total: torch.Tensor, index: int, tile_output: torch.Tensor) -> None:
        """``total[tile index] += w * tile_output`` in place (``tile_output [..., tile_h, tile_w]``)."""
        if tuple(tile_output.shape[-2:]) != (self.tile_h, self.tile_w):
            raise ValueError(
                f"tile {index} has spatial size {tuple(tile_output.shape[-2:])}, expected {(self.tile_h, self.tile_w)}"
            )
        weights = self.weights.to(device=total.device, dtype=total.dtype)
        total[(..., *self.slices[index])] += weights * tile_output.to(device=total.device, dtype=total.dtype)

    def normalise(self, total: torch.Tensor) -> torch.Tensor:
        """``total / sum_k w_k``: turns the sum of ``add_tile`` contributions into the weighted average."""
        self._check_image_size(total)
        return total * self.inverse_weight_sum.to(device=total.device, dtype=total.dtype)

    def aggregate(self, tile_outputs: torch.Tensor) -> torch.Tensor:
        """Weighted average ``sum_k w * out_k / sum_k w`` of ``tile_outputs [N, ..., tile_h, tile_w]`` -> ``[..., H, W]``.

        Accumulates in at least float32 (float64 for float64 input) and returns the input's dtype.
        """
        if tile_outputs.shape[0] != len(self.slices) or tuple(tile_outputs.shape[-2:]) != (self.tile_h, self.tile_w):
            raise ValueError(
                f"expected {len(self.slices)} tiles of size {(self.tile_h, self.tile_w)}, "
                f"got tensor of shape {tuple(tile_outputs.shape)}"
            )
        accumulate_dtype = torch.promote_types(tile_outputs.dtype, torch.float32)
        total = self.new_accumulator(tuple(tile_outputs.shape[1:-2]), tile_outputs.device, accumulate_dtype)
        for index, tile_output in enumerate(tile_outputs):
            self.add_tile(total, index, tile_output)
        return self.normalise(total).to(tile_outputs.dtype)
