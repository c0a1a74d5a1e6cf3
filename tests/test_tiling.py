"""Tile grid offsets, Gaussian weights and weighted aggregation."""

import itertools
import math
import random

import numpy as np
import pytest
import torch

from sr.ops.tiling import TileGrid, gaussian_weights, tile_starts


@pytest.mark.parametrize(
    "length,expected",
    [(64, [0]), (96, [0, 32]), (128, [0, 32, 64]), (200, [0, 32, 64, 96, 128, 136])],
)
def test_tile_starts_spec_examples(length, expected):
    assert tile_starts(length, tile=64, overlap=32) == expected


def test_tile_starts_cover_every_position_with_fewest_tiles():
    rng = random.Random(0)
    for _ in range(300):
        tile = rng.randint(1, 40)
        overlap = rng.randint(0, tile - 1)
        length = rng.randint(tile, 300)
        stride = tile - overlap
        starts = tile_starts(length, tile, overlap)
        covered = np.zeros(length, dtype=bool)
        for start in starts:
            covered[start : start + tile] = True
        assert covered.all()
        assert starts[0] == 0 and starts[-1] == length - tile
        assert all(b - a == stride for a, b in itertools.pairwise(starts[:-1]))
        # Minimal: one tile fewer on the regular grid could not reach the end.
        assert (len(starts) - 2) * stride + tile < length or len(starts) == 1


@pytest.mark.parametrize(
    "length,tile,overlap,message",
    [(10, 16, 4, "shorter than the tile"), (64, 16, 16, "overlap"), (64, 16, -1, "overlap"), (64, 0, 0, "positive")],
)
def test_tile_starts_rejects_bad_arguments(length, tile, overlap, message):
    with pytest.raises(ValueError, match=message):
        tile_starts(length, tile, overlap)


def test_gaussian_weights_formula_and_symmetry():
    weights = gaussian_weights(6, 9, var=0.01)
    assert weights.dtype == torch.float64 and weights.shape == (6, 9)

    def profile(n):
        return [math.exp(-((i - (n - 1) / 2) ** 2) / n**2 / 0.02) / math.sqrt(2 * math.pi * 0.01) for i in range(n)]

    expected = np.array([[wy * wx for wx in profile(9)] for wy in profile(6)])
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-12)
    # Both axes centred at (size - 1)/2 (the official y-centre H/2 is the fixed quirk).
    torch.testing.assert_close(weights, weights.flip(0))
    torch.testing.assert_close(weights, weights.flip(1))
    # Spec numbers for a 64x64 latent tile: edge/peak ~= 5.5e-6 per axis.
    profile_64 = gaussian_weights(64, 64)[31]
    assert profile_64[0] / profile_64.max() == pytest.approx(5.5e-6, rel=0.05)


@pytest.mark.parametrize("tile_h,tile_w", [(64, 64), (96, 96), (7, 12), (1, 5)])
def test_official_weights_equal_the_released_formula(tile_h, tile_w):
    # docs/method.md#aggregation: wx[i] = exp(-(i-(W-1)/2)^2/W^2/(2*0.01))/sqrt(2*pi*0.01), wy[j] the same with centre H/2.
    def profile(n, centre):
        return np.exp(-((np.arange(n) - centre) ** 2) / n**2 / 0.02) / np.sqrt(2 * np.pi * 0.01)

    expected = np.outer(profile(tile_h, tile_h / 2), profile(tile_w, (tile_w - 1) / 2))
    weights = gaussian_weights(tile_h, tile_w, weighting="official")
    assert weights.dtype == torch.float64
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-12, atol=0)
    assert torch.equal(TileGrid.build(tile_h + 3, tile_w, (tile_h, tile_w), 0, weighting="official").weights, weights)


def test_official_weights_are_symmetric_about_half_the_height_and_differ_from_centred_only_in_y():
    official, centred = gaussian_weights(64, 64, weighting="official"), gaussian_weights(64, 64)
    # y mirrored about H/2 = 32: row 32 + d equals row 32 - d; x still symmetric about (W-1)/2.
    torch.testing.assert_close(official[33:], official[1:32].flip(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(official, official.flip(1), rtol=1e-14, atol=0)
    assert not torch.allclose(official, official.flip(0))
    # Same x profile (up to the y profile's scale), shifted y profile: the peak row moves from 31 (tie 31/32) to 32.
    torch.testing.assert_close(official[32] / official[32, 0], centred[32] / centred[32, 0], rtol=1e-12, atol=0)
    assert int(official[:, 0].argmax()) == 32 and centred[31, 0] == centred[32, 0]


def test_unknown_tile_weighting_is_refused():
    with pytest.raises(ValueError, match="unknown tile weighting 'offcial'"):
        TileGrid.build(16, 16, 8, 4, weighting="offcial")


def _numpy_blend(tiles: np.ndarray, starts: list[tuple[int, int]], weight: np.ndarray, height: int, width: int):
    numerator = np.zeros(tiles.shape[1:-2] + (height, width))
    denominator = np.zeros((height, width))
    th, tw = weight.shape
    for tile_value, (y, x) in zip(tiles, starts):
        for j in range(th):
            for i in range(tw):
                numerator[..., y + j, x + i] += weight[j, i] * tile_value[..., j, i]
                denominator[y + j, x + i] += weight[j, i]
    return numerator / denominator


@pytest.mark.parametrize("weighting", ["centred", "official"])
def test_aggregate_matches_pixelwise_weighted_average(weighting):
    grid = TileGrid.build(height=21, width=30, tile=(8, 12), overlap=(3, 5), weighting=weighting)
    tiles = torch.randn(len(grid), 2, 3, 8, 12, dtype=torch.float64)
    starts = [(rows.start, cols.start) for rows, cols in grid.slices]
    expected = _numpy_blend(tiles.numpy(), starts, gaussian_weights(8, 12, weighting=weighting).numpy(), 21, 30)
    out = grid.aggregate(tiles)
    assert out.shape == (2, 3, 21, 30)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_constant_field_stays_constant_and_crops_reassemble():
    grid = TileGrid.build(height=200, width=96, tile=64, overlap=32)
    assert len(grid) == 6 * 2
    constant = torch.full((len(grid), 4, 64, 64), 0.7)
    torch.testing.assert_close(grid.aggregate(constant), torch.full((4, 200, 96), 0.7))
    image = torch.randn(1, 4, 200, 96)
    torch.testing.assert_close(grid.aggregate(grid.crop(image)), image, rtol=1e-5, atol=1e-5)


def test_every_pixel_has_positive_weight_for_random_grids():
    rng = random.Random(1)
    for _ in range(40):
        tile_h, tile_w = rng.randint(2, 48), rng.randint(2, 48)
        grid = TileGrid.build(
            height=rng.randint(tile_h, 160),
            width=rng.randint(tile_w, 160),
            tile=(tile_h, tile_w),
            overlap=(rng.randint(0, tile_h - 1), rng.randint(0, tile_w - 1)),
        )
        assert torch.isfinite(grid.inverse_weight_sum).all()
        assert (grid.inverse_weight_sum > 0).all()


def test_aggregate_keeps_half_precision_dtype_and_checks_shapes():
    grid = TileGrid.build(height=40, width=40, tile=16, overlap=8)
    tiles = torch.ones(len(grid), 1, 16, 16, dtype=torch.bfloat16)
    out = grid.aggregate(tiles)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, torch.ones(1, 40, 40, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="expected 16 tiles of size"):
        grid.aggregate(tiles[:-1])
    with pytest.raises(ValueError, match="does not match the tile grid"):
        grid.crop(torch.zeros(1, 40, 41))
