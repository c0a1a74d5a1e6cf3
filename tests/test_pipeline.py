"""StableSRPipeline: save/load round trip against a hand-rolled reference, and the research arguments (issue 16)."""

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image

import sr.models.autoencoder
from sr.models.cfw import decode_latent, encoder_features
from sr.ops.color import adain_color_fix
from sr.ops.tiling import TileGrid
from sr.pipelines import StableSRPipeline, StableSRPipelineOutput
from sr.sampling import reflect_pad_to
from sr.sampling.respacing import official_respaced_timesteps

CONF = Path(__file__).resolve().parents[1] / "conf"
# 24 x 40 LR, x4 -> 96 x 160 px, padded to 128 x 192 -> a 16 x 24 latent: 2 tiles of 16 (overlap 8)
MULTI_TILE = dict(num_inference_steps=2, tile=dict(size=16, overlap=8, batch_size=2), w=0.5, color_fix="adain",
                  scale=4, input_size=0, start="lr")


@pytest.fixture
def pipe(tiny_pipe):
    return tiny_pipe


def lr_image(height: int = 24, width: int = 40, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, channels, height, width, generator=torch.Generator().manual_seed(seed))


def hand_rolled_upscale(pipe: StableSRPipeline, lr: torch.Tensor, seed: int) -> torch.Tensor:
    """The released any-size recipe written out with the parts' own calls (docs/method.md#sampling, docs/method.md#aggregation, docs/method.md#colour-correction): no pipeline, no sr.sampling
    loop, every tile in one UNet batch, the x_T formula written out."""
    model, generator = pipe.model, torch.Generator().manual_seed(seed)
    up = F.interpolate(lr * 2 - 1, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    padded = reflect_pad_to(up, 128, 192)
    moments, features = encoder_features(model.vae, padded)
    z_lr = DiagonalGaussianDistribution(moments).sample(generator=generator) * model.scaling_factor
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(2)
    alpha_bar = scheduler.alphas_cumprod[999]
    noise = torch.randn(z_lr.shape, generator=generator)
    x = alpha_bar.sqrt() * z_lr + (1 - alpha_bar).sqrt() * noise
    grid = TileGrid.build(16, 24, 16, 8)
    assert len(grid) == 2
    for timestep in scheduler.timesteps:
        outputs = model.predict(grid.crop(x)[:, 0], timestep, grid.crop(z_lr)[:, 0])
        fused = torch.zeros_like(x)
        for index, tile_slice in enumerate(grid.slices):
            fused[(..., *tile_slice)].addcmul_(outputs[index : index + 1], grid.weights.float())
        x = scheduler.step(fused * grid.inverse_weight_sum.float(), timestep, x, generator=generator).prev_sample
    image = decode_latent(model.vae, model.cfw, x / model.scaling_factor, features, 0.5)[..., :96, :160]
    return ((adain_color_fix(image, up) + 1) / 2).clamp(0, 1)


def test_saved_and_loaded_pipeline_equals_the_hand_rolled_reference_bit_for_bit(pipe, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "tiny")
    loaded = StableSRPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.cfw_trained and loaded.config.latent_tile == 32
    lr = lr_image()
    with torch.no_grad():
        reference = hand_rolled_upscale(pipe, lr, seed=3)
    for candidate in (pipe, loaded):
        out = candidate(lr, generator=torch.Generator().manual_seed(3), output_type="pt", **MULTI_TILE)
        assert isinstance(out, StableSRPipelineOutput) and out.images.shape == (1, 3, 96, 160)
        assert torch.equal(out.images, reference)


def test_defaults_come_from_the_pipeline_config_and_are_validated(pipe):
    assert pipe.sampling_settings().num_inference_steps == 50  # the tiny preset's sampling block
    assert pipe.sampling_settings().tile.size == 32 and pipe.sampling_settings().tile.overlap == 16
    with pytest.raises(ValueError, match="^tile.overlap=16: "):
        pipe(lr_image(), tile={"size": 16, "overlap": 16})
    with pytest.raises(ValueError, match="output_type"):
        pipe(lr_image(), output_type="jpeg", num_inference_steps=1)


def test_prompt_embeds_replace_the_cached_conditioning(pipe):
    lr, settings = lr_image(8, 8), dict(MULTI_TILE, num_inference_steps=1)
    run = lambda **extra: pipe(lr, generator=torch.Generator().manual_seed(0), output_type="pt", **settings,
                               **extra).images
    default = run()
    assert torch.equal(run(prompt_embeds=pipe.prompt_embedding.prompt_embeds.clone()), default)
    other = torch.randn(pipe.prompt_embedding.prompt_embeds.shape, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(run(prompt_embeds=other), default, atol=1e-4)


def test_latents_in_and_out_and_deterministic_encode(pipe):
    """x_T comes back with return_latents; fed back with a deterministic encode and a deterministic scheduler,
    the result no longer depends on the generator. A sampled encode still does."""
    lr = lr_image(10, 14)
    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(original.config)
    try:
        first = pipe(lr, generator=torch.Generator().manual_seed(0), output_type="pt", return_latents=True,
                     sample_posterior=False, **MULTI_TILE)
        # 40 x 56 px -> padded 64 x 64 -> an 8 x 8 latent, padded to one 16 x 16 tile for sampling
        assert first.latents.shape == (1, 4, 16, 16)
        replay = pipe(lr, generator=torch.Generator().manual_seed(99), output_type="pt", latents=first.latents,
                      sample_posterior=False, **MULTI_TILE)
        assert torch.equal(replay.images, first.images) and replay.latents is None
        sampled = pipe(lr, generator=torch.Generator().manual_seed(99), output_type="pt", latents=first.latents,
                       **MULTI_TILE)
        assert not torch.equal(sampled.images, first.images)
        with pytest.raises(ValueError, match="x_T"):
            pipe(lr, output_type="pt", latents=torch.zeros(1, 4, 8, 8), **MULTI_TILE)
    finally:
        pipe.scheduler = original


def test_one_latent_scaling_convention_for_encode_decode_and_latent_output(pipe):
    model, image = pipe.model, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        latent, _ = model.encode(image, sample=False)
        expected = model.scaling_factor * pipe.vae.encode(image).latent_dist.mode()
        torch.testing.assert_close(latent, expected)
        torch.testing.assert_close(model.decode(latent), pipe.vae.decode(latent / model.scaling_factor).sample)
    lr = lr_image(16, 16)
    settings = dict(MULTI_TILE, w=0.0, color_fix="none")
    latent_out = pipe(lr, generator=torch.Generator().manual_seed(1), output_type="latent", **settings).images
    images = pipe(lr, generator=torch.Generator().manual_seed(1), output_type="pt", **settings).images
    assert latent_out.shape == (1, 4, 8, 8)  # 64 x 64 px output, already a multiple of 64: no padding
    with torch.no_grad():
        decoded = ((model.decode(latent_out) + 1) / 2).clamp(0, 1)
    assert torch.equal(decoded, images)


def test_pil_grey_and_numpy_inputs(pipe):
    grey = Image.fromarray((lr_image(6, 9, 1)[0, 0] * 255).round().byte().numpy(), mode="L")
    out = pipe(grey, generator=torch.Generator().manual_seed(0), **dict(MULTI_TILE, num_inference_steps=1)).images
    assert len(out) == 1 and out[0].mode == "L" and out[0].size == (36, 24)
    array = pipe(lr_image(6, 9)[0].permute(1, 2, 0).numpy(), output_type="np",
                 **dict(MULTI_TILE, num_inference_steps=1)).images
    assert array.shape == (1, 24, 36, 3) and 0 <= array.min() and array.max() <= 1


def test_grey_in_grey_out_per_image_in_a_batch_and_in_the_baselines(pipe):
    """An RGB input with three equal channels gives three exactly equal channels, the one-channel input's output;
    in a mixed batch the colour image keeps its colour (docs/method.md#colour-correction)."""
    settings = dict(MULTI_TILE, num_inference_steps=1)
    grey = lr_image(6, 9, 1, seed=4)
    colour = lr_image(6, 9, 3, seed=5)
    batch = torch.cat([grey.expand(-1, 3, -1, -1), colour])
    # one generator per image: each output is what the image gives alone
    generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
    out = pipe(batch, generator=generators, output_type="pt", **settings).images
    assert out.shape == (2, 3, 24, 36)
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])
    assert (out[1, 0] - out[1, 1]).abs().max() > 1e-2 and (out[1, 1] - out[1, 2]).abs().max() > 1e-2
    one_channel = pipe(grey, generator=torch.Generator().manual_seed(0), output_type="pt", **settings).images
    assert one_channel.shape == (1, 1, 24, 36) and torch.equal(out[:1], one_channel.expand(-1, 3, -1, -1))
    alone = pipe(colour, generator=torch.Generator().manual_seed(1), output_type="pt", **settings).images
    assert torch.equal(out[1:], alone)
    # the lr_latent baseline goes through the same output path
    reconstructed = pipe.reconstruct(batch, w=0.5, color_fix="adain", scale=4, output_type="pt").images
    assert torch.equal(reconstructed[0, 0], reconstructed[0, 2]) and torch.equal(reconstructed[0, 1], reconstructed[0, 2])
    assert (reconstructed[1, 0] - reconstructed[1, 2]).abs().max() > 1e-2


