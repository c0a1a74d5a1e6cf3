"""The release recipe (sr/recipe.py) end to end at smoke size, and the released tiny model it produced."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sr.config import RELEASED_DIR, compose
from sr.pipelines import StableSRPipeline
from sr.recipe import RELEASE_FILE, RELEASE_NAME, final_losses, release_steps, run_chain

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {
    "prior": ["module.vae_updates=2", "module.unet_updates=2", "module.loss.disc_start=1", "data.batch_size=2",
              "logger=csv"],
    "stage1": ["trainer.max_steps=2", "data.batch_size=2", "data.crop_size=64", "logger=csv"],
    "cfw_data": ["num_samples=2", "steps=2", "crop_size=64"],
    "cfw": ["module.max_updates=2", "module.loss.disc_start=1", "data.batch_size=1", "logger=csv"],
}


def test_recipe_trains_every_stage_and_packages_a_loadable_release(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "stablesr_tiny"
    steps = release_steps(runs, out, overrides=SMOKE)
    assert [step.name for step in steps] == ["prior", "stage1", "cfw_data", "cfw", "package"]
    run_chain(steps, set(), "test")

    pipe = StableSRPipeline.from_pretrained(out)
    assert pipe.config.cfw_trained
    state = pipe.model.state_dict()
    for part, file in (("stage1", "stage1.safetensors"), ("cfw", "cfw.safetensors")):
        for key, tensor in load_file(runs / part / file).items():  # the package holds exactly the trained weights
            assert torch.equal(state[key], tensor), key
    release = json.loads((out / RELEASE_FILE).read_text())
    assert set(release["steps"]) == {"prior", "stage1", "cfw"}
    assert release["steps"]["cfw"]["final_losses"] == final_losses(runs / "cfw")
    assert "prior_vae/l1" in release["steps"]["prior"]["final_losses"]
    assert len(release["training_photos"]) == len(list((ROOT / "data/samples/train").glob("*.png")))
    assert str(ROOT) not in (out / RELEASE_FILE).read_text()
    assert all(file.endswith(".safetensors") for file in release["files"])

    capsys.readouterr()
    run_chain(release_steps(runs, out, overrides=SMOKE), set(), "test")  # a rerun skips every finished step
    assert capsys.readouterr().out.count("outputs exist, skipping") == 5


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
