"""StableSRPipeline keeps the diffusers pipeline contract (issue 21): saving into existing folders, every image type,
batches and generator lists, step callbacks and interruption, from_pipe, VAE tiling with CFW, and the same image
reading and default settings as upscale.py. On the tiny preset (the shared ``tiny_pipe`` fixture)."""

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sr.models.autoencoder
from sr.commands.config import compose
from sr.commands.upscale_folder import upscale_file
from sr.io import read_image
from sr.models.autoencoder import CFWAutoencoder
from sr.models.cfw import FusionBlock, decode_latent, fuse
from sr.pipelines import StableSRPipeline, resolved_settings
from sr.pipelines.stablesr import _as_batch

RELEASED = Path(__file__).resolve().parents[1] / "sr" / "released" / "stablesr_tiny"
# 16 x 24 LR, x4 -> 64 x 96 px, padded to 64 x 128 -> an 8 x 16 latent: two latent tiles of 8 (overlap 4)
FAST = dict(num_inference_steps=2, tile=dict(size=8, overlap=4), w=0.5, scale=4, input_size=0)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pixels(height: int = 16, width: int = 24, seed: int = 0, batch: int = 1) -> np.ndarray:
    """uint8 ``[B, h, w, 3]`` pixels: exact in every image type."""
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def upscale(pipe, image, seed: int = 3, **settings) -> torch.Tensor:
    return pipe(image, generator=seeded(seed), output_type="pt", **{**FAST, **settings}).images


