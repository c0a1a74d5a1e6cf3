"""Any-size upscaling and the upscale command, on the tiny preset with 1-2 steps and small images."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from test_faults import run_entry_point

from sr.commands.config import RELEASED_DIR, random_weights_warning
from sr.commands.config import compose as compose_config
from sr.commands.upscale_folder import output_path, run
from sr.errors import ConfigError
from sr.models.stablesr import StableSR
from sr.pipelines import use_scheduler
from sr.sampling import output_size, reflect_pad_to, round_up

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
FAST = ["model=tiny", "num_inference_steps=1", "tile.size=16", "tile.batch_size=4", "progress=false"]


def upscale_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="upscale", overrides=["input=unset", "output=unset", *FAST, *overrides])


@pytest.fixture(scope="module")
def tiny_model(tiny_pipe):
    """The shared tiny pipeline (conftest); ``upscale`` swaps its scheduler, restored after this module."""
    scheduler = tiny_pipe.scheduler
    yield tiny_pipe
    tiny_pipe.scheduler = scheduler


def upscale(pipe, lr: torch.Tensor, seed: int, *overrides: str) -> torch.Tensor:
    """``pipe`` called as upscale.py calls it, with ``upscale_config(*overrides)``'s scheduler and settings."""
    cfg = upscale_config(*overrides)
    use_scheduler(pipe, instantiate(cfg.scheduler))
    return pipe(lr, generator=torch.Generator().manual_seed(seed), output_type="pt",
                **pipe.sampling_settings(cfg).arguments()).images


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


# ----------------------------------------------------------------------------------------------- pure helpers
def test_reflect_pad_to_handles_pads_longer_than_the_side():
    x = torch.arange(3.0).view(1, 1, 1, 3)
    padded = reflect_pad_to(x, 1, 9)
    assert padded.tolist() == [[[[0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0]]]]
    column = reflect_pad_to(torch.tensor([[[[5.0], [6.0]]]]), 5, 3)
    assert column[0, 0].tolist() == [[5.0] * 3, [6.0] * 3, [5.0] * 3, [6.0] * 3, [5.0] * 3]
    assert round_up(65, 64) == 128 and round_up(64, 64) == 64
    assert output_size(77, 131, 4) == (308, 524) and output_size(13, 21, 2.5) == (32, 52)


# --------------------------------------------------------------------------------------------- the pipeline
@pytest.mark.parametrize(
    "height, width, overrides",
    [
        (77, 131, ["scale=4", "tile.size=32", "w=0"]),                # odd sides, 8 latent tiles (40 x 72), no CFW
        (5, 7, ["scale=4", "tile.size=32"]),                          # latent 8 x 8 < one tile: padded and cropped
        (13, 21, ["scale=2.5", "color_fix=wavelet"]),                 # fractional scale
        (6, 10, ["scale=2", "input_size=24", "vae_tile.size=64", "vae_tile.overlap=16"]),  # work at 24 px, tiled VAE
    ],
)
def test_output_is_exactly_scale_times_input(tiny_model, height, width, overrides):
    lr = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    out = upscale(tiny_model, lr, 0, *overrides)
    assert out.shape == (1, 3, *output_size(height, width, upscale_config(*overrides).scale))
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    # The same image computed another way: one latent tile per UNet call instead of batches of 4.
    one_by_one = upscale(tiny_model, lr, 0, *overrides, "tile.batch_size=1")
    torch.testing.assert_close(out, one_by_one, rtol=0, atol=1e-5)


def test_a_setting_added_to_the_schema_reaches_command_line_call_and_fingerprint(tiny_model):
    """``sample_posterior`` was added in sr/sampling/settings.py and sr/pipelines/stablesr.py only: the command line
    key reaches the encoder (it equals the call's keyword, and differs from the default), the fingerprint records it,
    and a bad value is one line naming it."""
    from sr.commands.fingerprint import sampling_components

    lr = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    cfg = upscale_config("sample_posterior=false")
    mode = upscale(tiny_model, lr, 0, "sample_posterior=false")
    api = tiny_model(lr, generator=torch.Generator().manual_seed(0), output_type="pt", num_inference_steps=1,
                     tile={"size": 16}, sample_posterior=False).images
    assert torch.equal(mode, api) and not torch.equal(mode, upscale(tiny_model, lr, 0))
    components = sampling_components(cfg, cfg.model, tiny_model.sampling_settings(cfg))
    assert components["sample_posterior"] is False
    with pytest.raises(ConfigError, match="^sample_posterior='no': must be true or false$"):
        tiny_model.sampling_settings(upscale_config("sample_posterior=no"))