def test_untrained_cfw_warns_on_the_path_users_run(pipe):
    pipe.register_to_config(cfw_trained=False)
    try:
        with pytest.warns(UserWarning, match="never loaded or trained"):
            pipe(lr_image(6, 6), output_type="pt", **dict(MULTI_TILE, num_inference_steps=1))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pipe(lr_image(6, 6), output_type="pt", **dict(MULTI_TILE, num_inference_steps=1, w=0.0))
    finally:
        pipe.register_to_config(cfw_trained=True)


def test_tile_weighting_and_respacing_reach_the_sampler(pipe, monkeypatch):
    lr, seed = lr_image(40, 24), torch.Generator().manual_seed  # a 24 x 16 latent: two tiles stacked vertically
    centred = pipe(lr, generator=seed(0), output_type="latent", **MULTI_TILE).images
    official = pipe(lr, generator=seed(0), output_type="latent",
                    **dict(MULTI_TILE, tile={**MULTI_TILE["tile"], "weighting": "official"})).images
    assert not torch.equal(centred, official)  # the weights differ in y only: the vertical overlap blends differently
    visited = []
    real_predict = type(pipe.model).predict
    monkeypatch.setattr(type(pipe.model), "predict", lambda self, x, t, z, p=None: visited.append(int(t)) or
                        real_predict(self, x, t, z, p))
    pipe(lr_image(4, 4), output_type="latent", respacing="official", **dict(MULTI_TILE, num_inference_steps=21))
    assert visited == official_respaced_timesteps(21) and 499 in visited  # linspace would visit 500
    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(original.config)
    try:
        with pytest.raises(ValueError, match="respacing=official needs a scheduler"):
            pipe(lr_image(8, 8), respacing="official", **MULTI_TILE)
    finally:
        pipe.scheduler = original


