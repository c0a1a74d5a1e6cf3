"""Degradation stages and pipelines: basicsr shim, per-stage statistics, determinism, sizes, every YAML."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sr.compat.basicsr import DiffJPEG, USMSharp, _basicsr_filter2D, filter2D
from sr.data.degradations import (
    DegradationContext,
    DegradationPipeline,
    RandomBlur,
    RandomJPEG,
    RandomNoise,
    RandomResize,
    RandomSincFilter,
    USMSharpen,
    _distinct_levels,
    apply_kernels,
    lr_size,
    numpy_rng,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "degradation"
PIPELINE_FILES = sorted(CONF.glob("*.yaml"))
GAUSSIAN_FAMILY = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]


def load_pipeline(name: str, scale: float | None = None) -> DegradationPipeline:
    config = OmegaConf.load(CONF / f"{name}.yaml")
    if scale is not None:
        config.scale = scale
    return instantiate(config)


def smooth_batch(batch: int = 2, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """Natural-ish test images: low-frequency random fields in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((batch, 3, max(height // 8, 2), max(width // 8, 2)), generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)


def test_torchvision_functional_tensor_alias():
    from torchvision.transforms import functional_tensor

    image = torch.rand(1, 3, 4, 4)
    expected = 0.2989 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]
    torch.testing.assert_close(functional_tensor.rgb_to_grayscale(image)[:, 0], expected, atol=1e-6, rtol=0)


def test_filter2d_on_diffjpeg_output():
    jpeg = DiffJPEG(differentiable=False)(smooth_batch(2, 32, 32), quality=torch.tensor([70.0, 90.0]))
    kernel = torch.rand(2, 5, 5)
    with pytest.raises(RuntimeError):
        _basicsr_filter2D(jpeg, kernel)
    padded = F.pad(jpeg.contiguous(), (2, 2, 2, 2), mode="reflect")
    expected = torch.stack([F.conv2d(padded[i : i + 1].transpose(0, 1), kernel[i][None, None]).transpose(0, 1)[0]
                            for i in range(2)])
    torch.testing.assert_close(filter2D(jpeg, kernel), expected, atol=1e-5, rtol=0)


def test_usm_sharpen_matches_basicsr_usmsharp():
    image = smooth_batch(3, 64, 64)
    torch.testing.assert_close(USMSharpen()(image), USMSharp()(image), atol=0, rtol=0)


def test_blur_kernels_sum_to_one_with_configured_sizes():
    blur = RandomBlur(GAUSSIAN_FAMILY, [0.45, 0.25, 0.12, 0.03, 0.12, 0.03], [0.2, 1.5], [0.5, 2.0], [1, 1.5], 0.1)
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(300):
        kernel = blur.sample_kernel(rng)
        assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1 and 7 <= kernel.shape[0] <= 21
        assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.isfinite(kernel).all()
        sizes.add(kernel.shape[0])
    assert sizes == set(range(7, 22, 2))


def test_isotropic_gaussian_kernel_is_symmetric_and_has_sampled_sigma():
    blur = RandomBlur(["iso"], [1.0], [1.0, 1.0], [0.5, 2.0], [1, 1.5], 0.0, kernel_sizes=[21])
    kernel = blur.sample_kernel(np.random.default_rng(1))
    grid = np.arange(21) - 10
    variance_x = (kernel.sum(axis=0) * grid**2).sum()
    assert variance_x == pytest.approx(1.0, rel=1e-3)  # sigma 1: the 21-tap truncation loses ~nothing
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-12)


def test_final_sinc_filter_probability_and_padding():
    sinc = RandomSincFilter(prob=0.8)
    rng = np.random.default_rng(0)
    kernels = [sinc.sample_kernel(rng) for _ in range(400)]
    assert all(k.shape == (21, 21) and k.sum() == pytest.approx(1.0, abs=1e-6) for k in kernels)
    delta_share = np.mean([np.count_nonzero(k) == 1 for k in kernels])
    assert 0.15 < delta_share < 0.25


def test_gaussian_noise_std_matches_sampled_sigma():
    noise = RandomNoise(gaussian_noise_prob=1.0, noise_range=[2, 15], poisson_scale_range=[0.05, 2], gray_noise_prob=0.0)
    image = torch.full((6, 3, 96, 96), 0.5)
    noisy = noise(image, DegradationContext((96, 96), 1), torch.Generator().manual_seed(3))
    _, sigma, _ = noise.sample(numpy_rng(torch.Generator().manual_seed(3)), 6)
    measured = (noisy - image).flatten(1).std(dim=1) * 255
    assert ((sigma >= 2) & (sigma <= 15)).all()
    np.testing.assert_allclose(measured.numpy(), sigma, rtol=0.05)


def test_gray_noise_is_shared_by_channels_and_poisson_levels_count():
    noise = RandomNoise(gaussian_noise_prob=0.0, noise_range=[1, 15], poisson_scale_range=[1, 2], gray_noise_prob=1.0)
    image = smooth_batch(2, 32, 32)
    noisy = noise(image, DegradationContext((32, 32), 1), torch.Generator().manual_seed(0))
    delta = noisy - image
    interior = (image > 0.05) & (image < 0.95) & (noisy > 0) & (noisy < 1)  # away from clipping
    assert interior.all(dim=1).any()
    mask = interior.all(dim=1)
    torch.testing.assert_close(delta[:, 0][mask], delta[:, 1][mask], atol=1e-6, rtol=0)
    assert delta.abs().max() > 0
    levels = torch.clamp((image * 255).round(), 0, 255)
    assert _distinct_levels(levels).tolist() == [len(torch.unique(levels[i])) for i in range(2)]


def test_jpeg_changes_image_with_quality_in_range():
    jpeg = RandomJPEG(quality_range=[60, 95])
    image = smooth_batch(4, 32, 32)
    out = jpeg(image, DegradationContext((32, 32), 1), torch.Generator().manual_seed(5))
    qualities = jpeg.sample(numpy_rng(torch.Generator().manual_seed(5)), 4)
    assert ((qualities >= 60) & (qualities <= 95)).all()
    expected = DiffJPEG(differentiable=False)(image, quality=torch.tensor(qualities, dtype=torch.float32))
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert (out - image).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="quality_range"):
        RandomJPEG(quality_range=[0, 120])


