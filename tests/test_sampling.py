"""Sampler tests: official DDPM respacing, progressive aggregation vs an untiled loop, start latents, determinism."""

import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import sr.sampling.settings
from sr.errors import ConfigError
from sr.ops.tiling import TileGrid
from sr.pipelines import SamplingSettings, TileSettings
from sr.sampling import TileFusion, denoise, fresh_scheduler, initial_latent, reflect_pad_to
from sr.sampling.settings import legacy_names_mapped

CONF = Path(__file__).resolve().parents[1] / "conf"


def scheduler_from_config(name: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return instantiate(compose(config_name=f"scheduler/{name}").scheduler)


def official_schedule(num_steps: int):
    """docs/method.md#schedule, computed here from scratch in float64: S_k, alpha_bar'_k, beta'_k."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alpha_bar = np.cumprod(1 - betas)
    steps = [round(k * 999 / (num_steps - 1)) for k in range(num_steps)]
    respaced_alpha_bar = alpha_bar[steps]
    previous = np.concatenate([[1.0], respaced_alpha_bar[:-1]])
    respaced_betas = 1 - respaced_alpha_bar / previous
    return steps, respaced_alpha_bar, previous, respaced_betas, alpha_bar


class PointwiseModel:
    """A stand-in for StableSR whose output at a pixel depends only on that pixel: tiling cannot change it."""

    def __init__(self, prediction_type: str = "epsilon"):
        self.prediction_type = prediction_type
        self.calls: list[tuple[int, tuple[int, ...]]] = []

    def predict(self, x_t, timesteps, z_lr):
        self.calls.append((int(timesteps), tuple(x_t.shape)))
        return 0.3 * x_t - 0.5 * z_lr + torch.sin(z_lr * 3) * (float(timesteps) / 1000)


class ConstantModel:
    prediction_type = "epsilon"

    def __init__(self, value: torch.Tensor):
        self.value = value

    def predict(self, x_t, timesteps, z_lr):
        return self.value.view(1, -1, 1, 1).expand_as(x_t).clone()


def untiled_loop(model, z_lr, num_steps, generator, scheduler=None):
    """The reference: DDPM (docs/method.md#schedule) on the whole latent, start = LR latent noised to t = 999."""
    scheduler = scheduler or DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, timestep_spacing="linspace", variance_type="fixed_small",
        prediction_type=model.prediction_type,
    )
    scheduler.set_timesteps(num_steps)
    noise = torch.randn(z_lr.shape, generator=generator)
    alpha_bar = scheduler.alphas_cumprod[999]
    x = alpha_bar.sqrt() * z_lr + (1 - alpha_bar).sqrt() * noise
    for timestep in scheduler.timesteps:
        x = scheduler.step(model.predict(x, timestep, z_lr), timestep, x, generator=generator).prev_sample
    return x


def sample(name, model, z_lr, steps, tile, overlap, batch, generator=None, start="lr"):
    """``denoise`` with a fresh ``name`` scheduler (conf/scheduler) set to ``steps``; returns ``x_0``."""
    scheduler = fresh_scheduler(scheduler_from_config(name), model.prediction_type)
    scheduler.set_timesteps(steps)
    return denoise(model.predict, scheduler, z_lr, tile, overlap, batch, start, generator)[0]


@pytest.fixture(scope="module")
def tiny_model(tiny_pipe):
    """The shared tiny pipeline's (conftest) operations (``StableSR``)."""
    return tiny_pipe.model


# ----------------------------------------------------------------------------------------- schedule (docs/method.md#schedule)
def test_ddpm_config_respaces_to_official_timesteps():
    scheduler = fresh_scheduler(scheduler_from_config("ddpm"), "epsilon")
    scheduler.set_timesteps(200)
    timesteps = scheduler.timesteps.tolist()
    assert timesteps == sorted(official_schedule(200)[0], reverse=True)
    assert timesteps[:3] == [999, 994, 989] and timesteps[-3:] == [10, 5, 0]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_step_matches_official_respaced_posterior(prediction_type):
    steps, alpha_bar, alpha_bar_prev, betas, _ = official_schedule(200)
    scheduler = fresh_scheduler(scheduler_from_config("ddpm"), prediction_type)
    scheduler.set_timesteps(200)
    x = torch.randn(1, 4, 6, 5, dtype=torch.float64).float()
    out = torch.randn(1, 4, 6, 5).float()
    for k in (199, 120, 1, 0):
        a, a_prev, beta = alpha_bar[k], alpha_bar_prev[k], betas[k]
        xd, outd = x.double(), out.double()
        if prediction_type == "epsilon":
            x0 = math.sqrt(1 / a) * xd - math.sqrt(1 / a - 1) * outd
        else:
            x0 = math.sqrt(a) * xd - math.sqrt(1 - a) * outd
        mean = beta * math.sqrt(a_prev) / (1 - a) * x0 + (1 - a_prev) * math.sqrt(1 - beta) / (1 - a) * xd
        posterior_variance = beta * (1 - a_prev) / (1 - a)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(k)).double()
        expected = mean + (k > 0) * math.exp(0.5 * math.log(max(posterior_variance, 1e-20))) * noise
        result = scheduler.step(out, steps[k], x, generator=torch.Generator().manual_seed(k))
        torch.testing.assert_close(result.pred_original_sample.double(), x0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(result.prev_sample.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmsolver"])
def test_every_scheduler_config_starts_at_999_and_takes_the_model_prediction_type(name):
    scheduler = fresh_scheduler(scheduler_from_config(name), "v_prediction")
    scheduler.set_timesteps(10)
    assert scheduler.config.prediction_type == "v_prediction"
    assert int(scheduler.timesteps[0]) == 999 and len(scheduler.timesteps) == 10
    assert scheduler.config.beta_schedule == "scaled_linear"
    # Same 1000-step alpha_bar as docs/method.md#schedule (sqrt(alpha_bar_999) = 0.068265).
    assert math.sqrt(float(scheduler.alphas_cumprod[999])) == pytest.approx(0.068265, abs=2e-6)


def test_lr_start_is_the_lr_latent_noised_to_999_with_the_original_alphas():
    scheduler = fresh_scheduler(scheduler_from_config("ddpm"), "epsilon")
    scheduler.set_timesteps(200)
    z_lr = torch.randn(1, 4, 8, 8)
    start = initial_latent(scheduler, z_lr, "lr", torch.Generator().manual_seed(3))
    noise = torch.randn(z_lr.shape, generator=torch.Generator().manual_seed(3))
    expected = 0.068265 * z_lr + 0.997667 * noise
    torch.testing.assert_close(start, expected, rtol=0, atol=2e-5 * (z_lr.abs().max() + noise.abs().max()).item())
    torch.testing.assert_close(initial_latent(scheduler, z_lr, "noise", torch.Generator().manual_seed(3)), noise)
    with pytest.raises(ValueError, match="middle"):
        initial_latent(scheduler, z_lr, "middle", None)


def test_given_start_latent_replaces_the_draw_and_is_returned():
    z_lr = torch.randn(1, 4, 12, 20)
    scheduler = fresh_scheduler(scheduler_from_config("ddim"), "epsilon")
    scheduler.set_timesteps(3)
    _, drawn = denoise(PointwiseModel().predict, scheduler, z_lr, 16, 8, 2, "lr", torch.Generator().manual_seed(1))
    assert drawn.shape == (1, 4, 16, 20)  # the latent padded to one tile
    replay, _ = denoise(PointwiseModel().predict, scheduler, z_lr, 16, 8, 2, "noise", None, x_t=drawn)
    original, _ = denoise(PointwiseModel().predict, scheduler, z_lr, 16, 8, 2, "lr", torch.Generator().manual_seed(1))
    assert torch.equal(replay, original)  # DDIM (eta 0) draws nothing after x_T
    with pytest.raises(ValueError, match="must have shape"):
        denoise(PointwiseModel().predict, scheduler, z_lr, 16, 8, 2, x_t=torch.zeros(1, 4, 12, 20))


# ------------------------------------------------------------------------------------- aggregation (docs/method.md#aggregation)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_many_tiles_of_a_pointwise_model_equal_the_untiled_loop(prediction_type):
    rng = random.Random(7)
    for _ in range(4):
        height, width = rng.randint(3, 41), rng.randint(3, 41)
        tile = rng.choice([8, 16])
        overlap = rng.randint(0, tile - 1)
        batch = rng.randint(1, 5)
        z_lr = torch.randn(2, 4, height, width, generator=torch.Generator().manual_seed(height * width))
        model = PointwiseModel(prediction_type)
        tiled = sample("ddpm", model, z_lr, 4, tile, overlap, batch, torch.Generator().manual_seed(1))
        assert all(shape[-2:] == (tile, tile) for _, shape in model.calls)
        padded = reflect_pad_to(z_lr, max(height, tile), max(width, tile))
        reference = untiled_loop(PointwiseModel(prediction_type), padded, 4, torch.Generator().manual_seed(1))
        reference = reference[..., :height, :width]
        assert tiled.shape == z_lr.shape
        torch.testing.assert_close(tiled, reference, rtol=1e-5, atol=1e-5)


def test_tiles_are_batched_and_timesteps_are_the_original_ones():
    z_lr = torch.randn(1, 4, 24, 40)
    model = PointwiseModel()
    sample("ddpm", model, z_lr, 3, 16, 8, 4)
    grid_tiles = len(TileGrid.build(24, 40, 16, 8))  # 2 x 4 = 8 tiles -> batches of 4, 4
    assert grid_tiles == 8
    assert [shape[0] for _, shape in model.calls] == [4, 4] * 3
    assert [t for t, _ in model.calls] == [999, 999, 500, 500, 0, 0]


def test_constant_output_stays_constant_and_every_pixel_is_covered():
    rng = random.Random(11)
    value = torch.tensor([0.5, -1.25, 3.0, 7.0])
    for _ in range(10):
        tile = rng.choice([8, 16, 32])
        height, width = rng.randint(tile, 90), rng.randint(tile, 90)
        overlap = rng.randint(0, tile - 1)
        z_lr = torch.randn(1, 4, height, width)
        fusion = TileFusion(TileGrid.build(height, width, tile, overlap), z_lr, tile_batch_size=rng.randint(1, 6))
        assert torch.isfinite(fusion.inverse_weight_sum).all() and (fusion.inverse_weight_sum > 0).all()
        fused = fusion(ConstantModel(value).predict, torch.randn_like(z_lr), torch.tensor(999))
        torch.testing.assert_close(fused, value.view(1, 4, 1, 1).expand_as(z_lr), rtol=1e-6, atol=1e-6)


def test_same_seed_same_latent_and_different_seed_different_latent():
    z_lr = torch.randn(1, 4, 20, 20)
    first = sample("ddpm", PointwiseModel(), z_lr, 3, 8, 4, 2, torch.Generator().manual_seed(5))
    again = sample("ddpm", PointwiseModel(), z_lr, 3, 8, 4, 2, torch.Generator().manual_seed(5))
    other = sample("ddpm", PointwiseModel(), z_lr, 3, 8, 4, 2, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("name", ["ddim", "dpmsolver"])
def test_faster_schedulers_through_the_sampler_equal_their_untiled_loop(name):
    z_lr = torch.randn(1, 4, 20, 28)
    tiled = sample(name, PointwiseModel("v_prediction"), z_lr, 5, 8, 3, 3, torch.Generator().manual_seed(2))
    reference_scheduler = fresh_scheduler(scheduler_from_config(name), "v_prediction")
    reference = untiled_loop(
        PointwiseModel("v_prediction"), z_lr, 5, torch.Generator().manual_seed(2), reference_scheduler
    )
    torch.testing.assert_close(tiled, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key, value", [("tile.size", 12), ("tile.overlap", 16), ("num_inference_steps", 0),
                                        ("num_inference_steps", 2.5), ("num_inference_steps", True),
                                        ("start", "middle"), ("tile.batch_size", 0), ("scale", 0), ("color_fix", "x"),
                                        ("vae_tile.size", 100), ("vae_tile.overlap", 12), ("vae_tile.mode", "fast"),
                                        ("input_size", -1), ("w", float("nan")), ("w", "0.5"), ("scale", float("inf")),
                                        ("scale", float("-inf"))])
def test_bad_sampling_settings_are_refused_with_the_setting_named(key, value):
    """One line naming the key (sr.sampling.settings decides the valid values for the pipeline and the commands)."""
    group, _, name = key.partition(".")
    override = {group: {name: value}} if name else {key: value}
    base = dict(num_inference_steps=2, tile=dict(size=16, overlap=8, batch_size=1), start="lr")
    with pytest.raises(ConfigError, match=f"^{key}={re.escape(repr(value))}: [^;]*$"):
        SamplingSettings.resolve(32, base, override)


def test_sampling_settings_resolve_defaults_in_order():
    assert SamplingSettings.resolve(32) == SamplingSettings(input_size=0, tile=TileSettings(size=32, overlap=16))
    preset = {"num_inference_steps": 50, "w": 0.0, "tile": {"overlap": 4}}
    resolved = SamplingSettings.resolve(32, preset, w=0.7, tile={"size": 16, "overlap": None})
    assert (resolved.num_inference_steps, resolved.w, resolved.tile.size, resolved.tile.overlap) == (50, 0.7, 16, 4)
    assert SamplingSettings.resolve(32, tile={"size": 16}).tile.overlap == 8  # half the tile when nobody sets it
    with pytest.raises(ConfigError, match="^steps: unknown sampling setting"):
        SamplingSettings.resolve(32, steps=3)
    with pytest.raises(ConfigError, match="^tile.sise: unknown sampling setting"):
        SamplingSettings.resolve(32, {"tile": {"sise": 3}})


def test_every_setting_is_checked_and_the_arguments_sample_with_the_same_settings():
    """Each field has its check (adding a setting without one fails here); ``arguments()`` given back to
    ``resolve`` as call keywords gives the same settings, whatever the pipeline's defaults."""
    settings = SamplingSettings.resolve(32, {"input_size": 512, "tile": {"overlap": 8}}, w=0.25)
    assert set(settings.components()) == set(sr.sampling.settings._CHECKS)
    other_defaults = {"num_inference_steps": 7, "w": 1.0, "input_size": 64, "tile": {"size": 64, "overlap": 0}}
    assert SamplingSettings.resolve(64, other_defaults, **settings.arguments()) == settings
    assert settings.components()["tile.overlap"] == 8 and settings.components()["w"] == 0.25


def test_old_saved_names_are_mapped_once():
    """model_index.json files of earlier versions (flat ``tile_overlap``, ``steps``) load under today's names."""
    old = {"steps": 10, "tile_overlap": None, "tile_weighting": "official", "vae_tile_mode": "estimate", "w": 0.5}
    assert legacy_names_mapped(old) == {"num_inference_steps": 10, "tile": {"overlap": None, "weighting": "official"},
                                       "vae_tile": {"mode": "estimate"}, "w": 0.5}
    resolved = SamplingSettings.resolve(32, legacy_names_mapped(old))
    assert (resolved.num_inference_steps, resolved.tile.weighting, resolved.vae_tile.mode) == (10, "official",
                                                                                              "estimate")


# ----------------------------------------------------------------------------------------- the real tiny model
def test_one_tile_latent_equals_the_untiled_loop_with_the_tiny_model(tiny_model):
    z_lr = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    tiled = sample("ddpm", tiny_model, z_lr, 2, 16, 8, 4, torch.Generator().manual_seed(9))
    with torch.no_grad():
        reference = untiled_loop(tiny_model, z_lr, 2, torch.Generator().manual_seed(9))
    assert torch.equal(tiled, reference)


def test_tile_batch_size_does_not_change_the_tiny_model_result(tiny_model):
    # 24x24 latent, 16x16 tiles (the tiny UNet's smallest valid input) with overlap 8: 2 x 2 tiles.
    z_lr = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(1))
    results = [sample("ddpm", tiny_model, z_lr, 1, 16, 8, batch, torch.Generator().manual_seed(4)) for batch in (1, 4)]
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)