def test_vae_tile_mode_reaches_the_tiled_vae(pipe, monkeypatch):
    """64 px VAE tiles on a 128 x 192 px output (2 x 3 tiles; 1024 px tiles: untiled): ``exact`` equals the untiled
    VAE up to float rounding, ``estimate`` (tile-local attention and context) does not; a call and ``reconstruct``
    run both their encode and their decode in the chosen mode."""
    modes = []
    for name in ("tiled_encode", "tiled_decode"):
        real = getattr(sr.models.autoencoder, name)
        monkeypatch.setattr(sr.models.autoencoder, name,
                            lambda *args, _real=real, _name=name, **kwargs: modes.append((_name, kwargs["mode"]))
                            or _real(*args, **kwargs))
    lr, settings = lr_image(32, 48), dict(MULTI_TILE, num_inference_steps=1, color_fix="none")
    run = lambda **vae: pipe(lr, generator=torch.Generator().manual_seed(0), output_type="pt", **settings,
                             **vae).images
    untiled = run()
    exact = run(vae_tile=dict(size=64, overlap=16, mode="exact"))
    estimate = run(vae_tile=dict(size=64, overlap=16, mode="estimate"))
    assert untiled.shape == (1, 3, 128, 192)
    torch.testing.assert_close(exact, untiled, atol=1e-5, rtol=0)
    assert (estimate - untiled).abs().max() > 1e-2
    pipe.reconstruct(lr, vae_tile=dict(size=64, overlap=16, mode="estimate"), output_type="pt")
    assert modes == [(name, mode) for mode in ("exact", "exact", "estimate", "estimate")
                     for name in ("tiled_encode", "tiled_decode")]
    with pytest.raises(ValueError, match=r"^vae_tile.mode='fast': must be one of exact, estimate$"):
        pipe(lr, vae_tile={"mode": "fast"})


