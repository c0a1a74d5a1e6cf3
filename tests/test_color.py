"""Colour correction against an independent numpy computation (index clipping instead of padding + conv), and grey in,
grey out against the metrics' own Y."""

import numpy as np
import pytest
import torch

from sr.ops.color import (
    adain_color_fix,
    color_fix,
    grey_items,
    keep_grey,
    luma,
    wavelet_color_fix,
)


def _numpy_adain(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            xs, rs = x[b, c], ref[b, c]
            sx = np.sqrt(xs.var(ddof=1) + 1e-5)
            sr = np.sqrt(rs.var(ddof=1) + 1e-5)
            out[b, c] = (xs - xs.mean()) / sx * sr + rs.mean()
    return out


def _numpy_blur(img: np.ndarray, r: int) -> np.ndarray:
    """Replicate padding written as clipped indices; kernel as the outer product of [1,2,1]/4."""
    h, w = img.shape[-2:]
    taps = {-1: 0.25, 0: 0.5, 1: 0.25}
    out = np.zeros_like(img)
    for dy, ky in taps.items():
        rows = np.clip(np.arange(h) + dy * r, 0, h - 1)
        for dx, kx in taps.items():
            cols = np.clip(np.arange(w) + dx * r, 0, w - 1)
            out += ky * kx * img[..., rows[:, None], cols[None, :]]
    return out


def _numpy_wavelet_decompose(img: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    high = np.zeros_like(img)
    low = img
    for i in range(levels):
        nxt = _numpy_blur(low, 2**i)
        high += low - nxt
        low = nxt
    return high, low


@pytest.mark.parametrize("channels", [1, 3])
def test_adain_matches_numpy_and_reference_statistics(channels):
    x = torch.rand(2, channels, 13, 17, dtype=torch.float64) * 2 - 1
    ref = 0.3 * torch.rand(2, channels, 13, 17, dtype=torch.float64) - 0.1
    out = adain_color_fix(x, ref)
    np.testing.assert_allclose(out.numpy(), _numpy_adain(x.numpy(), ref.numpy()), rtol=1e-10, atol=1e-12)
    # Per-channel statistics equal the reference's (std up to the 1e-5 regulariser inside sigma).
    torch.testing.assert_close(out.mean(dim=(2, 3)), ref.mean(dim=(2, 3)), rtol=0, atol=1e-12)
    x_var, ref_var = x.flatten(2).var(dim=2), ref.flatten(2).var(dim=2)
    out_std = out.flatten(2).std(dim=2)
    expected_std = torch.sqrt(x_var / (x_var + 1e-5) * (ref_var + 1e-5))
    torch.testing.assert_close(out_std, expected_std, rtol=1e-10, atol=0)
    ref_std = ref_var.sqrt()
    torch.testing.assert_close(out_std, ref_std, rtol=2e-3, atol=0)


def test_adain_reference_may_have_another_size():
    x = torch.rand(1, 3, 10, 12) * 2 - 1
    ref = torch.rand(1, 3, 31, 7) * 0.5
    out = adain_color_fix(x, ref)
    assert out.shape == x.shape
    torch.testing.assert_close(out.mean(dim=(2, 3)), ref.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    ref_std = np.sqrt(ref.numpy().reshape(3, -1).var(axis=1, ddof=1) + 1e-5)
    x_var = x.numpy().reshape(3, -1).var(axis=1, ddof=1)
    expected_std = ref_std * np.sqrt(x_var / (x_var + 1e-5))
    np.testing.assert_allclose(out.flatten(2).std(dim=2)[0].numpy(), expected_std, rtol=1e-5)


@pytest.mark.parametrize("channels,size", [(3, (40, 37)), (1, (9, 11))])
def test_wavelet_matches_numpy(channels, size):
    # 9x11 is smaller than the dilation-16 footprint: replicate padding must still be exact.
    x = torch.rand(2, channels, *size, dtype=torch.float64) * 2 - 1
    ref = torch.rand(2, channels, *size, dtype=torch.float64) * 2 - 1
    out = wavelet_color_fix(x, ref, levels=5)
    high_x, _ = _numpy_wavelet_decompose(x.numpy(), 5)
    _, low_ref = _numpy_wavelet_decompose(ref.numpy(), 5)
    np.testing.assert_allclose(out.numpy(), high_x + low_ref, rtol=0, atol=1e-12)


def test_wavelet_keeps_constant_reference_colour_and_detail():
    ref = torch.full((1, 3, 32, 32), 0.25)
    x = torch.full((1, 3, 32, 32), -0.5)
    out = wavelet_color_fix(x, ref)
    torch.testing.assert_close(out, ref)
    # With x as its own reference nothing changes: high(x) + low(x) = x.
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(wavelet_color_fix(x, x), x, rtol=0, atol=1e-6)


def test_color_fix_dispatch_and_errors():
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    ref = torch.rand(1, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(color_fix(x, ref, "adain"), adain_color_fix(x, ref))
    torch.testing.assert_close(color_fix(x, ref, "wavelet"), wavelet_color_fix(x, ref))
    assert color_fix(x, ref, "none") is x
    with pytest.raises(ValueError, match="unknown colour fix method 'histogram'"):
        color_fix(x, ref, "histogram")
    with pytest.raises(ValueError, match="same shape"):
        color_fix(x, ref[:, :1], "adain")
    with pytest.raises(ValueError, match="same shape"):
        color_fix(x, ref[..., :4], "wavelet")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        color_fix(x[0], ref[0], "wavelet")


def _ycbcr_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 YCbCr Y of ``[B, 3, H, W]`` in [0, 1] written as pyiqa's ``ycbcr`` (studio range): Y = 16/255 +
    (65.481 R + 128.553 G + 24.966 B) / 255, an affine map of the luma the Y metrics score."""
    return 16 / 255 + np.einsum("c,bchw->bhw", np.array([65.481, 128.553, 24.966]) / 255, rgb)


def test_keep_grey_makes_grey_inputs_luma_and_keeps_their_y():
    output = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(0))   # tinted, as the model's outputs
    grey = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    colour = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    source = torch.cat([grey.expand(-1, 3, -1, -1), colour, grey.expand(-1, 3, -1, -1)])  # grey, colour, grey
    assert grey_items(source).tolist() == [True, False, True]
    kept = keep_grey(output, source)
    assert kept.shape == output.shape
    for index in (0, 2):   # grey sources: three exactly equal channels, the luma 0.299 R + 0.587 G + 0.114 B
        assert torch.equal(kept[index, 0], kept[index, 1]) and torch.equal(kept[index, 1], kept[index, 2])
        expected = np.einsum("c,chw->hw", np.array([0.299, 0.587, 0.114]), output[index].double().numpy())
        np.testing.assert_allclose(kept[index, 0].double().numpy(), expected, rtol=0, atol=1e-6)
    assert torch.equal(kept[1], output[1])   # a colour source is untouched
    # the Y that PSNR-Y / SSIM-Y score, computed another way (studio-range YCbCr), does not move
    np.testing.assert_allclose(_ycbcr_y(kept.double().numpy()), _ycbcr_y(output.double().numpy()), rtol=0, atol=1e-6)
    # a one-channel source gives one channel, the same luma; an already grey output comes back bit for bit
    assert torch.equal(keep_grey(output[:1], grey), kept[:1, :1])
    assert torch.equal(keep_grey(kept, source), kept) and torch.equal(luma(kept[:1]), kept[:1, :1])


def test_keep_grey_needs_exactly_equal_channels_and_an_rgb_output():
    source = torch.full((1, 3, 2, 2), 0.5)
    source[0, 2, 1, 1] = 0.5 + 2**-20   # one pixel a hair off grey: a colour image
    assert grey_items(source).tolist() == [False]
    output = torch.rand(1, 3, 4, 4)
    assert torch.equal(keep_grey(output, source), output)
    with pytest.raises(ValueError, match="RGB output"):
        keep_grey(output[:, :1], source)
    with pytest.raises(ValueError, match="RGB output"):
        keep_grey(output, source.expand(2, -1, -1, -1))