def test_save_pretrained_replaces_a_pipeline_folder_atomically_and_round_trips(tiny_pipe, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()  # an existing empty folder is used
    tiny_pipe.save_pretrained(folder)
    tiny_pipe.save_pretrained(folder)  # an existing pipeline folder is replaced
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no staging or backup folder left
    for config in folder.glob("**/*.json"):
        assert "_name_or_path" not in json.loads(config.read_text()), config
    loaded = StableSRPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    image = pixels()[0]
    assert torch.equal(upscale(loaded, image), upscale(tiny_pipe, image))

    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.png").write_bytes(b"not touched")
    with pytest.raises(FileExistsError) as error:
        tiny_pipe.save_pretrained(other)
    assert str(other) in str(error.value) and "\n" not in str(error.value)
    assert sorted(path.name for path in other.iterdir()) == ["keep.png"]


def test_every_image_type_gives_the_same_result_for_the_same_pixels(tiny_pipe):
    batch = pixels(batch=2)
    first = batch[0]
    expected = upscale(tiny_pipe, torch.from_numpy(first).permute(2, 0, 1).float() / 255)
    as_float = first.astype(np.float32) / 255
    for image in (Image.fromarray(first), [Image.fromarray(first)], first, as_float, as_float[None],
                  torch.from_numpy(first).permute(2, 0, 1), torch.from_numpy(as_float).permute(2, 0, 1)[None]):
        assert torch.equal(upscale(tiny_pipe, image), expected), type(image)
    as_list = upscale(tiny_pipe, [Image.fromarray(item) for item in batch])
    assert torch.equal(as_list, upscale(tiny_pipe, batch))
    assert torch.equal(as_list, upscale(tiny_pipe, torch.from_numpy(batch).permute(0, 3, 1, 2)))
    with pytest.raises(ValueError, match="share one"):
        tiny_pipe([Image.fromarray(first), Image.fromarray(pixels(8, 8)[0])])


def test_num_images_per_prompt_with_one_generator_per_output_equals_single_calls(tiny_pipe):
    batch = pixels(batch=2)
    seeds = [5, 6, 7, 8]
    out = tiny_pipe(batch, num_images_per_prompt=2, generator=[seeded(seed) for seed in seeds], output_type="pt",
                    **FAST).images
    assert out.shape[0] == 4
    for index, seed in enumerate(seeds):
        assert torch.equal(out[index : index + 1], upscale(tiny_pipe, batch[index // 2], seed=seed)), index
    # one generator for the whole batch: every output still gets its own noise
    shared = tiny_pipe(batch[:1], num_images_per_prompt=2, generator=seeded(5), output_type="pt", **FAST).images
    assert shared.shape[0] == 2 and not torch.equal(shared[0], shared[1])
    for images, per_image, count in ((batch[:1], 1, 2), (batch, 2, 3)):
        with pytest.raises(ValueError, match=rf"^{count} generators for {len(images) * per_image} output images") \
                as error:
            tiny_pipe(images, num_images_per_prompt=per_image, generator=[seeded(0)] * count)
        assert "\n" not in str(error.value)


def test_callback_on_step_end_sees_and_replaces_latents_and_can_interrupt(tiny_pipe):
    image = pixels()[0]
    seen = []

    def record(pipe, index, timestep, tensors):
        seen.append((index, int(timestep), tensors["latents"].clone()))
        return tensors

    recorded = upscale(tiny_pipe, image, callback_on_step_end=record, num_inference_steps=3)
    assert [index for index, _, _ in seen] == [0, 1, 2] and tiny_pipe.num_timesteps == 3
    assert torch.equal(recorded, upscale(tiny_pipe, image, num_inference_steps=3))  # returning them unchanged

    def zero_latents(pipe, index, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if index == 2 else tensors

    zeroed = tiny_pipe(image, generator=seeded(3), output_type="latent", callback_on_step_end=zero_latents,
                       **{**FAST, "num_inference_steps": 3}).images
    assert torch.equal(zeroed, torch.zeros_like(zeroed))

    stops = []

    def stop_after_first(pipe, index, timestep, tensors):
        stops.append((index, tensors["latents"].clone()))
        pipe._interrupt = True
        return tensors

    stopped = tiny_pipe(image, generator=seeded(3), output_type="latent", callback_on_step_end=stop_after_first,
                        **{**FAST, "num_inference_steps": 3}).images
    assert [index for index, _ in stops] == [0] and tiny_pipe.interrupt
    assert torch.equal(stopped, stops[0][1][..., : stopped.shape[-2], : stopped.shape[-1]])
    with pytest.raises(ValueError, match=r"\['noise'\] unknown"):
        tiny_pipe(image, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["noise"])
    assert "latents" in StableSRPipeline._callback_tensor_inputs


def test_from_pipe_shares_the_components_and_keeps_the_config(tiny_pipe):
    copy = StableSRPipeline.from_pipe(tiny_pipe)
    copy.set_progress_bar_config(disable=True)
    for name, component in tiny_pipe.components.items():
        assert getattr(copy, name) is component, name
    for key in ("latent_tile", "sampling", "cfw_trained"):
        assert copy.config[key] == tiny_pipe.config[key], key
    image = pixels()[0]
    assert torch.equal(upscale(copy, image), upscale(tiny_pipe, image))


def test_vae_tiling_switch_selects_the_exact_tiled_vae_with_cfw(tiny_pipe, monkeypatch):
    tiled_calls = []
    for name in ("tiled_encode", "tiled_decode"):
        real = getattr(sr.models.autoencoder, name)
        monkeypatch.setattr(sr.models.autoencoder, name,
                            lambda *a, _real=real, _name=name, **k: tiled_calls.append(_name) or _real(*a, **k))
    image = pixels(32, 48)[0]
    # 128 x 192 px in 64 px VAE tiles (2 x 3), a 16 x 24 latent in two sampling tiles
    small_tiles = dict(vae_tile=dict(size=64, overlap=16), w=0.5, tile=dict(size=16, overlap=8),
                       num_inference_steps=1)
    try:
        tiny_pipe.disable_vae_tiling()
        untiled = upscale(tiny_pipe, image, **small_tiles)
        assert tiled_calls == []
        tiny_pipe.enable_vae_tiling()
        tiled = upscale(tiny_pipe, image, **small_tiles)
        assert tiled_calls == ["tiled_encode", "tiled_decode"]
        torch.testing.assert_close(tiled, untiled, atol=1e-5, rtol=0)
        tiny_pipe.vae.enable_tiling()  # diffusers' tiling of the plain decoder cannot carry the CFW features
        with pytest.raises(ValueError, match=r"enable_vae_tiling\(\)"):
            upscale(tiny_pipe, image, **small_tiles)
    finally:
        tiny_pipe.vae.disable_tiling()
        tiny_pipe.enable_vae_tiling()


def test_the_api_reads_files_and_pil_images_as_upscale_py_does(tiny_pipe, tmp_path):
    """A 16-bit grey PNG with EXIF orientation 6 (rotate 90 degrees clockwise): the path and the opened PIL image
    give the CLI reader's array (not all white, rotated), and a call on the path equals the CLI's written output."""
    grey = np.random.default_rng(1).integers(0, 2**16, (12, 20), dtype=np.uint16)
    source = tmp_path / "in" / "grey16.png"
    source.parent.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(grey).save(source, exif=exif.tobytes())
    cli = read_image(source).image
    assert cli.shape == (1, 20, 12) and cli.max() < 1
    torch.testing.assert_close(cli[0], torch.from_numpy(np.rot90(grey, -1) / 65535).float(), atol=0, rtol=0)
    with Image.open(source) as opened:
        assert torch.equal(_as_batch(opened)[0], cli)
    assert torch.equal(_as_batch(source)[0], cli) and torch.equal(_as_batch(str(source))[0], cli)

    written = upscale_file(partial(tiny_pipe, output_type="pt", **FAST), source, tmp_path / "out" / "grey16.png",
                           seed=4, max_pixels=10**6, overwrite=False)
    api = upscale(tiny_pipe, str(source), seed=4)[0]
    assert read_image(written).bit_depth == 16
    torch.testing.assert_close(read_image(written).image, (api * 65535).round() / 65535, atol=1e-7, rtol=0)


def test_the_released_folder_defaults_to_its_preset_settings_and_records_no_machine_path():
    pipe = StableSRPipeline.from_pretrained(RELEASED)
    settings = pipe.sampling_settings()
    assert settings == resolved_settings(compose("upscale", ["model=stablesr_tiny"]))
    assert settings.num_inference_steps == 10
    for config in RELEASED.glob("**/*.json"):
        assert "_name_or_path" not in json.loads(config.read_text()), config


def test_cfw_autoencoder_is_the_vae_and_cfw_as_one_component(tiny_pipe):
    """``forward`` = decode(posterior mode, own features, w); ``w = 0`` is exactly the plain decoder with the fusion
    layers present; the fusion block is ``F_d + w * C(F_e, F_d)`` through ``fuse``."""
    autoencoder = CFWAutoencoder(tiny_pipe.vae, tiny_pipe.cfw)
    x = torch.rand(1, 3, 32, 48, generator=seeded(0)) * 2 - 1
    with torch.no_grad():
        encoding = autoencoder.encode(x)
        z = encoding.latent_dist.mode()
        assert torch.equal(autoencoder(x, w=0.7), autoencoder.decode(z, encoding.features, 0.7))
        assert torch.equal(autoencoder.decode(z, encoding.features, 0.0), tiny_pipe.vae.decode(z).sample)
        assert not torch.equal(autoencoder.decode(z, encoding.features, 0.7), tiny_pipe.vae.decode(z).sample)
        assert torch.equal(autoencoder.decode(z, encoding.features, 0.7),
                           decode_latent(tiny_pipe.vae, tiny_pipe.cfw, z, encoding.features, 0.7))
        block: FusionBlock = tiny_pipe.cfw.fusion_layer_1
        enc, dec = encoding.features[0], torch.randn_like(encoding.features[0])
        correction = block.encode_enc_3(block.encode_enc_2(block.encode_enc_1(torch.cat([enc, dec], 1))))
        assert torch.equal(block(enc, dec, 0.3), dec + 0.3 * correction)
        assert torch.equal(fuse(dec, correction, 0.3), dec + 0.3 * correction)
