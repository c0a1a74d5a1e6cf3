"""sr.metrics: formulas against independent numpy/skimage computations, stand-in networks, missing weights."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity
from torch import nn

from sr.io import read_image
from sr.metrics import (
    FID,
    LOWER_IS_BETTER,
    LPIPS,
    METRICS,
    MetricSuite,
    clean_resize,
    quantize_8bit,
    split_into_patches,
)
from sr.metrics.full_reference import LPIPS_FEATURE_CHANNELS

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def _noisy(image: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return quantize_8bit((image + sigma * torch.randn(image.shape, generator=generator)).clamp(0, 1))


def _numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """10 log10(1 / (MSE + 1e-8)): the stated formula, eps included."""
    return 10.0 * math.log10(1.0 / (np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) + 1e-8))


class StandInLPIPSBackbone(nn.Module):
    """Five random conv stages with the AlexNet LPIPS channel counts."""

    def __init__(self):
        super().__init__()
        channels = (3,) + LPIPS_FEATURE_CHANNELS["alex"]
        self.stages = nn.ModuleList(nn.Conv2d(channels[i], channels[i + 1], 3, padding=1) for i in range(5))

    def forward(self, image):
        features = []
        for stage in self.stages:
            image = torch.relu(stage(image))
            features.append(image)
        return features


class StandInFIDExtractor(nn.Module):
    """uint8 [N,3,299,299] -> [N,8]: colours pooled on a 2x2 grid, through a fixed random linear layer."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(12, 8)

    def forward(self, images):
        pooled = nn.functional.adaptive_avg_pool2d(images.float() / 255.0, 2).flatten(1)
        return self.project(pooled)


@pytest.fixture(scope="module")
def camera() -> torch.Tensor:
    return read_image(SAMPLES / "heldout" / "camera.png").rgb[None]


def test_identical_images_give_capped_psnr_and_unit_ssim(camera):
    suite = MetricSuite(["psnr", "ssim", "psnr_y", "ssim_y", "psnr_ycbcr", "ssim_ycbcr"], crop_border=4)
    scores = suite.score_image(camera, camera.clone(), "camera")
    for name in ("psnr", "psnr_y", "psnr_ycbcr"):
        assert scores[name] == pytest.approx(80.0)  # 10 log10(1 / 1e-8): the stated cap
    for name in ("ssim", "ssim_y", "ssim_ycbcr"):
        assert scores[name] == pytest.approx(1.0, abs=1e-12)


def test_gaussian_noise_psnr_matches_numpy_on_rgb_and_both_lumas(camera):
    crop = 4
    sr = _noisy(camera, 0.05, seed=1)
    scores = MetricSuite(["psnr", "psnr_y", "psnr_ycbcr"], crop_border=crop).score_image(sr, camera, "camera")
    a = sr[0].permute(1, 2, 0).numpy().astype(np.float64)[crop:-crop, crop:-crop]
    b = camera[0].permute(1, 2, 0).numpy().astype(np.float64)[crop:-crop, crop:-crop]
    luma = np.array([0.299, 0.587, 0.114])
    ycbcr = np.array([65.481, 128.553, 24.966])
    assert scores["psnr"] == pytest.approx(_numpy_psnr(a, b), abs=1e-5)
    assert scores["psnr_y"] == pytest.approx(_numpy_psnr(a @ luma, b @ luma), abs=1e-5)
    assert scores["psnr_ycbcr"] == pytest.approx(_numpy_psnr((a @ ycbcr + 16) / 255, (b @ ycbcr + 16) / 255), abs=1e-5)
    # the studio-swing luma spans 219/255 of the range, so its PSNR is higher by 20 log10(255/219)
    assert scores["psnr_ycbcr"] - scores["psnr_y"] == pytest.approx(20 * math.log10(255 / 219), abs=1e-4)
    expected_noise_psnr = -20 * math.log10(0.05)
    assert abs(scores["psnr"] - expected_noise_psnr) < 1.0  # clipping at 0/1 only lowers the noise a little


