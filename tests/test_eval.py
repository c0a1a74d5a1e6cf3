"""eval.py end to end through Hydra (in-process, so the tiny model is built once): a w x tile-overlap sweep and its
report, a sweep with a failing run, re-scoring without sampling, resuming without re-sampling, and the baselines
(bicubic and lr_latent against independent oracles on the bundled held-out pairs, their caching)."""

import csv
import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

import sr.commands.evaluation
from sr.commands.config import compose
from sr.commands.evaluation import make_baseline
from sr.data.datasets import PairedImageDataset
from sr.pipelines import SamplingSettings, StableSRPipeline

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "data" / "samples" / "heldout_pairs"
HELDOUT_HR = HELDOUT / "hr"
LUMA = np.array([0.299, 0.587, 0.114])
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# LR 16 px -> SR 64 px, latent 8 px padded to one 16 px tile (the smallest the tiny time-aware encoder takes):
# 2 DDPM steps take about a second per image on an idle 2-core CPU.
FAST = ["model=tiny", "num_inference_steps=2", "tile.size=16", "progress=false", "metrics=[psnr_y,ssim_y,fid]"]


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    """Two pairs cut from the bundled held-out images: HR 64 px (RGB and grey), LR 16 px (bicubic)."""
    root = tmp_path_factory.mktemp("pairs")
    for name in ("camera", "coffee"):
        with Image.open(HELDOUT_HR / f"{name}.png") as image:
            hr = image.resize((64, 64), Image.Resampling.BICUBIC)
        (root / "hr").mkdir(exist_ok=True)
        (root / "lr").mkdir(exist_ok=True)
        hr.save(root / "hr" / f"{name}.png")
        hr.resize((16, 16), Image.Resampling.BICUBIC).save(root / "lr" / f"{name}.png")
    return root


def run_eval(monkeypatch, *overrides: str) -> int:
    """``python eval.py <overrides>`` in this process; returns the exit code."""
    eval_script = importlib.import_module("eval")
    monkeypatch.setattr(sys, "argv", ["eval.py", *overrides])
    GlobalHydra.instance().clear()
    try:
        eval_script.main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    return 0


def data_overrides(test_set: Path) -> list[str]:
    return [f"data.lr_dir={test_set / 'lr'}", f"data.hr_dir={test_set / 'hr'}"]


def psnr_y_of_files(sr_path: Path, hr_path: Path) -> float:
    """Independent PSNR on pyiqa's Y = 0.299 R + 0.587 G + 0.114 B of two 8-bit files, data range 1."""
    def luma(path):
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
        return rgb @ np.array([0.299, 0.587, 0.114])
    mse = np.mean((luma(sr_path) - luma(hr_path)) ** 2)
    return float(10 * np.log10(1.0 / mse))


@pytest.fixture(scope="module")
def sweep(test_set, tmp_path_factory) -> Path:
    """A 2 x 2 sweep w in {0, 1} x tile.overlap in {0, 8} (the 16 px latent tile only allows overlaps below 16)."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as monkeypatch:
        code = run_eval(monkeypatch, "-m", *FAST, *data_overrides(test_set), "w=0,1", "tile.overlap=0,8",
                        f"hydra.sweep.dir={sweep_dir}")
    assert code == 0
    return sweep_dir


def run_rows(sweep_dir: Path) -> list[dict]:
    """The stablesr rows of a sweep report's table.csv, each with its run dir as ``path``."""
    rows = csv.DictReader((sweep_dir / "report" / "table.csv").open())
    return [row | {"path": sweep_dir / row["run_dir"]} for row in rows if row["method"] == "stablesr"]


