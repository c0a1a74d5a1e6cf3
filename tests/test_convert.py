"""Safe checkpoint loading and conversion of the released StableSR checkpoints (project issue 8).

The fakes follow the manifests in tests/manifests: (a) the full key set with constant, memory-free (expanded)
tensors of the real shapes, (b) a complete checkpoint with the ``tiny`` preset's widths converted end to end,
(c, slow) a full-size random checkpoint end to end.
"""

import json
import math
import os
import pickle
import re
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sr.commands.convert import (
    VARIANTS,
    Architecture,
    ConversionError,
    _load_preset,
    check_schedule,
    clip_text_model_from_open_clip,
    convert_stablesr,
    convert_stablesr_state_dict,
    convert_vqgan_state_dict,
    converter_output_extras,
    empty_prompt_token_ids,
    main,
    open_clip_text_context,
)
from sr.pipelines import StableSRPipeline
from sr.pipelines.build import from_configs, new_sft_adapter
from sr.utils.checkpoint import (
    CheckpointError,
    LightningCallbackStandIn,
    load_checkpoint_state_dict,
)

REFERENCE = Path(__file__).resolve().parent / "manifests"
LIGHTNING_MODULE = "pytorch_lightning.callbacks.model_checkpoint"
SETSTATE_CALLS = []


class ModelCheckpoint:
    """Stands in for Lightning's callback class, which PL-1.4 checkpoints pickle as the key of ``callbacks``."""

    def __init__(self):
        self.monitor = "val/loss"
        self.best_model_score = torch.tensor(0.25)

    def __setstate__(self, state):
        SETSTATE_CALLS.append(state)  # must never run while loading
        self.__dict__.update(state)


ModelCheckpoint.__module__ = LIGHTNING_MODULE


def save_lightning_checkpoint(path: Path, state_dict: dict, monkeypatch) -> None:
    """``torch.save`` a PL-1.4-style checkpoint; the callback's module exists only while saving."""
    module = types.ModuleType(LIGHTNING_MODULE)
    module.ModelCheckpoint = ModelCheckpoint
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, LIGHTNING_MODULE, module)
        torch.save(
            {
                "state_dict": state_dict,
                "epoch": 117,
                "global_step": 175500,
                "pytorch-lightning_version": "1.4.2",
                "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.25), "dirpath": "logs"}},
                "loops": ModelCheckpoint(),
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 5e-5}]}],
            },
            path,
        )


def shape_of(text: str) -> tuple[int, ...]:
    return () if text == "scalar" else tuple(int(x) for x in text.split("x"))


def read_manifest(name: str) -> dict[str, tuple[int, ...]]:
    rows = (line.rstrip("\n").split("\t") for line in (REFERENCE / name).read_text().splitlines())
    return {key: shape_of(shape) for key, shape in rows}