@pytest.mark.parametrize(
    ("name", "weights", "offset"),
    [("ssim_y", (0.299, 0.587, 0.114), 0.0), ("ssim_ycbcr", (65.481 / 255, 128.553 / 255, 24.966 / 255), 16 / 255)],
)
def test_ssim_on_a_luma_matches_skimage_on_the_rounded_luma(camera, name, weights, offset):
    sr = _noisy(camera, 0.08, seed=2)
    score = MetricSuite([name], crop_border=0).score_image(sr, camera, "camera")[name]
    y_sr, y_hr = (
        np.round((img[0].permute(1, 2, 0).numpy().astype(np.float64) @ np.array(weights) + offset) * 255)
        for img in (sr, camera)
    )
    reference = structural_similarity(
        y_sr, y_hr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert score == pytest.approx(reference, abs=1e-6)
    assert 0.2 < score < 0.95


@pytest.mark.skipif(importlib.util.find_spec("pyiqa") is None, reason="pyiqa not installed")
def test_psnr_and_ssim_equal_pyiqa_default_metrics(camera):
    """The registry's PSNR/SSIM are pyiqa's named metrics (the published protocol), crop 0, float64 inputs."""
    import pyiqa

    sr = _noisy(camera, 0.05, seed=3)
    scores = MetricSuite(["psnr", "ssim", "psnr_y", "ssim_y"], crop_border=0).score_image(sr, camera, "camera")
    for ours, theirs in (("psnr", "psnr"), ("ssim", "ssimc"), ("psnr_y", "psnry"), ("ssim_y", "ssim")):
        metric = pyiqa.create_metric(theirs, device="cpu")
        assert scores[ours] == pytest.approx(metric(sr.double(), camera.double()).item(), abs=1e-9), ours


@pytest.mark.skipif(importlib.util.find_spec("pyiqa") is None, reason="pyiqa not installed")
def test_registry_directions_agree_with_pyiqa():
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    pyiqa_names = {"lpips_alex": "lpips", "lpips_vgg": "lpips-vgg", "psnr_ycbcr": "psnr", "ssim_ycbcr": "ssim"}
    pyiqa_names |= {"ssim": "ssimc", "psnr_y": "psnry", "ssim_y": "ssim", "fid_patch": "fid"}
    for name, spec in METRICS.items():
        pyiqa_config = DEFAULT_CONFIGS[pyiqa_names.get(name, name)]
        assert spec.lower_is_better == pyiqa_config.get("lower_better", False), name
        assert spec.backend.startswith("pyiqa ") or spec.backend.startswith("own: "), name
        assert (spec.name in LOWER_IS_BETTER) == spec.lower_is_better


def test_lpips_with_stand_in_backbone_is_zero_for_identical_and_matches_formula(camera):
    backbone = StandInLPIPSBackbone().eval()
    lpips_metric = LPIPS("alex", backbone=backbone)
    hr = camera[..., :64, :64]
    sr = _noisy(hr, 0.1, seed=4)
    assert lpips_metric(hr, hr).item() == pytest.approx(0.0, abs=1e-7)
    distance = lpips_metric(sr, hr).item()

    # independent evaluation of the LPIPS v0.1 formula with the published scaling constants
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    with torch.no_grad():
        feats_sr = backbone(((2 * sr - 1) - shift) / scale)
        feats_hr = backbone(((2 * hr - 1) - shift) / scale)
        expected = 0.0
        for layer, (f_sr, f_hr) in enumerate(zip(feats_sr, feats_hr)):
            unit_sr = f_sr / (f_sr.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            unit_hr = f_hr / (f_hr.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            head = lpips_metric.model.lins[layer].model[-1].weight.view(1, -1, 1, 1)
            expected += ((unit_sr - unit_hr).pow(2) * head).sum(1).mean().item()
    assert distance > 0
    assert distance == pytest.approx(expected, rel=1e-4)


def test_suite_lpips_uses_injected_backbone(camera):
    suite = MetricSuite(["lpips_alex"], crop_border=0, lpips_backbones={"alex": StandInLPIPSBackbone()})
    hr = camera[..., :48, :48]
    assert suite.score_image(hr, hr, "same")["lpips_alex"] == pytest.approx(0.0, abs=1e-7)
    assert suite.score_image(_noisy(hr, 0.2, seed=5), hr, "noisy")["lpips_alex"] > 0


def test_split_into_patches_is_row_major_and_drops_remainder():
    image = torch.arange(3 * 5 * 7).view(3, 5, 7)
    patches = split_into_patches(image, 2)
    assert patches.shape == (2 * 3, 3, 2, 2)
    assert torch.equal(patches[1], image[:, 0:2, 2:4])
    assert torch.equal(patches[3], image[:, 2:4, 0:2])


def test_clean_resize_is_per_channel_pil_bicubic_in_float():
    image = (torch.rand(3, 40, 30) * 255).round().to(torch.uint8)
    resized = clean_resize(image, size=299)
    reference = np.asarray(
        Image.fromarray(image[1].numpy().astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC)
    )
    assert resized.shape == (3, 299, 299)
    assert np.allclose(resized[1].numpy(), reference.clip(0, 255))


def _uint8_set(count: int, seed: int, brightness: float) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(3, 48, 64, generator=generator) * 255 * brightness).round().to(torch.uint8) for _ in range(count)
    ]


def test_fid_with_stand_in_extractor_is_zero_for_same_set_and_matches_scipy():
    from scipy import linalg

    extractor = StandInFIDExtractor().eval()
    fid = FID(extractor, batch_size=4)
    first, second = _uint8_set(6, seed=0, brightness=1.0), _uint8_set(6, seed=1, brightness=0.5)
    same = fid(first, first)
    assert same.value == pytest.approx(0.0, abs=1e-4)
    assert (same.sr_images, same.hr_images, same.sr_samples) == (6, 6, 6)

    different = fid(first, second).value
    with torch.no_grad():
        features = [
            extractor(torch.stack([clean_resize(im).round().to(torch.uint8) for im in group])).double().numpy()
            for group in (first, second)
        ]
    mu = [f.mean(0) for f in features]
    sigma = [np.cov(f, rowvar=False) for f in features]
    covmean = linalg.sqrtm(sigma[0] @ sigma[1]).real
    expected = np.sum((mu[0] - mu[1]) ** 2) + np.trace(sigma[0] + sigma[1] - 2 * covmean)
    assert different > 0.01
    assert different == pytest.approx(expected, rel=1e-3)


def test_patch_fid_counts_patches_and_suite_reads_folders(tmp_path):
    sr_set, hr_set = _uint8_set(3, seed=2, brightness=1.0), _uint8_set(3, seed=3, brightness=0.7)
    result = FID(StandInFIDExtractor(), patch_size=24)(sr_set, hr_set)
    assert result.sr_samples == 3 * (48 // 24) * (64 // 24)
    for folder, images in (("sr", sr_set), ("hr", hr_set)):
        (tmp_path / folder).mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / folder / f"{index}.png")
    suite = MetricSuite(
        ["fid", "fid_patch"], crop_border=0, fid_feature_extractor=StandInFIDExtractor(), fid_patch_size=24
    )
    from_folders = suite.set_level(tmp_path / "sr", tmp_path / "hr")
    from_tensors = suite.set_level([im[None].float() / 255 for im in sr_set], [im.float() / 255 for im in hr_set])
    assert from_folders["fid"]["n"] == 3
    assert from_folders["fid"]["mean"] == pytest.approx(from_tensors["fid"]["mean"], rel=1e-6)
    assert from_folders["fid_patch"]["mean"] == pytest.approx(from_tensors["fid_patch"]["mean"], rel=1e-6)
    with pytest.warns(UserWarning, match="at least 2 samples"):
        assert suite.set_level(sr_set[:1], hr_set)["fid"].startswith("n/a (FID needs at least 2 samples")


def test_missing_weights_are_reported_not_guessed(tmp_path, monkeypatch, camera):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.warns(UserWarning, match="missing"):
        suite = MetricSuite(["psnr_y", "lpips_alex", "lpips_vgg", "musiq", "clipiqa", "maniqa", "fid"], crop_border=0)
    checkpoints = tmp_path / "empty_torch_home" / "hub" / "checkpoints"
    expected = {
        "lpips_alex": checkpoints / "alexnet-owt-7be5be79.pth",
        "lpips_vgg": checkpoints / "vgg16-397923af.pth",
        "fid": checkpoints / "weights-inception-2015-12-05-6726825d.pth",
        "musiq": tmp_path / "empty_torch_home" / "hub" / "pyiqa" / "musiq_koniq_ckpt-e95806b9.pth",
        "clipiqa": tmp_path / "empty_torch_home" / "hub" / "clip" / "RN50.pt",
        "maniqa": tmp_path / "empty_torch_home" / "hub" / "pyiqa" / "ckpt_koniq10k.pt",
    }
    if importlib.util.find_spec("pyiqa") is None:
        expected = {k: v for k, v in expected.items() if k not in ("musiq", "clipiqa", "maniqa")}
    scores = suite.score_image(camera, camera, "camera")
    for name, path in expected.items():
        value = scores[name] if name != "fid" else suite.set_level([camera, camera], [camera, camera])["fid"]
        # written below $TORCH_HOME, not as this machine's path: scores and reports read the same everywhere
        location = "$TORCH_HOME/" + path.relative_to(tmp_path / "empty_torch_home").as_posix()
        assert value == f"n/a (missing {path.name}, expected at {location})"
    assert scores["psnr_y"] == pytest.approx(80.0)
    assert not (tmp_path / "empty_torch_home" / "hub" / "checkpoints").exists()  # nothing was downloaded
    summary = suite.summary({"camera": scores})
    assert summary["lpips_alex"] == scores["lpips_alex"]
    assert summary["psnr_y"] == {"mean": pytest.approx(80.0), "std": 0.0, "n": 1}


def test_niqe_on_a_real_image_is_finite_and_worse_with_noise(camera):
    suite = MetricSuite(["niqe"], crop_border=0)
    clean = suite.score_image(camera, None, "camera")["niqe"]
    noisy = suite.score_image(_noisy(camera, 0.1, seed=6), None, "camera_noisy")["niqe"]
    assert math.isfinite(clean) and 2.0 < clean < 30.0
    assert noisy > clean
    assert suite.score_image(camera[..., :100, :100], None, "small")["niqe"].startswith("n/a (NIQE needs")


def test_summary_mean_std_n_against_numpy():
    suite = MetricSuite(["psnr", "fid"], crop_border=0, fid_feature_extractor=StandInFIDExtractor())
    per_image = {"a": {"psnr": 20.0}, "b": {"psnr": 23.0}, "c": {"psnr": 29.0}}
    set_level = {"fid": {"mean": 12.5, "std": None, "n": 3}}
    summary = suite.summary(per_image, set_level)
    values = np.array([20.0, 23.0, 29.0])
    assert summary["psnr"] == {"mean": pytest.approx(values.mean()), "std": pytest.approx(values.std()), "n": 3}
    assert summary["fid"] == set_level["fid"]


def test_bad_inputs_give_clear_errors(camera):
    suite = MetricSuite(["psnr"], crop_border=0)
    with pytest.raises(ValueError, match=r"img7: SR must be a \[1, 3, H, W\] tensor"):
        suite.score_image(camera[0], camera, "img7")
    with pytest.raises(ValueError, match=r"img7: GT must lie in \[0, 1\]"):
        suite.score_image(camera, camera * 255, "img7")
    with pytest.raises(ValueError, match="differ in size"):
        suite.score_image(camera, camera[..., :128], "img7")
    with pytest.raises(ValueError, match="unknown metric"):
        MetricSuite(["psnr", "fidd"], crop_border=0)
    with pytest.raises(FileNotFoundError, match="no images"):
        MetricSuite(["fid"], crop_border=0, fid_feature_extractor=StandInFIDExtractor()).set_level(
            Path(__file__).parent, Path(__file__).parent
        )