def test_sweep_writes_scores_images_table_and_plots(sweep, test_set):
    rows = run_rows(sweep)
    assert len(rows) == 4
    assert {(row["w"], row["tile.overlap"]) for row in rows} == {("0.0", "0"), ("0.0", "8"), ("1.0", "0"),
                                                                 ("1.0", "8")}
    assert all(row["status"] == "ok" and row["images"] == "2" for row in rows)
    table = (sweep / "report" / "table.md").read_text()
    assert "`status=ok`" in table and "pyiqa's Y" in table and "crop_border: 0 px" in table
    plots = sorted((sweep / "report" / "plots").glob("*.png"))
    assert {path.name for path in plots} >= {"psnr_y_vs_w.png", "psnr_y_vs_tile_overlap.png", "ssim_y_vs_w.png"}
    assert all(path.stat().st_size > 1000 and path.read_bytes().startswith(PNG_MAGIC) for path in plots)
    # the page too, each run's output among the compared images, byte for byte
    page = (sweep / "report" / "index.html").read_text()
    assert all(f'src="plots/{path.name}"' in page for path in plots)
    compared = {path.read_bytes() for path in (sweep / "report" / "compare" / "camera").iterdir()}
    assert {(row["path"] / "images" / "camera.png").read_bytes() for row in rows} <= compared

    for row in rows:
        run_dir = row["path"]
        record = json.loads((run_dir / "scores.json").read_text())
        assert record["settings"]["num_inference_steps"] == 2 and record["settings"]["tile.size"] == 16
        assert record["seconds_per_image"] > 0
        # no Inception weights in the test TORCH_HOME: FID is reported, not a crash
        assert record["aggregate"]["fid"].startswith("n/a (missing weights-inception")
        for name in ("camera", "coffee"):
            sr_path = run_dir / "images" / f"{name}.png"
            with Image.open(sr_path) as image:
                assert image.size == (64, 64)
            expected = psnr_y_of_files(sr_path, test_set / "hr" / f"{name}.png")
            assert record["per_image"][name]["psnr_y"] == pytest.approx(expected, abs=1e-3)
        psnrs = [record["per_image"][name]["psnr_y"] for name in ("camera", "coffee")]
        assert record["aggregate"]["psnr_y"]["mean"] == pytest.approx(np.mean(psnrs), abs=1e-9)

    by_w = {row["w"]: row["path"] / "images" / "coffee.png" for row in rows}
    assert not np.array_equal(np.asarray(Image.open(by_w["0.0"])), np.asarray(Image.open(by_w["1.0"]))), \
        "w=0 and w=1 (CFW off / full) must decode differently"


def test_failed_run_is_recorded_and_the_sweep_goes_on(sweep, test_set, tmp_path, monkeypatch):
    # job 0 (tile.overlap=0) is the sweep's finished w=0, overlap=0 run, copied: it is skipped, not re-sampled;
    # job 1 (tile.overlap=16, not below the 16 px tile) fails
    source = next(row["path"] for row in run_rows(sweep) if row["w"] == "0.0" and row["tile.overlap"] == "0")
    shutil.copytree(source, tmp_path / "0", ignore=shutil.ignore_patterns("report"))
    code = run_eval(monkeypatch, "-m", *FAST, *data_overrides(test_set), "w=0", "tile.overlap=0,16",
                    f"hydra.sweep.dir={tmp_path}")
    assert code == 1
    rows = run_rows(tmp_path)
    assert len(rows) == 2
    failed = [row for row in rows if row["status"] == "failed"]
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(failed) == 1 and len(ok) == 1 and ok[0]["psnr_y_mean"]
    assert failed[0]["error"] == "tile.overlap=16: must be smaller than the tile size (16)"
    assert "FAILED: tile.overlap=16: must be smaller" in (tmp_path / "report" / "table.md").read_text()
    failed_record = json.loads((tmp_path / "1" / "scores.json").read_text())
    assert failed_record["status"] == "failed" and failed_record["config"]["tile"]["overlap"] == 16


def test_rescore_scores_existing_images_without_sampling(sweep, test_set, monkeypatch):
    run_dir = next(row["path"] for row in run_rows(sweep) if row["w"] == "1.0")
    images = sorted((run_dir / "images").glob("*.png"))
    stamps = {path: path.stat().st_mtime_ns for path in images}
    before = json.loads((run_dir / "scores.json").read_text())

    def no_sampling(*args, **kwargs):
        raise AssertionError("rescore must not build the model or sample")

    monkeypatch.setattr(StableSRPipeline, "__call__", no_sampling)
    monkeypatch.setattr(sr.commands.evaluation, "load_model", no_sampling)
    # only the run dir and the new metric list are given: settings and test set come from the run's scores.json
    code = run_eval(monkeypatch, "rescore=true", f"hydra.run.dir={run_dir}", "metrics=[psnr,psnr_y]",
                    "progress=false")
    assert code == 0
    assert {path: path.stat().st_mtime_ns for path in images} == stamps
    after = json.loads((run_dir / "scores.json").read_text())
    assert after["status"] == "ok" and set(after["aggregate"]) == {"psnr", "psnr_y"}
    assert after["settings"] == before["settings"]
    assert after["per_image"]["coffee"]["psnr_y"] == before["per_image"]["coffee"]["psnr_y"]
    assert after["seconds_per_image"] == before["seconds_per_image"]
    assert (run_dir / "report" / "table.md").is_file()


