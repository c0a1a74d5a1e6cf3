"""The tiny prior (demo scaffolding): a few updates of each phase through train(), and the exported folder."""

import shutil
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from sr.commands.config import compose as compose_config
from sr.commands.train import train
from sr.pipelines import StableSRPipeline
from sr.training.prior import cosine_learning_rate, random_crop

ROOT = Path(__file__).resolve().parents[1]


def test_random_crop_is_one_window_of_the_batch():
    images = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    crop = random_crop(images, 4)
    top, left = divmod(int(crop[0, 0, 0, 0].item()), 12)
    assert torch.equal(crop, images[..., top : top + 4, left : left + 4])
    assert random_crop(images, None) is images
    with pytest.raises(ValueError, match="crop size"):
        random_crop(images, 11)


def test_cosine_learning_rate_runs_from_start_to_final_through_the_midpoint():
    assert cosine_learning_rate(0, 100, 2e-4, 2e-5) == pytest.approx(2e-4)
    assert cosine_learning_rate(50, 100, 2e-4, 2e-5) == pytest.approx(1.1e-4)  # the mean of the two ends
    assert cosine_learning_rate(100, 100, 2e-4, 2e-5) == pytest.approx(2e-5)
    rates = [cosine_learning_rate(step, 100, 2e-4, 2e-5) for step in range(101)]
    assert all(later < earlier for earlier, later in zip(rates, rates[1:]))
    with pytest.raises(ValueError, match="step 101 of 100"):
        cosine_learning_rate(101, 100, 2e-4, 2e-5)


def test_prior_phases_train_their_parts_and_the_folder_loads_back(tmp_path):
    overrides = [
        "experiment=prior_tiny", "logger=none", "module.vae_updates=2", "module.unet_updates=2",
        "module.loss.disc_start=1", "module.loss.disc_channels=8", "data.crop_size=64", "data.batch_size=2",
        "module.vae_lr_final=1e-4",
        "++trainer.enable_model_summary=false", "~callbacks.progress_bar",
    ]
    cfg = compose_config("train", overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    initial = instantiate(cfg.model).model
    result = train(cfg)
    module = result["module"]
    assert int(module.updates) == 4 and result["trainer"].state.finished
    vae_optimizer = module.optimizers()[0].optimizer  # the cosine schedule's rate of the last VAE update, step 1 of 2
    assert vae_optimizer.param_groups[0]["lr"] == pytest.approx(cosine_learning_rate(1, 2, 1e-3, 1e-4))

    loaded = StableSRPipeline.from_pretrained(tmp_path / "model").model
    scale = float(module.latent_scale)
    assert scale > 0 and loaded.scaling_factor == pytest.approx(scale) and scale != pytest.approx(0.18215)
    trained, start = loaded.state_dict(), initial.state_dict()
    for prefix in ("vae.", "unet."):  # both phases changed their weights; SFT and the encoder were not trained
        assert any(not torch.equal(trained[k], start[k]) for k in trained if k.startswith(prefix)), prefix
    for key in [k for k in trained if k.startswith(("sft.", "time_aware_encoder.", "cfw.", "prompt_embedding."))]:
        assert torch.equal(trained[key], start[key]), key
    for key, tensor in module.model.state_dict().items():
        assert torch.equal(tensor, trained[key]), key

    again = train(cfg)  # the same run dir: the finished run continues from its own last.ckpt, nothing left to do
    assert int(again["module"].updates) == 4
    for key, tensor in StableSRPipeline.from_pretrained(tmp_path / "model").model.state_dict().items():
        assert torch.equal(tensor, trained[key]), key
    shutil.rmtree(tmp_path / "checkpoints")  # now the folder holds another run's model
    with pytest.raises(FileExistsError, match="model"):  # the exporter refuses to replace it
        train(cfg)
