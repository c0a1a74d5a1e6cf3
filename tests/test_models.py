"""The StableSR model parts (issue 2): SFT, time-aware encoder, CFW, freezing, saving/loading, full-size configs."""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sr.models import CFW, SFTAdapter, TimeAwareEncoder
from sr.models.prompt import embed_prompts
from sr.models.sft import modulated_resnets
from sr.pipelines import StableSRPipeline, build_pipeline

CONF_MODEL = os.path.join(os.path.dirname(__file__), "..", "conf", "model")
REFERENCE = os.path.join(os.path.dirname(__file__), "manifests")


def preset(name: str, *overrides: str):
    with initialize_config_dir(config_dir=os.path.abspath(CONF_MODEL), version_base=None):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny(tiny_pipe):
    """The shared tiny pipeline's (conftest) operations (``StableSR``); tests that change weights work on a deep copy."""
    return tiny_pipe.model


def tiny_unet_config():
    return OmegaConf.to_container(preset("tiny"), resolve=True)["unet"]


def unet_inputs(cross_attention_dim: int, size: int = 16):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, size, size, generator=generator)
    context = torch.randn(2, 8, cross_attention_dim, generator=generator)
    return x, torch.tensor([10, 700]), context


def test_sft_adapter_applies_only_inside_its_block_and_leaves_the_unet_plain(tiny):
    plain = UNet2DConditionModel(**tiny_unet_config()).eval()
    assert tiny.unet.state_dict().keys() == plain.state_dict().keys()  # no SPADE keys in the UNet
    plain.load_state_dict(tiny.unet.state_dict())
    x, t, context = unet_inputs(plain.config.cross_attention_dim)
    features = tiny.time_aware_encoder(torch.randn(2, 4, 16, 16), t)
    with torch.no_grad():
        reference = plain(x, t, context).sample
        assert torch.equal(tiny.unet(x, t, context).sample, reference)
        with tiny.sft.applied(tiny.unet, features):
            modulated = tiny.unet(x, t, context).sample
        assert not torch.allclose(modulated, reference, atol=1e-3)
        assert torch.equal(tiny.unet(x, t, context).sample, reference)  # hooks gone after the block
    assert not any(resnet.conv2._forward_hooks for _, resnet in modulated_resnets(tiny.unet))
    with pytest.raises(RuntimeError, match="boom"), tiny.sft.applied(tiny.unet, features):
        raise RuntimeError("boom")
    assert not any(resnet.conv2._forward_hooks for _, resnet in modulated_resnets(tiny.unet))


def test_the_22_sft_layers_sit_where_the_spec_places_them(tiny):
    expected = [f"down_blocks.{b}.resnets.{j}" for b in range(4) for j in range(2)]
    expected += ["mid_block.resnets.0", "mid_block.resnets.1"]
    expected += [f"up_blocks.{b}.resnets.{j}" for b in range(4) for j in range(3)]
    assert sorted(tiny.sft.config.resnet_paths) == sorted(expected)
    for path, resnet in modulated_resnets(tiny.unet):
        spade = tiny.sft.get_submodule(path)
        assert spade.mlp_gamma.out_channels == resnet.conv2.out_channels
        assert spade.mlp_shared[0].in_channels == tiny.time_aware_encoder.config.out_channels
    assert all(key.split(".mlp_")[0].split(".param_free_norm")[0] in expected for key in tiny.sft.state_dict())


def test_modulated_resblock_equals_the_spec_formula(tiny):
    """GN(h) * (1 + gamma) + beta on the residual branch after conv2, before the skip add (docs/method.md#sft)."""
    model = copy.deepcopy(tiny)
    resnet = model.unet.down_blocks[1].resnets[0]  # 32 -> 64 channels: exercises the 1x1 shortcut too
    spade = model.sft.get_submodule("down_blocks.1.resnets.0")
    with torch.no_grad():  # make gamma/beta clearly non-trivial
        for p in spade.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    captured = {}
    resnet.register_forward_hook(lambda m, args, out: captured.update(x=args[0], temb=args[1], out=out))
    x, t, context = unet_inputs(model.unet.config.cross_attention_dim, size=32)
    features = model.time_aware_encoder(torch.randn(2, 4, 32, 32), t)
    with torch.no_grad():
        with model.sft.applied(model.unet, features):
            model.unet(x, t, context)
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
    model = copy.deepcopy(tiny)
    model.freeze_except("stage1")
    x_t, t, _ = unet_inputs(model.unet.config.cross_attention_dim)
    loss = model.predict(x_t, t, torch.randn(2, 4, 16, 16)).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        trainable = name.startswith(("time_aware_encoder.", "sft."))
        assert p.requires_grad == trainable, name
        if not trainable:
            assert p.grad is None, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.sft.parameters())


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


def test_tiny_cfw_widths_follow_the_vae_widths_it_fuses():
    """CFW fuses the VAE encoder's and decoder's features at H/2 and H/4: a wider VAE (the release recipe's) needs no
    second edit, and the built pipeline decodes with the fusion on."""
    wider = ("vae.block_out_channels=[48,48,96,96]", "vae.norm_num_groups=8", "+cfw.norm_groups=16")
    cfg = OmegaConf.to_container(preset("tiny", *wider), resolve=True)
    assert cfg["cfw"]["channels"] == [48, 96]
    model = build_pipeline(**{k: v for k, v in cfg.items() if k not in ("_target_", "_convert_")}).model
    with torch.no_grad():
        latent, features = model.encode(torch.rand(1, 3, 32, 32) * 2 - 1, generator=torch.Generator().manual_seed(0))
        assert model.decode(latent, features, w=1.0).shape == (1, 3, 32, 32)


