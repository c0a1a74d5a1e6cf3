"""Stage 2: CFW data generation (resume, shards, files), the generated dataset, and CFW training through train()."""

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from sr.commands.cfw_generate import build_generator, shard_ids
from sr.commands.train import compose_train_config, train
from sr.data.cfw import GeneratedCFWDataset, sample_files
from sr.models.cfw import encoder_features
from sr.training.losses import AutoencoderLoss, Reconstruction
from sr.training.stage2 import CFWModule

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
NUM_SAMPLES = 2
GENERATE = ["crop_size=128", "steps=2", f"num_samples={NUM_SAMPLES}", "seed=7", "device=cpu"]


def compose_generate(overrides: list[str]):
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose("cfw_generate", overrides=GENERATE + overrides)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generator():
    return build_generator(compose_generate([]))


@pytest.fixture(scope="module")
def generated(tmp_path_factory, generator) -> Path:
    out = tmp_path_factory.mktemp("cfw_data")
    assert generator.run(shard_ids(NUM_SAMPLES, 0, 1), out) == list(range(NUM_SAMPLES))
    return out


def test_shard_ids_are_disjoint_and_complete():
    shards = [shard_ids(10, shard, 3) for shard in range(3)]
    assert sorted(i for ids in shards for i in ids) == list(range(10))
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
    with pytest.raises(ValueError, match="shard"):
        shard_ids(10, 3, 3)


def test_generated_files_are_readable_and_consistent(generated):
    dataset = GeneratedCFWDataset(generated)
    assert len(dataset) == NUM_SAMPLES
    item = dataset[0]
    assert item["lq"].shape == item["gt"].shape == (3, 128, 128) and item["latent"].shape == (4, 16, 16)
    assert -1 <= item["lq"].min() and item["gt"].max() <= 1
    latent = np.load(sample_files(generated, item["id"])["latents"])
    assert latent.shape == (1, 4, 16, 16) and latent.dtype == np.float32
    assert not torch.equal(dataset[0]["gt"], dataset[1]["gt"])


def test_resume_writes_nothing_new_and_completes_partial_samples(generated, generator):
    before = snapshot(generated)
    assert generator.run(shard_ids(NUM_SAMPLES, 0, 1), generated) == []
    assert snapshot(generated) == before
    sample_files(generated, "0000001")["samples"].unlink()  # an interrupted sample: preview missing
    assert generator.run(shard_ids(NUM_SAMPLES, 0, 1), generated) == [1]
    assert snapshot(generated) == before  # regenerated bit for bit from its per-sample seed


def test_shards_give_the_same_files_as_one_run(generated, generator, tmp_path):
    for shard in range(2):
        generator.run(shard_ids(NUM_SAMPLES, shard, 2), tmp_path)
    assert snapshot(tmp_path) == snapshot(generated)


def test_dataset_rejects_a_folder_without_latents(tmp_path):
    with pytest.raises(FileNotFoundError, match="latents"):
        GeneratedCFWDataset(tmp_path)


# ---------------------------------------------------------------------------------------------------- training
def test_cfw_training_moves_only_cfw_and_discriminator(generated, tmp_path):
    overrides = [
        "experiment=cfw_tiny", "model.pretrained=null", f"data.root={generated}", "data.batch_size=1", "logger=none",
        "module.max_updates=2", "module.loss.disc_start=1", "module.loss.disc_channels=8",
        "++trainer.enable_model_summary=false", "~callbacks.progress_bar",
    ]
    cfg = compose_train_config(overrides, tmp_path)
    from hydra.utils import instantiate

    reference = instantiate(cfg.model).model  # same preset seed: the weights the run starts from
    result = train(cfg)
    module = result["module"]
    model = module.model
    assert int(module.updates) == 2
    for name, tensor in model.vae.state_dict().items():
        assert torch.equal(tensor, reference.vae.state_dict()[name]), f"frozen VAE tensor {name} changed"
    for name, tensor in model.unet.state_dict().items():
        assert torch.equal(tensor, reference.unet.state_dict()[name]), f"UNet tensor {name} changed"
    changed = [not torch.equal(t, reference.cfw.state_dict()[n]) for n, t in model.cfw.state_dict().items()]
    assert all(changed), "every CFW tensor should have trained"
    exported = tmp_path / "cfw.safetensors"
    reference.load_trainable(exported, parts=("cfw",))
    for name, tensor in model.cfw.state_dict().items():
        assert torch.equal(tensor, reference.cfw.state_dict()[name])

    # w = 0 after training is exactly the plain (frozen) decoder
    item = GeneratedCFWDataset(generated)[0]
    lq, latent = item["lq"][None], item["latent"][None]
    with torch.no_grad():
        _, features = encoder_features(model.vae, lq)
        plain = reference.vae.decode(latent / reference.scaling_factor).sample
        assert torch.equal(model.decode(latent, features, w=0.0), plain)
        assert not torch.allclose(model.decode(latent, features, w=1.0), plain)


def test_gradients_reach_only_cfw_then_only_the_discriminator(generated, generator):
    model = CFWModule(copy.deepcopy(generator.pipe), loss := AutoencoderLoss(
        perceptual="stand_in", disc_start=0, disc_channels=8)).model  # freezes everything but CFW (+ discriminator)
    item = GeneratedCFWDataset(generated)[0]
    lq, gt, latent = (item[k][None] for k in ("lq", "gt", "latent"))
    _, features = encoder_features(model.vae, lq)
    with warnings.catch_warnings():  # decoding through the fusion layers being trained raises no "untrained" warning
        warnings.simplefilter("error")
        output = model.decode(latent, features, w=1.0)
    loss_g, _ = loss.generator_loss(gt, Reconstruction(output), step=0)
    loss.discriminator.requires_grad_(False)  # what toggled_optimizer does for the generator step
    loss_g.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cfw.parameters())
    for part in (model.vae, model.unet, model.time_aware_encoder, model.sft, loss.discriminator):
        assert all(p.grad is None for p in part.parameters())
    model.cfw.zero_grad(set_to_none=True)
    loss.discriminator.requires_grad_(True)
    loss_d, _ = loss.discriminator_loss(gt, output, step=0)
    loss_d.backward()
    assert all(p.grad is not None for p in loss.discriminator.parameters())
    assert all(p.grad is None for p in model.cfw.parameters())


def test_cfw_module_rejects_bad_arguments(generator):
    loss = AutoencoderLoss(perceptual="stand_in", disc_channels=8)
    with pytest.raises(ValueError, match="w_sampling"):
        CFWModule(generator.pipe, loss, w_sampling="gaussian")
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        CFWModule(generator.pipe, loss, accumulate_grad_batches=0)


def test_released_cfw_recipe_is_pinned():
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=cfw_sd21_base"])
    module = cfg.module
    assert (cfg.data.batch_size, module.accumulate_grad_batches, module.lr, tuple(module.betas)) == (1, 8, 5e-5, (0.5, 0.9))
    assert (module.loss.disc_start, module.loss.disc_weight, module.loss.kl_weight, module.w) == (501, 0.025, 0.0, 1.0)
    assert module.loss.perceptual == "vgg" and cfg.model.name == "sd21_base"