def test_v_prediction_of_the_same_model_gives_the_same_image(tiny_model, monkeypatch):
    """The tiny UNet's eps output rewritten as v = (eps - sqrt(1 - abar_t) x_t) / sqrt(abar_t) and sampled as a
    v-prediction model must give the eps model's image: the v branch of every step (tiles, scheduler) is exact."""
    lr = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    eps = upscale(tiny_model, lr, 0, "tile.size=16")
    alpha_bar = tiny_model.scheduler.alphas_cumprod
    eps_predict = StableSR.predict

    def v_predict(self, x_t, timesteps, z_lr, prompt_embeds=None):
        a = alpha_bar[torch.as_tensor(timesteps).reshape(-1)].view(-1, 1, 1, 1).to(x_t.dtype)
        return (eps_predict(self, x_t, timesteps, z_lr, prompt_embeds) - (1 - a).sqrt() * x_t) / a.sqrt()

    monkeypatch.setattr(StableSR, "predict", v_predict)
    original = tiny_model.scheduler
    tiny_model.scheduler = DDPMScheduler.from_config(original.config, prediction_type="v_prediction")
    try:
        v = tiny_model(lr, generator=torch.Generator().manual_seed(0), output_type="pt",
                       **tiny_model.sampling_settings(upscale_config("tile.size=16")).arguments()).images
    finally:
        tiny_model.scheduler = original
    assert v.shape == eps.shape == (1, 3, 32, 48)
    torch.testing.assert_close(v, eps, rtol=0, atol=1e-4)


def test_gray_input_gives_gray_output(tiny_model):
    lr = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out = upscale(tiny_model, lr, 5)
    assert out.shape == (1, 1, 32, 32) and 0 <= out.min() and out.max() <= 1
    # the grey replicated to three channels gives three equal channels, each the one-channel output (its luma)
    rgb = upscale(tiny_model, lr.expand(-1, 3, -1, -1), 5)
    assert torch.equal(rgb, out.expand(-1, 3, -1, -1))


def test_colour_fix_adain_matches_the_upsampled_lr_statistics(tiny_model):
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.25
    out = upscale(tiny_model, lr, 0, "color_fix=adain")
    reference = F.interpolate(lr * 2 - 1, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    reference = (reference + 1) / 2
    # AdaIN then clamp: means/stds per channel follow the LR (clamping only bites at the tails).
    torch.testing.assert_close(out.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), rtol=0, atol=0.02)
    torch.testing.assert_close(out.std(dim=(2, 3)), reference.std(dim=(2, 3)), rtol=0, atol=0.02)


# ---------------------------------------------------------------------------------------------- the command
def make_folder(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = {
        "good": write_png(folder / "good.png", rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)),
        "gray": write_png(folder / "gray.png", rng.integers(0, 256, (6, 8), dtype=np.uint8)),
        "rgba": write_png(folder / "rgba.png", rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)),
        "done": write_png(folder / "done.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
        "big": write_png(folder / "big.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
    }
    files["corrupt"] = folder / "corrupt.png"
    files["corrupt"].write_bytes(b"this is not a png at all")
    truncated = folder / "truncated.png"
    write_png(truncated, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:60])
    files["truncated"] = truncated
    (folder / "notes.txt").write_text("not an image name: ignored")
    return files


def test_folder_run_reports_bad_files_skips_existing_and_is_reproducible(tiny_model, tmp_path, capsys):
    files = make_folder(tmp_path / "in")
    output = tmp_path / "out"
    output.mkdir()
    existing = output / "done.png"
    existing.write_bytes(b"previous result")
    cfg = upscale_config(f"input={tmp_path / 'in'}", f"output={output}", "max_pixels=100", "seed=3")

    assert run(cfg, tiny_model) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 4
    for name in ("big.png", "corrupt.png", "truncated.png", "done.png"):
        assert sum(name in line for line in errors) == 1, (name, errors)
    assert any("too large" in line for line in errors)
    assert "3 written, 1 skipped (output exists), 3 failed, 0 kept (made with other settings), of 7 images" in captured.out
    assert existing.read_bytes() == b"previous result"
    assert sorted(p.name for p in output.glob("*.png")) == ["done.png", "good.png", "gray.png", "rgba.png"]

    good = np.asarray(Image.open(output / "good.png"))
    gray = Image.open(output / "gray.png")
    rgba = np.asarray(Image.open(output / "rgba.png"))
    assert good.shape == (32, 24, 3)
    assert gray.mode == "L" and gray.size == (32, 24)
    assert rgba.shape == (32, 32, 4)
    alpha_in = torch.from_numpy(np.asarray(Image.open(files["rgba"]))[:, :, 3].astype(np.float32) / 255)
    alpha_expected = F.interpolate(alpha_in[None, None], size=(32, 32), mode="bicubic", align_corners=False)
    alpha_expected = (alpha_expected.clamp(0, 1)[0, 0] * 255).round().numpy()
    assert np.abs(rgba[:, :, 3].astype(np.float32) - alpha_expected).max() <= 1

    saved = OmegaConf.load(output / "upscale_config.yaml")
    assert saved.seed == 3 and saved.tile.size == 16 and saved.scheduler._target_ == "diffusers.DDPMScheduler"
    assert "git_revision" in saved

    # Same seed and settings into a second folder: identical bytes.
    again = tmp_path / "again"
    assert run(upscale_config(f"input={files['good']}", f"output={again}", "seed=3"), tiny_model) == 0
    assert (again / "good.png").read_bytes() == (output / "good.png").read_bytes()
    # overwrite=true replaces the command's own earlier output, never a file it did not write (done.png)
    with pytest.raises(ConfigError, match=r"overwrite=true would replace 1 file\(s\) this command did not write "
                                          r"\(done.png; not listed in upscale_config\*.yaml\)"):
        run(upscale_config(f"input={files['done']}", f"output={output}", "overwrite=true"), tiny_model)
    assert existing.read_bytes() == b"previous result"
    first = (output / "good.png").read_bytes()
    assert run(upscale_config(f"input={files['good']}", f"output={output}", "overwrite=true", "seed=4"),
               tiny_model) == 0
    assert (output / "good.png").read_bytes() != first
    assert OmegaConf.load(output / "upscale_config.yaml").seed == 4


