"""The StableSR model parts (issue 2): SFT, time-aware encoder, CFW, freezing, saving/loading, full-size configs."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sr.models import CFW, StableSR, TimeAwareEncoder, build_stablesr
from sr.models.sft import attach_sft, detach_sft, modulated_resnets, set_sft_features, sft_disabled

CONF_MODEL = os.path.join(os.path.dirname(__file__), "..", "conf", "model")
REFERENCE = os.path.join(os.path.dirname(__file__), "manifests")


def preset(name: str, *overrides: str):
    with initialize_config_dir(config_dir=os.path.abspath(CONF_MODEL), version_base=None):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny():
    return instantiate(preset("tiny")).eval()


def tiny_unet_config():
    return OmegaConf.to_container(preset("tiny").unet)


def unet_inputs(cross_attention_dim: int, size: int = 16):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, size, size, generator=generator)
    context = torch.randn(2, 8, cross_attention_dim, generator=generator)
    return x, torch.tensor([10, 700]), context


def test_sft_detached_unet_is_exactly_the_plain_unet():
    torch.manual_seed(0)
    plain = UNet2DConditionModel(**tiny_unet_config()).eval()
    patched = UNet2DConditionModel(**tiny_unet_config()).eval()
    patched.load_state_dict(plain.state_dict())
    assert attach_sft(patched, cond_channels=32, hidden_channels=16) == 22
    detach_sft(patched)
    assert patched.state_dict().keys() == plain.state_dict().keys()
    x, t, context = unet_inputs(plain.config.cross_attention_dim)
    with torch.no_grad():
        assert torch.equal(patched(x, t, context).sample, plain(x, t, context).sample)


def test_sft_disabled_is_the_plain_unet_and_enabled_changes_it(tiny):
    plain = UNet2DConditionModel(**tiny_unet_config()).eval()
    plain.load_state_dict({k: v for k, v in tiny.unet.state_dict().items() if ".spade." not in k})
    x, t, context = unet_inputs(plain.config.cross_attention_dim)
    with torch.no_grad():
        reference = plain(x, t, context).sample
        with sft_disabled(tiny.unet):
            assert torch.equal(tiny.unet(x, t, context).sample, reference)
        set_sft_features(tiny.unet, tiny.encoder(torch.randn(2, 4, 16, 16), t))
        assert not torch.allclose(tiny.unet(x, t, context).sample, reference, atol=1e-3)


def test_the_22_sft_layers_sit_where_the_spec_places_them(tiny):
    expected = [f"down_blocks.{b}.resnets.{j}" for b in range(4) for j in range(2)]
    expected += ["mid_block.resnets.0", "mid_block.resnets.1"]
    expected += [f"up_blocks.{b}.resnets.{j}" for b in range(4) for j in range(3)]
    assert sorted(name for name, _ in modulated_resnets(tiny.unet)) == sorted(expected)
    for _, resnet in modulated_resnets(tiny.unet):
        assert resnet.spade.mlp_gamma.out_channels == resnet.conv2.out_channels
        assert resnet.spade.mlp_shared[0].in_channels == tiny.encoder.config.out_channels


def test_modulated_resblock_equals_the_spec_formula(tiny):
    """GN(h) * (1 + gamma) + beta on the residual branch after conv2, before the skip add (spec section 4)."""
    resnet = tiny.unet.down_blocks[1].resnets[0]  # 32 -> 64 channels: exercises the 1x1 shortcut too
    spade = resnet.spade
    with torch.no_grad():  # make gamma/beta clearly non-trivial
        for p in spade.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    captured = {}
    resnet.register_forward_hook(lambda m, args, out: captured.update(x=args[0], temb=args[1], out=out))
    x, t, context = unet_inputs(tiny.unet.config.cross_attention_dim, size=32)
    features = tiny.encoder(torch.randn(2, 4, 32, 32), t)
    with torch.no_grad():
        set_sft_features(tiny.unet, features)
        tiny.unet(x, t, context)
        inp, temb = captured["x"], captured["temb"]
        h = F.conv2d(F.silu(F.group_norm(inp, 32, resnet.norm1.weight, resnet.norm1.bias, 1e-5)),
                     resnet.conv1.weight, resnet.conv1.bias, padding=1)
        h = h + F.linear(F.silu(temb), resnet.time_emb_proj.weight, resnet.time_emb_proj.bias)[:, :, None, None]
        h = F.conv2d(F.silu(F.group_norm(h, 32, resnet.norm2.weight, resnet.norm2.bias, 1e-5)),
                     resnet.conv2.weight, resnet.conv2.bias, padding=1)
        seg = features[h.shape[-1]]
        shared = F.relu(F.conv2d(seg, spade.mlp_shared[0].weight, spade.mlp_shared[0].bias, padding=1))
        gamma = F.conv2d(shared, spade.mlp_gamma.weight, spade.mlp_gamma.bias, padding=1)
        beta = F.conv2d(shared, spade.mlp_beta.weight, spade.mlp_beta.bias, padding=1)
        normed = F.group_norm(h, 32, spade.param_free_norm.weight, spade.param_free_norm.bias, 1e-5)
        skip = F.conv2d(inp, resnet.conv_shortcut.weight, resnet.conv_shortcut.bias)
        expected = skip + normed * (1 + gamma) + beta
    torch.testing.assert_close(captured["out"], expected, rtol=1e-4, atol=1e-5)


def test_time_aware_encoder_features_per_width_and_official_names():
    encoder = TimeAwareEncoder(model_channels=32, out_channels=32, attention_resolutions=(4, 2), num_heads=2)
    features = encoder(torch.randn(1, 4, 16, 24), torch.tensor([999]))
    assert {w: tuple(f.shape) for w, f in features.items()} == {
        24: (1, 32, 16, 24), 12: (1, 32, 8, 12), 6: (1, 32, 4, 6), 3: (1, 32, 2, 3)
    }
    official = _manifest("stablesr_512_keys.tsv", "structcond_stage_model.")
    with torch.device("meta"):
        full = TimeAwareEncoder()
    assert {k: _shape(v) for k, v in full.state_dict().items()} == official
    assert sum(p.numel() for p in full.parameters()) == 52_494_080


def test_timestep_changes_the_encoder_features():
    encoder = TimeAwareEncoder(model_channels=32, out_channels=32, attention_resolutions=(4, 2), num_heads=2)
    with torch.no_grad():  # the zero-initialised out convs would hide the time embedding at init
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    z = torch.randn(1, 4, 16, 16)
    a, b = encoder(z, torch.tensor([0])), encoder(z, torch.tensor([999]))
    assert not torch.allclose(a[16], b[16])


def test_stage1_gradients_reach_only_encoder_and_sft(tiny):
    tiny.freeze_except("stage1")
    x_t, t, _ = unet_inputs(tiny.unet.config.cross_attention_dim)
    loss = tiny.predict(x_t, t, torch.randn(2, 4, 16, 16)).square().mean()
    loss.backward()
    for name, p in tiny.named_parameters():
        trainable = name.startswith("encoder.") or ".spade." in name
        assert p.requires_grad == trainable, name
        if not trainable:
            assert p.grad is None, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny.parameters_of("stage1"))
    tiny.zero_grad(set_to_none=True)
    tiny.freeze_except(None)


def test_cfw_w0_is_exactly_the_plain_decoder_and_w_changes_it(tiny):
    image = torch.rand(1, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        latent, features = tiny.encode(image, generator=torch.Generator().manual_seed(0))
        plain = tiny.vae.decode(latent / tiny.scaling_factor).sample
        assert torch.equal(tiny.decode(latent, features, w=0.0), plain)
        fused = tiny.decode(latent, features, w=1.0)
        half = tiny.decode(latent, features, w=0.5)
    assert fused.shape == plain.shape == (1, 3, 64, 48)
    assert (fused - plain).abs().max() > 1e-4
    assert not torch.equal(half, fused) and not torch.equal(half, plain)


def test_cfw_names_and_sizes_match_the_released_checkpoint():
    official = {k: s for k, s in _manifest("vqgan_cfw_keys.tsv", "decoder.").items() if k.startswith("fusion_layer")}
    with torch.device("meta"):
        cfw = CFW()
    assert {k: _shape(v) for k, v in cfw.state_dict().items()} == official
    assert sum(p.numel() for p in cfw.fusion_layer_2.parameters()) == 33_897_728
    assert sum(p.numel() for p in cfw.fusion_layer_1.parameters()) == 10_496_000


def test_sd21_modules_match_the_released_parameter_map():
    """All 862 UNet (+176 SPADE) and 248 VAE keys of stablesr_ldm_to_diffusers_map.tsv exist with their shapes."""
    cfg = OmegaConf.to_container(preset("sd21_base").unet), OmegaConf.to_container(preset("sd21_base").vae)
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**cfg[0]), AutoencoderKL(**cfg[1])
        assert sum(p.numel() for p in unet.parameters()) == 865_910_724
        attach_sft(unet, cond_channels=256, hidden_channels=128)
    expected = {}
    with open(os.path.join(REFERENCE, "stablesr_ldm_to_diffusers_map.tsv")) as handle:
        for line in handle:
            if not line.startswith("#"):
                _, name, shape = line.rstrip("\n").split("\t")
                expected[name] = shape
    ours = {f"unet.{k}": _shape(v) for k, v in unet.state_dict().items()}
    ours |= {f"vae.{k}": _shape(v) for k, v in vae.state_dict().items()}
    assert ours == expected
    assert sum(p.numel() for k, p in unet.named_parameters() if ".spade." in k) == 53_020_160


def test_save_pretrained_round_trip_through_the_folder_loading_path(tiny, tmp_path):
    folder = tiny.save_pretrained(tmp_path / "tiny_model")
    assert not (set(os.listdir(tmp_path)) - {"tiny_model"})  # no staging folder left behind
    with pytest.raises(FileExistsError):
        tiny.save_pretrained(folder)
    loaded = instantiate(preset("tiny", f"pretrained={folder}")).eval()
    assert loaded.state_dict().keys() == tiny.state_dict().keys()
    x_t, t, _ = unet_inputs(tiny.unet.config.cross_attention_dim)
    z_lr = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.predict(x_t, t, z_lr), tiny.predict(x_t, t, z_lr))
        latent = torch.randn(1, 4, 8, 8)
        features = tiny.encode(torch.rand(1, 3, 64, 64) * 2 - 1, sample=False)[1]
        assert torch.equal(loaded.decode(latent, features, 0.7), tiny.decode(latent, features, 0.7))
    unet_keys = json.loads((folder / "unet" / "config.json").read_text())
    assert unet_keys["_class_name"] == "UNet2DConditionModel"


def test_plain_sd_folder_loads_with_its_text_encoder(tmp_path):
    """A diffusers SD folder (no StableSR parts) loads; the empty prompt is embedded once with its text encoder."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = preset("tiny")
    UNet2DConditionModel(**OmegaConf.to_container(cfg.unet)).save_pretrained(tmp_path / "unet")
    AutoencoderKL(**OmegaConf.to_container(cfg.vae)).save_pretrained(tmp_path / "vae")
    DDPMScheduler(**OmegaConf.to_container(cfg.scheduler)).save_pretrained(tmp_path / "scheduler")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "!": 3}
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "tok" / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tmp_path / "tok" / "vocab.json"), str(tmp_path / "tok" / "merges.txt"), model_max_length=8,
                  pad_token="<|endoftext|>").save_pretrained(tmp_path / "tokenizer")
    text_config = CLIPTextConfig(vocab_size=4, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1)
    CLIPTextModel(text_config).save_pretrained(tmp_path / "text_encoder")
    model = build_stablesr(pretrained=str(tmp_path), encoder=OmegaConf.to_container(cfg.encoder),
                           cfw=OmegaConf.to_container(cfg.cfw), sft=OmegaConf.to_container(cfg.sft))
    assert model.prompt_embeds.shape == (1, 8, 64)
    torch.testing.assert_close(model.prompt_embeds, model.encode_prompt([""]))


