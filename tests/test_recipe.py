"""The release recipe (sr/commands/recipe.py) end to end at smoke size, and the released tiny model it produced."""

import json
import sys
from pathlib import Path

import pytest
import torch

from sr.commands.config import RELEASED_DIR, compose
from sr.commands.recipe import (RELEASE_FILE, RELEASE_NAME, WALL_TIME_FILE, Step, final_losses, release_steps,
                                run_chain)
from sr.io import read_image, write_image
from sr.pipelines import StableSRPipeline

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {
    "prior": ["module.vae_updates=2", "module.unet_updates=2", "module.loss.disc_start=1", "data.batch_size=2",
              "logger=csv"],
    "stage1": ["trainer.max_steps=2", "data.batch_size=2", "data.crop_size=64", "logger=csv"],
    "cfw_data": ["num_samples=2", "steps=2"],
    "cfw": ["module.max_updates=2", "module.loss.disc_start=1", "data.batch_size=1", "logger=csv"],
}


@pytest.mark.slow  # about 55 s: four training / sampling commands, each a fresh process (CI runs make test-slow)
def test_recipe_trains_every_stage_and_packages_a_loadable_release(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "stablesr_tiny"
    steps = release_steps(runs, out, overrides=SMOKE)
    assert [step.name for step in steps] == ["prior", "stage1", "cfw_data", "cfw", "package"]
    run_chain(steps, set(), "test")

    pipe = StableSRPipeline.from_pretrained(out)
    assert pipe.config.cfw_trained
    expected = StableSRPipeline.from_pretrained(runs / "prior" / "model")  # the package = prior + both trained files
    expected.load_trainable(runs / "stage1" / "stage1.safetensors")
    expected.load_trainable(runs / "cfw" / "cfw.safetensors")
    state, want = pipe.model.state_dict(), expected.model.state_dict()
    assert state.keys() == want.keys()
    for key in want:
        assert torch.equal(state[key], want[key]), key
    assert any(not torch.equal(want[key], tensor) for key, tensor in
               StableSRPipeline.from_pretrained(runs / "prior" / "model").model.state_dict().items())
    release = json.loads((out / RELEASE_FILE).read_text())
    assert set(release["steps"]) == {"prior", "stage1", "cfw"}
    assert release["steps"]["cfw"]["final_losses"] == final_losses(runs / "cfw")
    assert "prior_vae/l1" in release["steps"]["prior"]["final_losses"]
    assert len(release["training_photos"]) == len(list((ROOT / "data/samples/train").glob("*.png")))
    assert str(ROOT) not in (out / RELEASE_FILE).read_text()
    assert all(file.endswith(".safetensors") for file in release["files"])
    assert set(release["wall_seconds"]) == {"prior", "stage1", "cfw_data", "cfw"}
    assert all(seconds > 0 for seconds in release["wall_seconds"].values())

    capsys.readouterr()
    run_chain(release_steps(runs, out, overrides=SMOKE), set(), "test")  # a rerun skips every finished step
    assert capsys.readouterr().out.count("outputs exist, skipping") == 5


def test_a_forced_step_records_its_redo_time_and_a_resumed_one_adds_up(tmp_path):
    runs = tmp_path / "runs"
    output = runs / "touch" / "done.txt"
    script = (f"import pathlib, time; time.sleep(0.2); path = pathlib.Path({str(output)!r}); "
              "path.parent.mkdir(parents=True, exist_ok=True); path.touch()")
    step = Step("touch", runs / "touch", [output], [sys.executable, "-c", script])
    runs.mkdir()
    (runs / WALL_TIME_FILE).write_text(json.dumps({"touch": 100.0, "other": 5.0}))  # an earlier, interrupted run
    run_chain([step], set(), "test")  # resumed: its time adds to the earlier run's
    assert json.loads((runs / WALL_TIME_FILE).read_text())["touch"] >= 100.2
    run_chain([step], {"touch"}, "test")  # forced: the run dir is deleted and the redo's time replaces it
    times = json.loads((runs / WALL_TIME_FILE).read_text())
    assert 0.2 <= times["touch"] < 60 and times["other"] == 5.0 and output.exists()


def test_released_model_loads_from_its_preset():
    if not (RELEASED_DIR / RELEASE_NAME / "model_index.json").exists():
        pytest.fail(f"{RELEASED_DIR / RELEASE_NAME}: the released tiny model is missing (make release-train)")
    cfg = compose("upscale", ["model=stablesr_tiny"])
    assert Path(cfg.model.pretrained) == RELEASED_DIR / RELEASE_NAME
    release = json.loads((RELEASED_DIR / RELEASE_NAME / RELEASE_FILE).read_text())
    total = sum(path.stat().st_size for path in (RELEASED_DIR / RELEASE_NAME).rglob("*"))
    assert total < 50 * 2**20 and release["name"] == RELEASE_NAME
    pipe = StableSRPipeline.from_pretrained(RELEASED_DIR / RELEASE_NAME)
    assert pipe.config.cfw_trained


# Upscaled by the released model at commit time: 32 x 32 crop (top-left) of held-out coffee LR -> 128 x 128,
# 5 DDPM steps, w=0.5, seed 42, reproducible mode. benchmarks/reproducibility.py measures how far another
# instruction set or thread count moves an upscale: at most 1 level in 8 bits.
REFERENCE_OUTPUT = ROOT / "tests" / "data" / "stablesr_tiny_coffee_crop.png"
REFERENCE_TOLERANCE = 1  # 8-bit levels


def upscale_reference_crop(tmp_path: Path) -> torch.Tensor:
    import subprocess
    import sys

    from sr.reproducibility import subprocess_environment

    crop = read_image(ROOT / "data/samples/heldout_pairs/lr/coffee.png").image[:, :32, :32]
    write_image(tmp_path / "in" / "coffee.png", crop)
    command = [sys.executable, "upscale.py", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
               "model=stablesr_tiny", "num_inference_steps=5", "w=0.5", "seed=42"]
    subprocess.run(command, check=True, cwd=ROOT, env=subprocess_environment(reproducible=True), capture_output=True)
    return read_image(tmp_path / "out" / "coffee.png").image


def test_released_model_upscales_as_it_did_at_commit_time(tmp_path):
    output = upscale_reference_crop(tmp_path)
    reference = read_image(REFERENCE_OUTPUT).image
    levels = ((output - reference).abs() * 255).round().max().item()
    assert output.shape == reference.shape == (3, 128, 128)
    assert levels <= REFERENCE_TOLERANCE, f"{levels} 8-bit levels from the committed output"