def test_resize_factor_and_mode_in_range():
    resize = RandomResize(resize_prob=[0.2, 0.7, 0.1], resize_range=[0.3, 1.5])
    rng = np.random.default_rng(0)
    samples = [resize.sample(rng) for _ in range(2000)]
    factors = np.array([factor for factor, _ in samples])
    assert ((factors >= 0.3) & (factors <= 1.5)).all()
    assert np.mean(factors > 1) == pytest.approx(0.2, abs=0.03)
    assert np.mean(factors < 1) == pytest.approx(0.7, abs=0.03)
    assert {mode for _, mode in samples} == {"area", "bilinear", "bicubic"}
    out = resize(torch.rand(1, 3, 50, 40), DegradationContext((50, 40), 4), torch.Generator().manual_seed(2))
    factor, _ = resize.sample(numpy_rng(torch.Generator().manual_seed(2)))
    assert out.shape[-2:] == (int(50 * factor), int(40 * factor))


def test_same_seed_same_lr_and_global_rng_untouched():
    pipeline = load_pipeline("realesrgan")
    gt = smooth_batch(2, 64, 64)
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    first, target = pipeline(gt, torch.Generator().manual_seed(7))
    second, _ = pipeline(gt, torch.Generator().manual_seed(7))
    other, _ = pipeline(gt, torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    assert random.getstate() == python_state
    torch.testing.assert_close(target, USMSharp()(gt), atol=0, rtol=0)  # sharpened GT is the target


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=[p.stem for p in PIPELINE_FILES])
@pytest.mark.parametrize("scale", [2, 4, 8, 2.5])
def test_every_pipeline_gives_exact_lr_size(path, scale):
    pipeline = load_pipeline(path.stem, scale)
    assert isinstance(pipeline, DegradationPipeline) and pipeline.scale == scale
    height, width = int(20 * scale) + 3, int(24 * scale)  # LR >= 11 px after the second-stage shrink (sinc pad 10)
    gt = smooth_batch(2, height, width)
    lq, target = pipeline(gt, torch.Generator().manual_seed(0))
    assert lq.shape == (2, 3, int(height / scale), int(width / scale)) == (2, 3, *lr_size((height, width), scale))
    assert target.shape == gt.shape
    assert lq.min() >= 0 and lq.max() <= 1 and torch.isfinite(lq).all()


def test_realesrgan_configs_match_stablesr_recipe():
    pipeline_512, pipeline_768 = load_pipeline("realesrgan"), load_pipeline("realesrgan_768v")
    assert pipeline_512.no_degradation_prob == 0.01 and pipeline_768.no_degradation_prob == 0.0
    assert isinstance(pipeline_512.gt_sharpener, USMSharpen) and pipeline_768.gt_sharpener is None
    last_jpeg_512 = pipeline_512.stages[-1].branches[0][-1]
    last_jpeg_768 = pipeline_768.stages[-1].branches[0][-1]
    assert last_jpeg_512.quality_range == (60, 100) and last_jpeg_768.quality_range == (60, 95)
    second_blur = pipeline_512.stages[4]
    assert second_blur.apply_prob == 0.5 and second_blur.blur_sigma == (0.2, 1.0)


def test_bicubic_pipeline_is_antialiased_downscale():
    gt = smooth_batch(2, 64, 64)
    lq, target = load_pipeline("bicubic")(gt, torch.Generator().manual_seed(0))
    expected = F.interpolate(gt, size=(16, 16), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(lq, expected, atol=0, rtol=0)
    assert target is gt


def test_pipeline_must_end_at_target_size():
    pipeline = DegradationPipeline(scale=4, stages=[])
    with pytest.raises(ValueError, match="ResizeToTarget"):
        pipeline(torch.rand(1, 3, 32, 32), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        pipeline(torch.rand(3, 32, 32), torch.Generator().manual_seed(0))
    assert math.isclose(load_pipeline("realesrgan", 2.5).scale, 2.5)


def test_apply_kernels_trims_zero_border_without_changing_result():
    image = smooth_batch(2, 40, 40)
    small = np.zeros((2, 21, 21))
    small[:, 7:14, 7:14] = np.random.default_rng(0).uniform(size=(2, 7, 7))
    small /= small.sum(axis=(1, 2), keepdims=True)
    full = _basicsr_filter2D(image, torch.from_numpy(small).float())
    torch.testing.assert_close(apply_kernels(image, small), full, atol=1e-6, rtol=0)
    tiny = apply_kernels(torch.rand(2, 3, 6, 6), np.stack([np.full((21, 21), 1 / 441)] * 2))
    assert tiny.shape == (2, 3, 6, 6) and torch.isfinite(tiny).all()