def test_missing_or_mismatched_files_are_clear_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no unet/"):
        StableSR.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="stage1.safetensors"):
        tiny.load_trainable(tmp_path / "stage1.safetensors")
    other = TimeAwareEncoder(model_channels=64, out_channels=32, attention_resolutions=(2, 4), num_heads=2)
    path = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({f"encoder.{k}": v.contiguous() for k, v in other.state_dict().items()}, path)
    with pytest.raises(ValueError, match=r"wrong.safetensors: encoder\..* has shape"):
        tiny.load_trainable(path, parts=("encoder",))


def test_trainable_checkpoint_round_trip(tiny, tmp_path):
    path = tiny.save_trainable(tmp_path / "stage1.safetensors")
    before = {k: v.clone() for k, v in tiny.trainable_state_dict(("encoder", "sft")).items()}
    with torch.no_grad():
        for p in tiny.parameters_of("stage1"):
            p.zero_()
    assert tiny.load_trainable(path) == ("encoder", "sft")
    after = tiny.trainable_state_dict(("encoder", "sft"))
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_full_size_sd21_base_runs_one_modulated_step():
    """The real sd21_base architecture with random weights (~866M UNet parameters): one SFT-modulated UNet call."""
    model = instantiate(preset("sd21_base", "pretrained=null")).eval()
    assert model.num_sft_layers == 22
    x_t = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        out = model.predict(x_t, torch.tensor([999]), torch.randn(1, 4, 64, 64))
    assert out.shape == x_t.shape and torch.isfinite(out).all()


def _manifest(name: str, prefix: str) -> dict[str, str]:
    rows = {}
    with open(os.path.join(REFERENCE, name)) as handle:
        for line in handle:
            key, shape = line.rstrip("\n").split("\t")
            if key.startswith(prefix):
                rows[key.removeprefix(prefix)] = shape
    return rows


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"