def test_interrupted_run_resumes_without_resampling_present_images(sweep, test_set, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    source = next(row["path"] for row in run_rows(sweep) if row["w"] == "0.0" and row["tile.overlap"] == "0")
    (run_dir / "images").mkdir(parents=True)
    kept = run_dir / "images" / "camera.png"
    kept.write_bytes((source / "images" / "camera.png").read_bytes())
    (run_dir / "fingerprint.json").write_bytes((source / "fingerprint.json").read_bytes())
    stamp = kept.stat().st_mtime_ns
    sampled: list[int] = []
    real_call = StableSRPipeline.__call__

    def counting_call(*args, **kwargs):
        sampled.append(1)
        return real_call(*args, **kwargs)

    monkeypatch.setattr(StableSRPipeline, "__call__", counting_call)
    code = run_eval(monkeypatch, *FAST, *data_overrides(test_set), "w=0", "tile.overlap=0", f"hydra.run.dir={run_dir}")
    assert code == 0 and len(sampled) == 1 and kept.stat().st_mtime_ns == stamp
    record = json.loads((run_dir / "scores.json").read_text())
    assert set(record["per_image"]) == {"camera", "coffee"}
    # same seed and settings as the sweep's run: the resumed image equals the sweep's bit for bit
    assert (run_dir / "images" / "coffee.png").read_bytes() == (source / "images" / "coffee.png").read_bytes()
    # a complete run is skipped, not redone
    assert run_eval(monkeypatch, *FAST, *data_overrides(test_set), "w=0", "tile.overlap=0",
                    f"hydra.run.dir={run_dir}") == 0
    assert len(sampled) == 1


def test_the_released_model_is_the_default_and_random_weights_are_named_once(test_set, tmp_path, monkeypatch,
                                                                             capsys):
    default = compose("eval", [])
    assert default.model.name == "stablesr_tiny" and default.experiment_name == "stablesr_tiny"
    assert OmegaConf.to_container(default.model, resolve=True) == \
        OmegaConf.to_container(compose("eval", ["model=stablesr_tiny"]).model, resolve=True)
    one_run = ["num_inference_steps=1", "tile.size=16", "progress=false", "metrics=[psnr_y]", "baselines=[]",
               "report=false", *data_overrides(test_set)]
    for model in ("tiny", "stablesr_tiny"):
        monkeypatch.setattr(sr.commands.evaluation, "_model_cache", {})   # built here, not reused from another test
        assert run_eval(monkeypatch, f"model={model}", *one_run, f"hydra.run.dir={tmp_path / model}") == 0
        warnings = [line for line in capsys.readouterr().err.splitlines() if "random weights" in line]
        assert warnings == ([("warning: model=tiny has random weights (model.pretrained is null): the output is noise; "
                              "use model=stablesr_tiny (the released tiny model) or a trained model")]
                            if model == "tiny" else [])


def cubic_matrix(size_in: int, size_out: int, a: float = -0.75) -> np.ndarray:
    """``[size_out, size_in]`` weights of Keys' cubic convolution (a = -0.75) with half-pixel centres and the edge
    pixels repeated: the bicubic upscale written out in numpy."""
    matrix = np.zeros((size_out, size_in))
    for index in range(size_out):
        source = (index + 0.5) * size_in / size_out - 0.5
        base = int(np.floor(source))
        for offset in range(-1, 3):
            d = abs(offset - (source - base))
            weight = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
            matrix[index, min(max(base + offset, 0), size_in - 1)] += weight
    return matrix


def ssim_of_lumas(first: np.ndarray, second: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) of two 8-bit lumas in 0..255: 11x11 Gaussian window (sigma 1.5), 'valid' filtering,
    negative contrast-structure terms clamped to 0 (pyiqa's convention), mean over the map."""
    taps = np.exp(-np.arange(-5, 6) ** 2 / (2 * 1.5 ** 2))
    taps /= taps.sum()

    def blur(image):
        rows = np.lib.stride_tricks.sliding_window_view(image, 11, axis=0) @ taps
        return np.lib.stride_tricks.sliding_window_view(rows, 11, axis=1) @ taps

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = blur(first), blur(second)
    var1, var2 = blur(first * first) - mu1 ** 2, blur(second * second) - mu2 ** 2
    covariance = blur(first * second) - mu1 * mu2
    contrast_structure = np.maximum((2 * covariance + c2) / (var1 + var2 + c2), 0)
    return float(np.mean((2 * mu1 * mu2 + c1) / (mu1 ** 2 + mu2 ** 2 + c1) * contrast_structure))


def rgb_array(path: Path) -> np.ndarray:
    """An 8-bit image file as ``[H, W, 3]`` float64 in 0..255."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


@pytest.fixture(scope="module")
def heldout_sweep(tmp_path_factory) -> Path:
    """2 runs on the bundled held-out pairs (LR 96 px -> HR 384 px) that share both baselines: w=0 without colour
    fix, tile overlap 0 or 8, one DDPM step."""
    sweep_dir = tmp_path_factory.mktemp("heldout")
    with pytest.MonkeyPatch.context() as monkeypatch:
        code = run_eval(monkeypatch, "-m", "model=tiny", "num_inference_steps=1", "progress=false", "metrics=[psnr_y,ssim_y]",
                        f"data.lr_dir={HELDOUT / 'lr'}", f"data.hr_dir={HELDOUT / 'hr'}", "w=0", "color_fix=none",
                        "tile.overlap=0,8", f"hydra.sweep.dir={sweep_dir}")
    assert code == 0
    return sweep_dir


def test_baseline_rows_appear_once_in_a_two_run_sweep(heldout_sweep):
    rows = list(csv.DictReader((heldout_sweep / "report" / "table.csv").open()))
    assert [row["method"] for row in rows] == ["bicubic", "lr_latent", "stablesr", "stablesr"]
    assert all(row["status"] == "ok" and row["images"] == "3" for row in rows)
    table = (heldout_sweep / "report" / "table.md").read_text()
    assert table.count("| bicubic |") == 1 and table.count("| lr_latent |") == 1 and table.count("| stablesr |") == 2
    for row in rows:
        record = json.loads((heldout_sweep / row["run_dir"] / "scores.json").read_text())
        assert set(record["baselines"]) == {"bicubic", "lr_latent"}


def test_bicubic_row_equals_psnr_and_ssim_of_a_numpy_bicubic_upscale(heldout_sweep):
    row = next(row for row in csv.DictReader((heldout_sweep / "report" / "table.csv").open())
               if row["method"] == "bicubic")
    run_dir = heldout_sweep / row["run_dir"]
    record = json.loads((run_dir / "scores.json").read_text())["baselines"]["bicubic"]
    psnrs, ssims = [], []
    for name in ("camera", "coffee", "rocket"):
        lr = rgb_array(HELDOUT / "lr" / f"{name}.png") / 255
        hr = rgb_array(HELDOUT / "hr" / f"{name}.png")
        assert lr.shape == (96, 96, 3) and hr.shape == (384, 384, 3)
        vertical, horizontal = cubic_matrix(96, 384), cubic_matrix(96, 384)
        upscaled = np.einsum("oh,hwc,pw->opc", vertical, lr, horizontal, optimize=True).clip(0, 1)
        sr_8bit = np.round(upscaled * 255)
        assert np.abs(rgb_array(run_dir / "baselines" / "bicubic" / f"{name}.png") - sr_8bit).max() <= 1
        luma_sr, luma_hr = (image / 255 @ LUMA for image in (sr_8bit, hr))
        psnrs.append(10 * np.log10(1 / np.mean((luma_sr - luma_hr) ** 2)))
        ssims.append(ssim_of_lumas(np.round(luma_sr * 255), np.round(luma_hr * 255)))
        assert record["per_image"][name]["psnr_y"] == pytest.approx(psnrs[-1], abs=2e-3)
        assert record["per_image"][name]["ssim_y"] == pytest.approx(ssims[-1], abs=2e-4)
    assert float(row["psnr_y_mean"]) == pytest.approx(np.mean(psnrs), abs=2e-3)
    assert float(row["ssim_y_mean"]) == pytest.approx(np.mean(ssims), abs=2e-4)
    assert float(row["psnr_y_std"]) == pytest.approx(np.std(psnrs), abs=2e-3)


def test_lr_latent_at_w0_is_the_plain_vae_decode_of_the_encoded_lr(heldout_sweep):
    row = next(row for row in csv.DictReader((heldout_sweep / "report" / "table.csv").open())
               if row["method"] == "lr_latent")
    assert (row["w"], row["color_fix"]) == ("0.0", "none")
    folder = heldout_sweep / row["run_dir"] / "baselines" / "lr_latent"
    vae = instantiate(compose("eval", ["model=tiny"]).model).vae   # the runs' seeded random weights
    for name in ("camera", "coffee", "rocket"):
        lr = torch.from_numpy(rgb_array(HELDOUT / "lr" / f"{name}.png") / 255).float().permute(2, 0, 1)[None]
        with torch.no_grad():
            upscaled = F.interpolate(lr * 2 - 1, size=(384, 384), mode="bicubic", align_corners=False).clamp(-1, 1)
            decoded = vae.decode(vae.encode(upscaled).latent_dist.mode()).sample   # 384 px: no padding, one tile
        expected = ((decoded[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).double().numpy() * 255
        grey = bool((lr[0, 0] == lr[0, 1]).all() and (lr[0, 1] == lr[0, 2]).all())
        assert grey == (name == "camera")   # a grey photo stored as RGB: grey in, grey out (its luma)
        if grey:
            expected = np.repeat(expected @ LUMA[:, None], 3, axis=2)
        # the saved 8-bit PNG: rounding (0.5 levels) and float noise apart, the same image
        assert np.abs(rgb_array(folder / f"{name}.png") - expected).max() <= 0.51


def test_changed_baseline_list_rescores_without_sampling_and_reuses_the_kept_baseline(sweep, test_set, tmp_path,
                                                                                     monkeypatch):
    source = next(row["path"] for row in run_rows(sweep) if row["w"] == "0.0" and row["tile.overlap"] == "0")
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("report"))
    before = json.loads((run_dir / "scores.json").read_text())
    bicubic = sorted((run_dir / "baselines" / "bicubic").glob("*.png"))
    stamps = {path: path.stat().st_mtime_ns for path in bicubic}

    def no_model(*args, **kwargs):
        raise AssertionError("no sampling and no lr_latent: the model is not needed")

    for name in ("__call__", "reconstruct"):
        monkeypatch.setattr(StableSRPipeline, name, no_model)
    monkeypatch.setattr(sr.commands.evaluation, "load_model", no_model)
    overrides = [*FAST, *data_overrides(test_set), "w=0", "tile.overlap=0", f"hydra.run.dir={run_dir}"]
    assert run_eval(monkeypatch, *overrides, "baselines=[bicubic]") == 0
    after = json.loads((run_dir / "scores.json").read_text())
    assert set(after["baselines"]) == {"bicubic"}
    assert after["fingerprints"]["scores"] != before["fingerprints"]["scores"]
    assert after["baselines"]["bicubic"] == before["baselines"]["bicubic"]   # same images, same scores
    assert after["per_image"] == before["per_image"]
    assert {path: path.stat().st_mtime_ns for path in bicubic} == stamps

    assert run_eval(monkeypatch, *overrides, "baselines=[]") == 0
    assert json.loads((run_dir / "scores.json").read_text())["baselines"] == {}
    assert run_eval(monkeypatch, *overrides, "baselines=[bicubic,nearest]") == 1


def test_baseline_images_are_kept_for_their_settings_completed_when_missing_and_remade_for_others(test_set,
                                                                                                  tmp_path):
    data = PairedImageDataset(str(test_set / "lr"), str(test_set / "hr"))
    cfg = OmegaConf.create({"overwrite": False, "progress": False})
    components = {"baseline": "bicubic", "scale": 4.0, "test_set.lr": "sha256:one"}
    folder = make_baseline(cfg, "bicubic", components, data, tmp_path, None, SamplingSettings(scale=4))
    assert folder == tmp_path / "baselines" / "bicubic"
    camera, coffee = folder / "camera.png", folder / "coffee.png"
    stamp, made = camera.stat().st_mtime_ns, coffee.read_bytes()
    coffee.unlink()   # interrupted: the missing image is made, the present one kept
    make_baseline(cfg, "bicubic", components, data, tmp_path, None, SamplingSettings(scale=4))
    assert camera.stat().st_mtime_ns == stamp and coffee.read_bytes() == made
    with Image.open(camera) as image:
        assert image.size == (64, 64)

    # other settings: every image is remade
    make_baseline(cfg, "bicubic", components | {"scale": 2.0}, data, tmp_path, None, SamplingSettings(scale=2))
    assert camera.stat().st_mtime_ns != stamp
    with Image.open(camera) as image:
        assert image.size == (32, 32)
    assert json.loads((folder / "fingerprint.json").read_text())["components"]["scale"] == 2.0
