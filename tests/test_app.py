"""sr.commands.app without a browser (tests/test_browser.py drives the page): a request is the upscale.py run with the same
settings, and each way a request can fail gives one line naming the uploaded file (or the setting)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr.commands.app import DEFAULT_MODEL, Request, Upscaler, model_overrides
from sr.commands.config import RELEASED_DIR, compose
from sr.commands.upscale_folder import run
from sr.errors import ConfigError

REQUEST = Request(scale=4, w=0.6, num_inference_steps=2, seed=5, color_fix="wavelet", tile_size=16, tile_overlap=8)


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    return Upscaler(DEFAULT_MODEL, tmp_path_factory.mktemp("app"), max_memory=None)


def _noise(path: Path, size: int = 40) -> Path:
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_model_is_a_preset_or_a_pipeline_folder():
    assert model_overrides("stablesr_official") == ["model=stablesr_official"]
    folder = RELEASED_DIR / "stablesr_tiny"
    assert model_overrides(str(folder)) == [f"model={DEFAULT_MODEL}", f"model.pretrained={folder}"]


def test_a_request_writes_what_upscale_py_writes(upscaler, tmp_path):
    (tmp_path / "in").mkdir()
    source = _noise(tmp_path / "in" / "noise.png")
    before, after = upscaler.upscale(source, REQUEST)
    overrides = [f"model={DEFAULT_MODEL}", f"input={source}", f"output={tmp_path / 'cli'}", "progress=false",
                 *REQUEST.overrides()]
    assert run(compose("upscale", overrides)) == 0
    assert after.read_bytes() == (tmp_path / "cli" / "noise.png").read_bytes()
    assert after.name == "noise.png" and Image.open(after).size == (160, 160)
    # the slider's "before": the input enlarged nearest-neighbour to the output size
    expected = np.repeat(np.repeat(np.asarray(Image.open(source)), 4, axis=0), 4, axis=1)
    assert np.array_equal(np.asarray(Image.open(before)), expected)
    assert "num_inference_steps=2" in REQUEST.overrides() and "scale=4" in REQUEST.overrides() and "w=0.6" in REQUEST.overrides()


def test_failures_are_one_line_naming_the_upload(upscaler, tmp_path):
    broken = tmp_path / "notes.png"
    broken.write_text("not an image\n")
    with pytest.raises(ValueError, match=r"^notes.png: not an image file"):
        upscaler.upscale(broken, REQUEST)
    with pytest.raises(ConfigError, match="tile"):
        upscaler.upscale(_noise(tmp_path / "ok.png"), Request(4, 0.5, 2, 0, "adain", 16, 16))

    guarded = Upscaler(DEFAULT_MODEL, tmp_path / "guarded", max_memory="1MB")
    with pytest.raises(ValueError, match=r"^big.png: needs about .* to upscale 64x64 to 256x256, more than the "
                                         r"1.0 MB max_memory; skipped"):
        guarded.upscale(_noise(tmp_path / "big.png", size=64), REQUEST)
    assert not list((tmp_path / "guarded").rglob("big.png"))   # nothing written