def test_offload_hooks_are_triggered_for_the_parts_run_through_submodules(pipe, monkeypatch):
    """enable_model_cpu_offload moves a component when its forward runs; the VAE encoder and the CFW layers are
    called through submodules, so the pipeline must trigger their hooks itself (before encoding / decoding)."""
    calls = []

    class RecordingHook:
        def __init__(self, name):
            self.name = name

        def pre_forward(self, module, *args, **kwargs):
            calls.append(self.name)
            return args, kwargs

    monkeypatch.setattr(pipe.vae, "_hf_hook", RecordingHook("vae"), raising=False)
    monkeypatch.setattr(pipe.cfw, "_hf_hook", RecordingHook("cfw"), raising=False)
    monkeypatch.setattr(type(pipe), "_execution_device", property(lambda self: torch.device("cpu")))
    pipe(lr_image(6, 6), output_type="pt", **dict(MULTI_TILE, num_inference_steps=1))
    assert calls[:3] == ["vae", "cfw", "vae"]


def test_baselines_are_the_call_without_diffusion_and_the_resize_alone(pipe):
    """``reconstruct``: the call's encode (posterior mode) decoded at once with CFW fused at w, colour-fixed;
    ``bicubic``: the call's resize, no model, no colour fix; both turn grey inputs back to one channel."""
    lr = lr_image()
    up = F.interpolate(lr * 2 - 1, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    moments, features = encoder_features(pipe.vae, reflect_pad_to(up, 128, 192))
    latent = DiagonalGaussianDistribution(moments).mode()
    decoded = decode_latent(pipe.vae, pipe.cfw, latent, features, 0.5)[..., :96, :160]
    expected = ((adain_color_fix(decoded, up) + 1) / 2).clamp(0, 1)
    reconstructed = pipe.reconstruct(lr, w=0.5, color_fix="adain", scale=4, output_type="pt").images
    torch.testing.assert_close(reconstructed, expected, atol=1e-5, rtol=0)
    plain = pipe.reconstruct(lr, w=0.0, color_fix="adain", scale=4, output_type="pt").images
    assert (plain - reconstructed).abs().max() > 1e-3   # w reaches the CFW fusion

    bicubic = StableSRPipeline.bicubic(lr, scale=4, output_type="pt").images
    torch.testing.assert_close(bicubic, (up + 1) / 2, atol=1e-6, rtol=0)
    grey = Image.fromarray((lr_image(6, 9, 1)[0, 0] * 255).round().byte().numpy(), mode="L")
    for method in (StableSRPipeline.bicubic, pipe.reconstruct):
        (image,) = method(grey, scale=4).images
        assert image.mode == "L" and image.size == (36, 24)
    with pytest.raises(ValueError, match="scale=0: must be a number > 0"):
        StableSRPipeline.bicubic(lr, scale=0)