def constant_tensors(manifest: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Tensor ``i`` of the manifest is the constant ``i`` expanded to its shape (no memory, identifiable values)."""
    return {key: torch.tensor(float(i)).expand(shape) for i, (key, shape) in enumerate(manifest.items())}


def first_value(tensor: torch.Tensor) -> float:
    return tensor[(0,) * tensor.dim()].item()


# ---------------------------------------------------------------------------------------------------- inverse maps
# diffusers -> official names, written from docs/method.md#checkpoint-conversion (independent of diffusers' converters, which map the other way).
RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
UNET_TOP_TO_LDM = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str) -> str:
    head, tail = rest.split(".", 1)
    return f"{RESNET_TO_LDM.get(head, head)}.{tail}"


def ldm_unet_name(name: str, up_blocks_with_attention: set[int]) -> str:
    for diffusers, ldm in UNET_TOP_TO_LDM.items():
        if name.startswith(diffusers + "."):
            return ldm + name[len(diffusers) :]
    patterns = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda b, j, r: f"input_blocks.{3 * b + j + 1}.0.{_resnet(r)}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda b, j, r: f"input_blocks.{3 * b + j + 1}.1.{r}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", lambda b, r: f"input_blocks.{3 * b + 3}.0.op.{r}"),
        (r"mid_block\.resnets\.(\d+)\.(.*)", lambda k, r: f"middle_block.{2 * k}.{_resnet(r)}"),
        (r"mid_block\.attentions\.0\.(.*)", lambda r: f"middle_block.1.{r}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda b, j, r: f"output_blocks.{3 * b + j}.0.{_resnet(r)}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda b, j, r: f"output_blocks.{3 * b + j}.1.{r}"),
        (
            r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)",
            lambda b, r: f"output_blocks.{3 * b + 2}.{2 if b in up_blocks_with_attention else 1}.conv.{r}",
        ),
    ]
    for pattern, build in patterns:
        match = re.fullmatch(pattern, name)
        if match:
            return build(*(int(g) if g.isdigit() else g for g in match.groups()))
    raise AssertionError(f"no inverse rule for UNet key {name}")


VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_vae_name(name: str, num_levels: int) -> str:
    name = name.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    patterns = [
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda i, j, r: f"encoder.down.{i}.block.{j}.{r}"),
        (
            r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)",
            lambda i, r: f"encoder.down.{i}.downsample.conv.{r}",
        ),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", lambda e, k, r: f"{e}.mid.block_{k + 1}.{r}"),
        (
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)",
            lambda e, part, r: f"{e}.mid.attn_1.{VAE_ATTENTION_TO_LDM[part]}.{r}",
        ),
        (
            r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
            lambda i, j, r: f"decoder.up.{num_levels - 1 - i}.block.{j}.{r}",
        ),
        (
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)",
            lambda i, r: f"decoder.up.{num_levels - 1 - i}.upsample.conv.{r}",
        ),
    ]
    for pattern, build in patterns:
        match = re.fullmatch(pattern, name)
        if match:
            return build(*(int(g) if g.isdigit() else g for g in match.groups()))
    return name  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names


def ldm_vae_state_dict(vae_state: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """Official VAE tensors; the mid-attention projections are 1x1 convolutions there."""
    out = {}
    for name, tensor in vae_state.items():
        ldm = ldm_vae_name(name, num_levels)
        out[ldm] = (
            tensor[:, :, None, None]
            if ".mid.attn_1." in ldm and ldm.endswith("weight") and tensor.dim() == 2
            else tensor
        )
    return out


def up_blocks_with_attention(unet_config: dict) -> set[int]:
    return {i for i, kind in enumerate(unet_config["up_block_types"]) if kind.startswith("CrossAttn")}


# ---------------------------------------------------------------------------------------------------- safe loading
def test_lightning_checkpoint_with_unimportable_callback_class_loads(tmp_path, monkeypatch):
    state = {"layer.weight": torch.randn(3, 4), "layer.bias": torch.randn(3), "step": torch.tensor(7)}
    path = tmp_path / "lightning.ckpt"
    save_lightning_checkpoint(path, state, monkeypatch)
    assert LIGHTNING_MODULE not in sys.modules
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the reason for the allowed stand-in

    loaded = load_checkpoint_state_dict(path)

    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value)
    assert SETSTATE_CALLS == []
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the allowance was scoped to the load: no global side effect


def test_lightning_callback_class_becomes_the_inert_stand_in(tmp_path, monkeypatch):
    from sr.utils.checkpoint import _load_pickled_checkpoint

    path = tmp_path / "lightning.ckpt"
    save_lightning_checkpoint(path, {"w": torch.ones(2)}, monkeypatch)
    loaded = _load_pickled_checkpoint(path)

    (callback_class,) = loaded["callbacks"]
    assert callback_class is LightningCallbackStandIn
    assert loaded["callbacks"][callback_class]["best_model_score"].item() == 0.25
    instance = loaded["loops"]
    assert isinstance(instance, LightningCallbackStandIn)
    assert instance.pickled_state["monitor"] == "val/loss"
    assert not hasattr(instance, "monitor") and SETSTATE_CALLS == []


class _RunsShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_calls_os_system_is_refused_without_running(tmp_path):
    marker = tmp_path / "was_run"
    path = tmp_path / "malicious.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _RunsShellCommand(marker)}, path)

    with pytest.raises(CheckpointError) as error:
        load_checkpoint_state_dict(path)

    assert str(path) in str(error.value)
    assert f"{os.system.__module__}.system" in str(error.value)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_bad_paths_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.ckpt: no such checkpoint file"):
        load_checkpoint_state_dict(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint_state_dict(tmp_path)

    full = tmp_path / "full.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, full)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt: truncated checkpoint"):
        load_checkpoint_state_dict(truncated)

    weights = {"a": torch.randn(2, 3)}
    good = tmp_path / "w.safetensors"
    save_file(weights, good)
    assert torch.equal(load_checkpoint_state_dict(good)["a"], weights["a"])
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(good.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: not a readable safetensors"):
        load_checkpoint_state_dict(broken)


def test_bare_state_dict_and_non_tensor_entries(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save({"w": torch.arange(3.0)}, bare)
    assert torch.equal(load_checkpoint_state_dict(bare)["w"], torch.arange(3.0))
    mixed = tmp_path / "mixed.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1), "note": "text"}}, mixed)
    with pytest.raises(CheckpointError, match=r"mixed\.ckpt: state_dict entries that are not tensors: \['note'\]"):
        load_checkpoint_state_dict(mixed)


# ---------------------------------------------------------------------------------------------------- text tower
def random_text_tower(width: int, context: int, blocks: int, vocab: int = 49408) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)

    def randn(*shape, scale=0.02):
        return torch.randn(*shape, generator=generator) * scale

    tower = {
        "token_embedding.weight": randn(vocab, width),
        "positional_embedding": randn(context, width, scale=0.01),
        "ln_final.weight": 1 + randn(width, scale=0.1),
        "ln_final.bias": randn(width, scale=0.1),
        "text_projection": randn(width, width),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    for i in range(blocks):
        prefix = f"transformer.resblocks.{i}."
        tower.update(
            {
                prefix + "ln_1.weight": 1 + randn(width, scale=0.1),
                prefix + "ln_1.bias": randn(width, scale=0.1),
                prefix + "attn.in_proj_weight": randn(3 * width, width, scale=0.2),
                prefix + "attn.in_proj_bias": randn(3 * width),
                prefix + "attn.out_proj.weight": randn(width, width, scale=0.2),
                prefix + "attn.out_proj.bias": randn(width),
                prefix + "ln_2.weight": 1 + randn(width, scale=0.1),
                prefix + "ln_2.bias": randn(width, scale=0.1),
                prefix + "mlp.c_fc.weight": randn(4 * width, width, scale=0.2),
                prefix + "mlp.c_fc.bias": randn(4 * width),
                prefix + "mlp.c_proj.weight": randn(width, 4 * width, scale=0.2),
                prefix + "mlp.c_proj.bias": randn(width),
            }
        )
    return tower


def test_empty_prompt_tokens():
    assert empty_prompt_token_ids(6).tolist() == [[49406, 49407, 0, 0, 0, 0]]


def test_open_clip_context_matches_transformers_clip_text_model():
    tower = random_text_tower(width=32, context=8, blocks=3)
    used = {
        k: v
        for k, v in tower.items()
        if not k.startswith("transformer.resblocks.2.") and k not in ("text_projection", "logit_scale")
    }
    tokens = torch.tensor([[49406, 320, 1125, 49407, 0, 0, 0, 0], [49406, 49407, 0, 0, 0, 0, 0, 0]])

    ours = open_clip_text_context(used, tokens, num_heads=4, layers=2)
    clip = clip_text_model_from_open_clip(used, num_heads=4)
    with torch.no_grad():
        reference = clip(tokens).last_hidden_state

    assert ours.shape == (2, 8, 32)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    # the penultimate context really depends on the second block (guards against reading the wrong layer count)
    assert not torch.allclose(open_clip_text_context(used, tokens, 4, 1), ours, atol=1e-3)


# ---------------------------------------------------------------------------------------------------- (a) manifests
def meta_model_state(architecture: Architecture) -> dict[str, dict[str, torch.Size]]:
    """Parameter shapes of our modules for ``architecture``, built on the meta device (no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from sr.models.cfw import CFW
    from sr.models.encoder import TimeAwareEncoder

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**architecture.unet), AutoencoderKL(**architecture.vae)
        encoder, cfw = TimeAwareEncoder(**architecture.encoder), CFW(**architecture.cfw)
        sft = new_sft_adapter(unet, encoder, architecture.sft)
    shapes = {name: {k: v.shape for k, v in module.state_dict().items()}
              for name, module in {"vae": vae, "time_aware_encoder": encoder, "cfw": cfw}.items()}
    shapes["unet"] = {k: v.shape for k, v in released_unet_state(unet, sft).items()}
    return shapes


def released_unet_state(unet, sft) -> dict[str, torch.Tensor]:
    """The UNet and SFT tensors under the diffusers names of the released UNet (``<resnet>.spade.<p>``)."""
    spade = {}
    for key, value in sft.state_dict().items():
        path = next(p for p in sft.config.resnet_paths if key.startswith(p + "."))
        spade[f"{path}.spade.{key[len(path) + 1:]}"] = value
    return {**unet.state_dict(), **spade}


def real_schedule(scheduler_config: dict) -> dict[str, torch.Tensor]:
    """The schedule buffers as ``DDPM.register_schedule`` stores them (float64 math, float32 buffers)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}


@pytest.mark.parametrize("variant, manifest", [("512", "stablesr_512_keys.tsv"), ("768v", "stablesr_768v_keys.tsv")])
def test_full_manifest_maps_every_key_to_our_modules(variant, manifest):
    source = constant_tensors(read_manifest(manifest))
    architecture = Architecture.from_preset(VARIANTS[variant])

    converted = convert_stablesr_state_dict(source, architecture, source=manifest)

    expected = meta_model_state(architecture)
    assert {k: v.shape for k, v in converted.groups["unet"].items()} == expected["unet"]
    assert {k: v.shape for k, v in converted.groups["vae"].items()} == expected["vae"]
    assert {k: v.shape for k, v in converted.groups["time_aware_encoder"].items()} == expected["time_aware_encoder"]
    assert sum(".spade." in k for k in converted.groups["unet"]) == 176
    assert len(converted.groups["text_tower"]) == 294 - 14
    assert sorted(converted.dropped["text tower (last block, projection, logit scale)"]) == sorted(
        [
            f"cond_stage_model.model.transformer.resblocks.23.{k}"
            for k in (
                "ln_1.weight",
                "ln_1.bias",
                "attn.in_proj_weight",
                "attn.in_proj_bias",
                "attn.out_proj.weight",
                "attn.out_proj.bias",
                "ln_2.weight",
                "ln_2.bias",
                "mlp.c_fc.weight",
                "mlp.c_fc.bias",
                "mlp.c_proj.weight",
                "mlp.c_proj.bias",
            )
        ]
        + ["cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale"]
    )
    used = sum(len(g) for g in converted.groups.values()) + sum(len(d) for d in converted.dropped.values())
    assert used == len(source) == 1616

    # the conversion reproduces the reference map exactly, names, shapes and values
    rows = [
        line.split("\t")
        for line in (REFERENCE / "stablesr_ldm_to_diffusers_map.tsv").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert len(rows) == 1110
    for official, ours, shape in rows:
        group, key = ours.split(".", 1)
        official = official if official in source else "first_stage_model." + official
        assert tuple(converted.groups[group][key].shape) == shape_of(shape), ours
        assert first_value(converted.groups[group][key]) == first_value(source[official]), ours
    encoder_key = "input_blocks.7.0.skip_connection.weight"
    assert first_value(converted.groups["time_aware_encoder"][encoder_key]) == first_value(
        source["structcond_stage_model." + encoder_key]
    )


def test_inverse_maps_reproduce_the_reference_map():
    """The test-only diffusers->official maps used for the tiny fakes agree with the reference map."""
    attention_up_blocks = up_blocks_with_attention(Architecture.from_preset("stablesr_official").unet)
    for line in (REFERENCE / "stablesr_ldm_to_diffusers_map.tsv").read_text().splitlines()[1:]:
        official, ours, _ = line.split("\t")
        group, key = ours.split(".", 1)
        if group == "unet":
            assert "model.diffusion_model." + ldm_unet_name(key, attention_up_blocks) == official
        else:
            assert ldm_vae_name(key, 4) == official


def test_vqgan_manifest_maps_to_cfw_discriminator_and_vae():
    manifest = read_manifest("vqgan_cfw_keys.tsv")
    source = constant_tensors(manifest)
    architecture = Architecture.from_preset("stablesr_official")

    converted = convert_vqgan_state_dict(source, architecture, source="vqgan")

    expected = meta_model_state(architecture)
    assert {k: v.shape for k, v in converted.groups["cfw"].items()} == expected["cfw"]
    assert {k: v.shape for k, v in converted.groups["vae"].items()} == expected["vae"]
    assert sorted(converted.groups["discriminator"]) == sorted(
        k[len("loss.discriminator.") :] for k in manifest if k.startswith("loss.discriminator.")
    )
    dropped = converted.dropped["LPIPS-VGG and logvar of the training loss"]
    assert "loss.logvar" in dropped and all(k.startswith("loss.") for k in dropped)
    counted = sum(len(g) for g in converted.groups.values()) + len(dropped)
    assert counted == len(manifest) == 460
    key = "fusion_layer_2.encode_enc_2.1.rdb3.conv5.weight"
    assert first_value(converted.groups["cfw"][key]) == first_value(source["decoder." + key])


def test_unknown_or_missing_keys_fail_loudly():
    source = constant_tensors(read_manifest("stablesr_512_keys.tsv"))
    architecture = Architecture.from_preset("stablesr_official")
    with pytest.raises(ConversionError, match="no conversion rule accounts for.*'optimizer_extra'"):
        convert_stablesr_state_dict({**source, "optimizer_extra": torch.zeros(1)}, architecture, source="x.ckpt")
    with pytest.raises(ConversionError, match="--ema was given"):
        convert_stablesr_state_dict(source, architecture, use_ema=True, source="x.ckpt")


def test_schedule_check_warns_only_on_a_different_schedule():
    config = _load_preset("sd21_base")["scheduler"]
    assert check_schedule(real_schedule(config), config, "x.ckpt") == []
    linear = {"betas": torch.linspace(0.00085, 0.012, 1000), "alphas_cumprod": real_schedule(config)["alphas_cumprod"]}
    with pytest.warns(UserWarning, match="x.ckpt: betas differs"):
        assert len(check_schedule(linear, config, "x.ckpt")) == 1


# -------------------------------------------------------------------------------------------- (b) tiny end to end
TEXT_HEADS_TINY = 4


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    """A tiny model and the two "released" files made from it with the official key structure."""
    preset = _load_preset("tiny")
    architecture = Architecture.from_preset("tiny", TEXT_HEADS_TINY)
    model = from_configs(
        preset["unet"],
        preset["vae"],
        preset["encoder"],
        preset["cfw"],
        preset["scheduler"],
        preset.get("sft"),
        preset["prompt_length"],
        seed=3,
    ).model
    with torch.no_grad():  # released weights are not at init (zero convs, unit norms): make every tensor distinct
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    unet_state = released_unet_state(model.unet, model.sft)
    vae_state = model.vae.state_dict()
    attention_up_blocks = up_blocks_with_attention(preset["unet"])
    num_levels = len(preset["vae"]["block_out_channels"])

    tower = random_text_tower(width=preset["unet"]["cross_attention_dim"], context=preset["prompt_length"], blocks=3)
    schedule = real_schedule(preset["scheduler"])
    derived = {
        name: torch.rand(1000)
        for name in (
            "alphas_cumprod_prev",
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod",
            "posterior_variance",
            "posterior_log_variance_clipped",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
        )
    }
    stablesr_state = {
        **schedule,
        **derived,
        **{"model.diffusion_model." + ldm_unet_name(k, attention_up_blocks): v for k, v in unet_state.items()},
        **{"first_stage_model." + k: v for k, v in ldm_vae_state_dict(vae_state, num_levels).items()},
        **{"structcond_stage_model." + k: v for k, v in model.time_aware_encoder.state_dict().items()},
        **{"cond_stage_model.model." + k: v for k, v in tower.items()},
    }
    discriminator = {
        "main.0.weight": torch.randn(8, 3, 4, 4),
        "main.0.bias": torch.randn(8),
        "main.3.running_mean": torch.randn(8),
        "main.3.num_batches_tracked": torch.tensor(5),
    }
    vqgan_state = {
        **{k: v.clone() for k, v in ldm_vae_state_dict(vae_state, num_levels).items()},
        **{"decoder." + k: v for k, v in model.cfw.state_dict().items()},
        **{"loss.discriminator." + k: v for k, v in discriminator.items()},
        "loss.logvar": torch.tensor(0.0),
        "loss.perceptual_loss.net.slice1.0.weight": torch.randn(4, 3, 3, 3),
    }
    folder = tmp_path_factory.mktemp("release")
    monkeypatch = pytest.MonkeyPatch()
    save_lightning_checkpoint(folder / "stablesr_000117.ckpt", stablesr_state, monkeypatch)
    torch.save({"state_dict": vqgan_state, "epoch": 11}, folder / "vqgan_cfw_00011.ckpt")
    return types.SimpleNamespace(
        folder=folder,
        model=model,
        tower=tower,
        architecture=architecture,
        discriminator=discriminator,
        stablesr_state=stablesr_state,
    )


def assert_same_tensors(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def test_tiny_release_converts_and_loads_with_identical_weights(tiny_release, tmp_path):
    out = tmp_path / "stablesr_official"
    convert_stablesr(
        tiny_release.folder / "stablesr_000117.ckpt",
        out,
        "512",
        tiny_release.folder / "vqgan_cfw_00011.ckpt",
        architecture=tiny_release.architecture,
    )

    pipe = StableSRPipeline.from_pretrained(out)
    loaded, source = pipe.model, tiny_release.model
    for part in ("unet", "sft", "vae", "time_aware_encoder", "cfw"):
        assert_same_tensors(getattr(loaded, part).state_dict(), getattr(source, part).state_dict())
    assert_same_tensors(load_file(out / "cfw" / "discriminator.safetensors"), tiny_release.discriminator)
    assert len(loaded.sft.config.resnet_paths) == 22
    assert dict(loaded.scheduler.config)["beta_schedule"] == "scaled_linear"
    assert pipe.config.latent_tile == 32 and pipe.config.sampling["num_inference_steps"] == 50  # the tiny preset
    # the released CFW layers count as trained (model_index.json): decoding with w > 0 does not warn, and the
    # layers take part
    assert json.loads((out / "model_index.json").read_text())["cfw_trained"] is True and loaded.cfw_trained
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        latent, features = loaded.encode(image, sample=False)
        fused, plain = loaded.decode(latent, features, w=0.5), loaded.decode(latent, features, w=0.0)
    assert not torch.allclose(fused, plain, atol=1e-3)

    # the cached context equals transformers' CLIP text model (converted by diffusers) on the empty prompt
    used = {
        k: v
        for k, v in tiny_release.tower.items()
        if not k.startswith("transformer.resblocks.2.") and k not in ("text_projection", "logit_scale")
    }
    with torch.no_grad():
        reference = clip_text_model_from_open_clip(used, TEXT_HEADS_TINY)(empty_prompt_token_ids(8)).last_hidden_state
    assert loaded.prompt_embeds.shape == (1, 8, 64)
    torch.testing.assert_close(loaded.prompt_embeds, reference, atol=1e-5, rtol=1e-5)

    with pytest.raises(FileExistsError, match="already exists"):
        convert_stablesr(tiny_release.folder / "stablesr_000117.ckpt", out, architecture=tiny_release.architecture)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_tiny_release_without_vqgan_overwrite_and_text_encoder(tiny_release, tmp_path):
    out = tmp_path / "model"
    ckpt, vqgan = tiny_release.folder / "stablesr_000117.ckpt", tiny_release.folder / "vqgan_cfw_00011.ckpt"
    convert_stablesr(ckpt, out, "512", vqgan, architecture=tiny_release.architecture)  # an earlier output
    assert (out / "cfw").is_dir()
    convert_stablesr(ckpt, out, "512", overwrite=True, text_encoder=True, architecture=tiny_release.architecture)

    assert not (out / "cfw").exists() and [path.name for path in tmp_path.iterdir()] == ["model"]  # swapped, no rest
    assert (out / "text_encoder" / "config.json").is_file()
    loaded = StableSRPipeline.from_pretrained(out)
    assert_same_tensors(loaded.unet.state_dict(), tiny_release.model.unet.state_dict())
    # no --vqgan: no CFW layers, so decoding with w > 0 still warns (and decodes with the plain decoder)
    assert loaded.cfw is None and json.loads((out / "model_index.json").read_text())["cfw_trained"] is False
    model = loaded.model
    latent, features = model.encode(torch.rand(1, 3, 32, 32) * 2 - 1, sample=False)
    with torch.no_grad(), pytest.warns(UserWarning, match="none: plain decoder"):
        assert torch.equal(model.decode(latent, features, w=0.5), model.decode(latent, features, w=0.0))


def test_ema_weights_are_opt_in(tiny_release):
    state = dict(tiny_release.stablesr_state)
    unet_keys = [k for k in state if k.startswith("model.diffusion_model.")]
    ema = {"model_ema." + "".join(k.split(".")[1:]): state[k] + 1 for k in unet_keys}  # LitEma's flattened names
    state.update(ema)

    default = convert_stablesr_state_dict(state, tiny_release.architecture)
    averaged = convert_stablesr_state_dict(state, tiny_release.architecture, use_ema=True)

    assert sorted(default.dropped["EMA weights (non-EMA used)"]) == sorted(ema)
    assert sorted(averaged.dropped["non-EMA UNet (EMA used)"]) == sorted(unet_keys)
    for key, value in tiny_release.model.unet.state_dict().items():
        assert torch.equal(default.groups["unet"][key], value)
        assert torch.equal(averaged.groups["unet"][key], value + 1)


def test_tiny_release_with_a_missing_tensor_fails_loudly(tiny_release, tmp_path, monkeypatch):
    state = dict(tiny_release.stablesr_state)
    state.pop("model.diffusion_model.input_blocks.4.0.spade.mlp_beta.bias")
    ckpt = tmp_path / "incomplete.ckpt"
    save_lightning_checkpoint(ckpt, state, monkeypatch)
    with pytest.raises(
        ConversionError,
        match=r"incomplete\.ckpt: SFT: 1 of our tensors unfilled .*down_blocks\.1\.resnets\.0\.mlp_beta\.bias",
    ):
        convert_stablesr(ckpt, tmp_path / "out", architecture=tiny_release.architecture)
    assert not (tmp_path / "out").exists()


def test_overwrite_never_deletes_what_the_converter_did_not_write(tiny_release, tmp_path, capsys, monkeypatch):
    """Issue 22: ``--out <folder with the checkpoints> --overwrite`` deleted the source checkpoints."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    sources = tmp_path / "downloads"
    sources.mkdir()
    for name in ("stablesr_000117.ckpt", "vqgan_cfw_00011.ckpt"):
        (sources / name).write_bytes((tiny_release.folder / name).read_bytes())
    (sources / "notes.txt").write_text("mine")
    before = {path.name: path.read_bytes() for path in sources.iterdir()}

    def convert(out: Path) -> str:
        with pytest.raises(SystemExit) as exit_:
            main(["stablesr", "--ckpt", str(sources / "stablesr_000117.ckpt"), "--vqgan",
                  str(sources / "vqgan_cfw_00011.ckpt"), "--out", str(out), "--overwrite"])
        assert exit_.value.code == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1, errors
        return errors[0]

    assert f"--out {sources} holds the source checkpoint {sources / 'stablesr_000117.ckpt'}" in convert(sources)
    photos = tmp_path / "photos"  # a folder the converter did not write
    photos.mkdir()
    (photos / "holiday.png").write_bytes(b"a photo")
    assert f"{photos}: --overwrite replaces only a model folder written by this converter (no model_index.json" \
        in convert(photos)
    assert {path.name: path.read_bytes() for path in sources.iterdir()} == before
    assert (photos / "holiday.png").read_bytes() == b"a photo"

    # a converter output that also holds a file of the user's: refused, naming it; nothing deleted
    out = tmp_path / "model"
    convert_stablesr(sources / "stablesr_000117.ckpt", out, architecture=tiny_release.architecture)
    assert converter_output_extras(out) == []
    (out / "my_notes.txt").write_text("keep")
    assert "also holds my_notes.txt; move them" in convert(out)
    assert (out / "my_notes.txt").read_text() == "keep" and (out / "model_index.json").is_file()


def test_cli_refuses_existing_output(tiny_release, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(FileExistsError, match="exists: already exists"):
        main(["stablesr", "--ckpt", str(tiny_release.folder / "stablesr_000117.ckpt"), "--out", str(out)])


# ---------------------------------------------------------------------------------------------------- (c) full size
@pytest.mark.slow
def test_full_size_fake_release_end_to_end(tmp_path, monkeypatch):
    """Real shapes (5.6 + 0.4 GB of random fp32, ~12 GB disk), the real CLI, then
    ``StableSRPipeline.from_pretrained``."""
    generator = torch.Generator().manual_seed(0)

    def random_state(manifest: str) -> dict[str, torch.Tensor]:
        return {
            k: torch.empty(s).normal_(0, 0.02, generator=generator) if s else torch.tensor(0)
            for k, s in read_manifest(manifest).items()
        }

    stablesr_state = random_state("stablesr_512_keys.tsv")
    stablesr_state.update(real_schedule({}))
    vqgan_state = random_state("vqgan_cfw_keys.tsv")
    vqgan_state.update(
        {k: stablesr_state["first_stage_model." + k] for k in vqgan_state if "first_stage_model." + k in stablesr_state}
    )
    ckpt, vqgan, out = tmp_path / "stablesr_000117.ckpt", tmp_path / "vqgan_cfw_00011.ckpt", tmp_path / "converted"
    save_lightning_checkpoint(ckpt, stablesr_state, monkeypatch)
    torch.save({"state_dict": vqgan_state}, vqgan)
    checks = {  # ours <- official, across every group
        ("sft", "up_blocks.3.resnets.2.mlp_gamma.weight"): stablesr_state[
            "model.diffusion_model.output_blocks.11.0.spade.mlp_gamma.weight"
        ],
        ("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"): stablesr_state[
            "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"
        ],
        ("vae", "decoder.mid_block.attentions.0.to_q.weight"): stablesr_state[
            "first_stage_model.decoder.mid.attn_1.q.weight"
        ][:, :, 0, 0],
        ("time_aware_encoder", "fea_tran.3.skip_connection.weight"): stablesr_state[
            "structcond_stage_model.fea_tran.3.skip_connection.weight"
        ],
        ("cfw", "fusion_layer_1.encode_enc_3.conv2.bias"): vqgan_state[
            "decoder.fusion_layer_1.encode_enc_3.conv2.bias"
        ],
    }
    checks = {key: value.clone() for key, value in checks.items()}
    del stablesr_state, vqgan_state

    main(["stablesr", "--ckpt", str(ckpt), "--vqgan", str(vqgan), "--out", str(out)])

    loaded = StableSRPipeline.from_pretrained(out).model
    for (part, key), expected in checks.items():
        assert torch.equal(getattr(loaded, part).state_dict()[key], expected), key
    assert loaded.prompt_embeds.shape == (1, 77, 1024) and torch.isfinite(loaded.prompt_embeds).all()
    assert len(loaded.sft.config.resnet_paths) == 22


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_official_presets_compose_as_hydra_does(variant):
    """The converter reads the same configs Hydra gives ``upscale.py model=<preset>``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        composed = compose("upscale", overrides=[f"model={VARIANTS[variant]}", "input=a", "output=b"])
    hydra_model = OmegaConf.to_container(composed.model, resolve=True)
    assert _load_preset(VARIANTS[variant]) == hydra_model
    assert hydra_model["pretrained"] == f"weights/{VARIANTS[variant]}"
    assert hydra_model["scheduler"]["prediction_type"] == ("v_prediction" if variant == "768v" else "epsilon")
    assert hydra_model["latent_tile"] == (96 if variant == "768v" else 64)


def test_differing_vae_copies_are_reported():
    from sr.commands.convert import compare_vae_copies

    ours = {"a": torch.ones(2), "b": torch.zeros(2)}
    assert compare_vae_copies(ours, {"a": torch.ones(2), "b": torch.zeros(2)}, "v.ckpt") == []
    with pytest.warns(UserWarning, match=r"v\.ckpt: 1 VAE tensors differ .*\['b'\]"):
        assert compare_vae_copies(ours, {"a": torch.ones(2), "b": torch.ones(2)}, "v.ckpt") == ["b"]
