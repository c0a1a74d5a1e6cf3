"""Settings that reproduce the released sampler: official respacing (docs/method.md#schedule) vs diffusers' linspace, DDPM steps
with custom timesteps, official tile weights in the sampler (docs/method.md#aggregation), and the presets that select them."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from sr.commands.config import compose
from sr.ops.tiling import TileGrid
from sr.pipelines import SamplingSettings, resolved_settings
from sr.sampling import denoise
from sr.sampling.respacing import check_respacing, official_respaced_timesteps, set_sampling_timesteps

SPEC_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    timestep_spacing="linspace", variance_type="fixed_small",
)
IDENTICAL_STEP_COUNTS = [4, 20, 25, 50, 100, 200, 250, 500, 1000]


def space_timesteps_reference(num_steps: int) -> list[int]:
    """docs/method.md#schedule's description, written independently: a float64 running sum of the stride 999 / (N - 1), each partial
    sum rounded half to even (numpy's sequential ``cumsum`` and ``rint``), in descending order."""
    if num_steps == 1:
        return [0]
    partial_sums = np.concatenate([[0.0], np.cumsum(np.full(num_steps - 1, 999 / (num_steps - 1)))])
    return np.rint(partial_sums).astype(np.int64)[::-1].tolist()


def linspace_timesteps(num_steps: int) -> list[int]:
    scheduler = DDPMScheduler(**SPEC_SCHEDULE)
    scheduler.set_timesteps(num_steps)
    return scheduler.timesteps.tolist()


def test_official_respacing_equals_the_released_formula_for_every_step_count():
    for num_steps in range(1, 1001):
        timesteps = official_respaced_timesteps(num_steps)
        assert timesteps == space_timesteps_reference(num_steps), num_steps
        assert len(timesteps) == num_steps and timesteps[0] == (999 if num_steps > 1 else 0) and timesteps[-1] == 0


def test_official_and_linspace_differ_only_at_ties_by_one_as_the_issue_measured():
    differing = {}
    for num_steps in range(1, 1001):
        official, linspace = np.array(official_respaced_timesteps(num_steps)), np.array(linspace_timesteps(num_steps))
        assert np.abs(official - linspace).max() <= 1
        if (official != linspace).any():
            differing[num_steps] = int((official != linspace).sum())
    # Issue 16's comparison against the released code: 278 step counts, up to 19 timesteps each.
    assert len(differing) == 278 and max(differing.values()) == 19
    assert not set(IDENTICAL_STEP_COUNTS) & set(differing)
    official_21, linspace_21 = official_respaced_timesteps(21), linspace_timesteps(21)
    assert 499 in official_21 and 500 not in official_21 and 500 in linspace_21 and 499 not in linspace_21


@pytest.mark.parametrize("num_steps", IDENTICAL_STEP_COUNTS)
def test_known_step_counts_are_identical_to_linspace(num_steps):
    assert official_respaced_timesteps(num_steps) == linspace_timesteps(num_steps)


@pytest.mark.parametrize("num_steps", [0, 1001])
def test_step_counts_outside_the_schedule_are_refused(num_steps):
    with pytest.raises(ValueError, match="must be in 1..1000"):
        official_respaced_timesteps(num_steps)


def hand_chain(timesteps: list[int], x: torch.Tensor, model, generator: torch.Generator) -> torch.Tensor:
    """docs/method.md#schedule's respaced DDPM in float64: alpha_bar'_k = alpha_bar[S_k], beta'_k = 1 - alpha_bar'_k/alpha_bar'_{k-1},
    fixed-small variance, one N(0, 1) draw per step with k > 0 (the order diffusers draws in)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alpha_bar = np.cumprod(1 - betas)
    ascending = timesteps[::-1]
    x = x.double()
    for k in range(len(ascending) - 1, -1, -1):
        a = alpha_bar[ascending[k]]
        a_prev = alpha_bar[ascending[k - 1]] if k > 0 else 1.0
        beta = 1 - a / a_prev
        out = model(x.float(), ascending[k]).double()
        x0 = math.sqrt(1 / a) * x - math.sqrt(1 / a - 1) * out
        mean = beta * math.sqrt(a_prev) / (1 - a) * x0 + (1 - a_prev) * math.sqrt(1 - beta) / (1 - a) * x
        if k > 0:
            noise = torch.randn(x.shape, generator=generator).double()
            x = mean + math.sqrt(beta * (1 - a_prev) / (1 - a)) * noise
        else:
            x = mean
    return x


def toy_model(x: torch.Tensor, timestep) -> torch.Tensor:
    return 0.4 * x + torch.cos(x * 2) * (float(timestep) / 1000)


def test_ddpm_with_official_custom_timesteps_steps_to_the_next_listed_timestep():
    # 21 steps: official visits 499 (linspace: 500), so a wrong previous timestep would change the chain.
    x_t = torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    scheduler = DDPMScheduler(**SPEC_SCHEDULE)
    set_sampling_timesteps(scheduler, 21, "official")
    assert scheduler.timesteps.tolist() == official_respaced_timesteps(21)
    listed = official_respaced_timesteps(21)
    assert listed[9:12] == [549, 499, 450]
    assert [int(scheduler.previous_timestep(t)) for t in scheduler.timesteps] == listed[1:] + [-1]
    x, generator = x_t.clone(), torch.Generator().manual_seed(1)
    for timestep in scheduler.timesteps:
        x = scheduler.step(toy_model(x, timestep), timestep, x, generator=generator).prev_sample
    expected = hand_chain(official_respaced_timesteps(21), x_t, toy_model, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=5e-5)  # measured 4.8e-6 (float32 scheduler)
    # The check is sharp enough to see the one-timestep difference of the linspace chain.
    linspace = hand_chain(linspace_timesteps(21), x_t, toy_model, torch.Generator().manual_seed(1))
    assert (linspace - expected).abs().max() > 20 * 5e-5  # measured 9.9e-3


def test_sampler_visits_the_official_timesteps_and_ddim_is_refused():
    calls = []

    class RecordingModel:
        prediction_type = "epsilon"

        def predict(self, x_t, timesteps, z_lr):
            calls.append(int(timesteps))
            return torch.zeros_like(x_t)

    scheduler = DDPMScheduler(**SPEC_SCHEDULE)
    set_sampling_timesteps(scheduler, 21, "official")
    denoise(RecordingModel().predict, scheduler, torch.zeros(1, 4, 8, 8), 8, 4, 1, "lr", torch.Generator().manual_seed(0))
    assert calls == official_respaced_timesteps(21)
    dpm = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    set_sampling_timesteps(dpm, 21, "official")
    assert dpm.timesteps.tolist() == official_respaced_timesteps(21)
    with pytest.raises(ValueError, match="respacing=official needs a scheduler that takes custom timesteps"):
        check_respacing(DDIMScheduler(), "official")
    with pytest.raises(ValueError, match="^respacing='offical': must be one of official, scheduler"):
        SamplingSettings.resolve(8, respacing="offical")


class TileMeanModel:
    """Output = the mean of the LR-latent tile: depends on the tile, so the blend weights show in the result."""

    prediction_type = "epsilon"

    def predict(self, x_t, timesteps, z_lr):
        return z_lr.mean(dim=(-2, -1), keepdim=True).expand_as(x_t) + 0.1 * x_t


@pytest.mark.parametrize("weighting", ["official", "centred"])
def test_sampler_blends_tiles_with_the_chosen_weights(weighting):
    z_lr = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(3))
    result = blend_one_step(z_lr, weighting)
    # Reference: x_T = noise; one DDPM step at t = 0 with the model outputs blended by TileGrid's weights.
    grid = TileGrid.build(24, 24, 16, 8, weighting=weighting)
    x_t = torch.randn(z_lr.shape, generator=torch.Generator().manual_seed(4))
    eps = grid.aggregate(TileMeanModel().predict(grid.crop(x_t)[:, 0], 0, grid.crop(z_lr)[:, 0]).unsqueeze(1))
    scheduler = DDPMScheduler(**SPEC_SCHEDULE)
    scheduler.set_timesteps(1)
    expected = scheduler.step(eps, 0, x_t).prev_sample
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    other_result = blend_one_step(z_lr, "centred" if weighting == "official" else "official")
    assert not torch.allclose(result, other_result, rtol=1e-4, atol=1e-4)


def blend_one_step(z_lr: torch.Tensor, weighting: str) -> torch.Tensor:
    """One DDPM step of progressive aggregation from noise, 16-tiles with overlap 8, blended with ``weighting``."""
    scheduler = DDPMScheduler(**SPEC_SCHEDULE)
    scheduler.set_timesteps(1)
    return denoise(TileMeanModel().predict, scheduler, z_lr, 16, 8, 4, "noise", torch.Generator().manual_seed(4),
                   tile_weighting=weighting)[0]


@pytest.mark.parametrize(
    "model,expected",
    [("stablesr_official", "official"), ("stablesr_official_768v", "official"), ("stablesr_official_turbo", "official"),
     ("sd21_base", "centred"), ("sd21_768v", "centred"), ("tiny", "centred")],
)
def test_official_presets_sample_with_the_released_tile_weights_and_respacing(model, expected):
    cfg = compose("upscale", [f"model={model}", "input=unset", "output=unset"])
    settings = resolved_settings(cfg)
    assert settings.tile.weighting == expected
    assert settings.respacing == ("official" if expected == "official" else "scheduler")
    override = compose("upscale", [f"model={model}", "input=unset", "output=unset", "tile.weighting=centred",
                                   "respacing=scheduler"])
    assert (override.tile.weighting, override.respacing) == ("centred", "scheduler")