def test_missing_input_and_output_naming(tiny_model, tmp_path, capsys):
    with pytest.raises(ConfigError, match="nothing: no such file or folder"):
        run(upscale_config(f"input={tmp_path / 'nothing'}", f"output={tmp_path / 'out'}"), tiny_model)
    assert output_path(Path("a/photo.jpg"), Path("o"), "png") == Path("o/photo.png")
    assert output_path(Path("a/photo.jpg"), Path("o"), "input") == Path("o/photo.jpg")
    with pytest.raises(ValueError, match="unknown output format"):
        output_path(Path("a/photo.jpg"), Path("o"), "gif")


def test_the_released_model_is_the_default_and_model_tiny_is_explicit():
    def model(*overrides):
        return OmegaConf.to_container(compose_config("upscale", ["input=a", "output=b", *overrides]).model, resolve=True)

    released = model("model=stablesr_tiny")
    assert model() == released and released["name"] == "stablesr_tiny"
    assert released["pretrained"] == str(RELEASED_DIR / "stablesr_tiny")
    assert upscale_config().model.name == "tiny" and upscale_config().model.pretrained is None   # FAST says model=tiny
    assert random_weights_warning(upscale_config().model) == (
        "warning: model=tiny has random weights (model.pretrained is null): the output is noise; use "
        "model=stablesr_tiny (the released tiny model) or a trained model")
    assert random_weights_warning(compose_config("upscale", ["input=a", "output=b"]).model) is None


def test_a_grey_png_comes_out_grey_and_the_random_model_is_named_on_stderr(tmp_path, monkeypatch, capsys):
    """upscale.py (in this process, Hydra's argv parsing included) on an 8-bit grey photo stored as RGB and a 16-bit
    one-channel PNG: equal channels / a 16-bit grey PNG out, with either model; one warning line for model=tiny only."""
    grey = np.random.default_rng(4).integers(0, 256, (12, 16), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    write_png(tmp_path / "in" / "rgb_grey.png", np.repeat(grey[..., None], 3, axis=2))
    cv2.imwrite(str(tmp_path / "in" / "grey16.png"), grey.astype(np.uint16) * 257)
    for model in ("tiny", "stablesr_tiny"):
        out = tmp_path / model
        assert run_entry_point(monkeypatch, "upscale", f"input={tmp_path / 'in'}", f"output={out}", *FAST,
                               f"model={model}") == 0
        with Image.open(out / "rgb_grey.png") as image:
            assert image.mode == "RGB" and image.size == (64, 48)
            rgb = np.asarray(image)
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
        assert rgb[..., 0].std() > 5   # an image, not a flat field
        grey16 = cv2.imread(str(out / "grey16.png"), cv2.IMREAD_UNCHANGED)
        assert grey16.dtype == np.uint16 and grey16.shape == (48, 64)
        warnings = [line for line in capsys.readouterr().err.splitlines() if "random weights" in line]
        assert warnings == ([random_weights_warning(upscale_config("model=tiny").model)] if model == "tiny" else [])


@pytest.mark.slow
def test_command_line_exit_code_and_summary(tmp_path):
    make_folder(tmp_path / "in")
    result = subprocess.run(
        [sys.executable, str(REPO / "upscale.py"), f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
         "max_pixels=100", *FAST],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stderr
    assert "4 written, 0 skipped (output exists), 3 failed, 0 kept (made with other settings), of 7 images" in result.stdout
    assert len(list((tmp_path / "out").glob("*.png"))) == 4


def test_the_command_prints_its_own_line_first_and_nothing_from_libraries(tmp_path):
    """No library speaks before the command: no bitsandbytes / kernels hub warning on import (sr/__init__.py), no
    diffusers "Loading pipeline components" bar (sr/pipelines/build.py)."""
    source = write_png(tmp_path / "lr.png", np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8))
    result = subprocess.run(
        [sys.executable, str(REPO / "upscale.py"), "model=stablesr_tiny", f"input={source}",
         f"output={tmp_path / 'out'}", "num_inference_steps=1", "progress=false", "device=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[0].startswith("upscale: 1 written, 0 skipped"), result.stdout