def test_cfw_names_and_sizes_match_the_released_checkpoint():
    official = {k: s for k, s in _manifest("vqgan_cfw_keys.tsv", "decoder.").items() if k.startswith("fusion_layer")}
    with torch.device("meta"):
        cfw = CFW()
    assert {k: _shape(v) for k, v in cfw.state_dict().items()} == official
    assert sum(p.numel() for p in cfw.fusion_layer_2.parameters()) == 33_897_728
    assert sum(p.numel() for p in cfw.fusion_layer_1.parameters()) == 10_496_000


def test_sd21_modules_match_the_released_parameter_map():
    """All 862 UNet (+176 SPADE: the adapter's ``<resnet>.<p>`` as ``<resnet>.spade.<p>``) and 248 VAE keys of
    stablesr_ldm_to_diffusers_map.tsv exist with their shapes."""
    cfg = OmegaConf.to_container(preset("sd21_base").unet), OmegaConf.to_container(preset("sd21_base").vae)
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**cfg[0]), AutoencoderKL(**cfg[1])
        assert sum(p.numel() for p in unet.parameters()) == 865_910_724
        sft = SFTAdapter.for_unet(unet, cond_channels=256, hidden_channels=128)
    expected = {}
    with open(os.path.join(REFERENCE, "stablesr_ldm_to_diffusers_map.tsv")) as handle:
        for line in handle:
            if not line.startswith("#"):
                _, name, shape = line.rstrip("\n").split("\t")
                expected[name] = shape
    ours = {f"unet.{k}": _shape(v) for k, v in unet.state_dict().items()}
    ours |= {f"unet.{path}.spade.{k[len(path) + 1:]}": _shape(v) for k, v in sft.state_dict().items()
             for path in sft.config.resnet_paths if k.startswith(path + ".")}
    ours |= {f"vae.{k}": _shape(v) for k, v in vae.state_dict().items()}
    assert ours == expected
    assert sum(p.numel() for p in sft.parameters()) == 53_020_160


def test_save_pretrained_round_trip_through_the_folder_loading_path(tmp_path):
    pipe = instantiate(preset("tiny", "seed=5"))  # its own model: other tests may not change the weights it saves
    folder = pipe.save_pretrained(tmp_path / "tiny_model")
    assert not (set(os.listdir(tmp_path)) - {"tiny_model"})  # no staging folder left behind
    assert pipe.save_pretrained(folder) == folder  # a pipeline folder is replaced, as diffusers saves
    loaded = instantiate(preset("tiny", f"pretrained={folder}"))
    assert isinstance(loaded, StableSRPipeline) and loaded.config.latent_tile == 32
    model, reloaded = pipe.model, loaded.model
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())
    x_t, t, _ = unet_inputs(model.unet.config.cross_attention_dim)
    z_lr = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(reloaded.predict(x_t, t, z_lr), model.predict(x_t, t, z_lr))
        latent = torch.randn(1, 4, 8, 8)
        features = model.encode(torch.rand(1, 3, 64, 64) * 2 - 1, sample=False)[1]
        assert torch.equal(reloaded.decode(latent, features, 0.7), model.decode(latent, features, 0.7))
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    assert unet_config["_class_name"] == "UNet2DConditionModel"
    assert not [k for k in UNet2DConditionModel.from_pretrained(folder / "unet").state_dict() if "spade" in k]


def test_plain_sd_folder_loads_with_its_text_encoder(tmp_path):
    """A diffusers SD folder (no StableSR parts) loads; the empty prompt is embedded once with its text encoder."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = OmegaConf.to_container(preset("tiny"), resolve=True)
    UNet2DConditionModel(**cfg["unet"]).save_pretrained(tmp_path / "unet")
    AutoencoderKL(**cfg["vae"]).save_pretrained(tmp_path / "vae")
    DDPMScheduler(**cfg["scheduler"]).save_pretrained(tmp_path / "scheduler")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "!": 3}
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "tok" / "vocab.json"), str(tmp_path / "tok" / "merges.txt"),
                              model_max_length=8, pad_token="<|endoftext|>")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    text_config = CLIPTextConfig(vocab_size=4, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1)
    text_encoder = CLIPTextModel(text_config).eval()
    text_encoder.save_pretrained(tmp_path / "text_encoder")
    pipe = build_pipeline(pretrained=str(tmp_path), encoder=cfg["encoder"], cfw=cfg["cfw"], sft=cfg["sft"])
    assert pipe.model.prompt_embeds.shape == (1, 8, 64)
    torch.testing.assert_close(pipe.model.prompt_embeds, embed_prompts(text_encoder, tokenizer, [""]))
    assert len(pipe.sft.config.resnet_paths) == 22 and not pipe.config.cfw_trained


def test_missing_or_mismatched_files_are_clear_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no unet/"):
        build_pipeline(pretrained=tmp_path)
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
    model = instantiate(preset("sd21_base", "pretrained=null")).model
    assert len(model.sft.config.resnet_paths) == 22
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
