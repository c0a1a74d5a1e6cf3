"""Turn the released StableSR checkpoints into this project's model folder (docs/method.md#components, docs/method.md#text-conditioning, docs/method.md#cfw, docs/method.md#checkpoints).

    python -m sr.commands.convert stablesr --ckpt stablesr_000117.ckpt --vqgan vqgan_cfw_00011.ckpt --variant 512 --out FOLDER

Every tensor of the source files goes to exactly one place, or is dropped by one of these documented rules:

=================================  ==================================================================================
source keys                        destination
=================================  ==================================================================================
``model.diffusion_model.*`` (862)  diffusers' ``convert_ldm_unet_checkpoint``: ``unet/`` (686) and, for the 176
                                   ``<diffusers resnet>.spade.*`` keys, the SFT adapter ``sft/`` under
                                   ``<diffusers resnet>.*``
``first_stage_model.*`` (248)      diffusers' ``convert_ldm_vae_checkpoint``: ``vae/``
``structcond_stage_model.*``       prefix stripped: ``time_aware_encoder/``
``cond_stage_model.model.*``       OpenCLIP ViT-H text tower: the empty-prompt embedding ``prompt_embedding/``
                                   (token + position embedding, first 23 of 24 blocks, ``ln_final``). Dropped: the
                                   last block, ``text_projection`` and ``logit_scale`` (the penultimate-layer context
                                   never uses them). ``--text-encoder`` also writes a diffusers ``CLIPTextModel``.
12 schedule buffers                ``betas``/``alphas_cumprod`` checked against the scheduler config (warning when
                                   they differ); the other ten are functions of ``betas`` and are dropped.
``model_ema.*``                    absent from the released files (``use_ema: False``); if present, the non-EMA
                                   weights are used, as the released scripts do; ``--ema`` uses the EMA UNet instead.
vqgan ``encoder/decoder/quant``    the same frozen SD VAE; compared with ``first_stage_model.*`` (warning when they
                                   differ; ``vae/`` keeps the diffusion checkpoint's copy, which made the latents)
vqgan ``decoder.fusion_layer_*``   prefix ``decoder.`` stripped: ``cfw/``
vqgan ``loss.discriminator.*``     ``cfw/discriminator.safetensors`` (only needed to resume CFW training)
vqgan ``loss.perceptual_loss.*``,  dropped: frozen LPIPS-VGG weights (the ``lpips`` package ships them) and the
``loss.logvar``                    frozen log-variance (0)
=================================  ==================================================================================

The modules are built on the ``meta`` device and filled with ``load_state_dict(strict=True, assign=True)``, so a
missing or extra parameter, or a wrong shape, fails loudly and no second copy of the 5.6 GB of weights is made.
The output folder is a ``StableSRPipeline`` (``StableSRPipeline.from_pretrained(out)``) whose config carries the
variant preset's ``latent_tile`` and sampling defaults.

What it writes and replaces: the folder is built in a hidden temporary sibling of ``--out`` and renamed into place
when complete. An existing ``--out`` is refused unless ``--overwrite`` is given *and* it is an earlier output of the
converter (``model_index.json`` of a ``StableSRPipeline``, its component folders, optionally ``text_encoder/``, and
nothing else); an ``--out`` that holds a source checkpoint is always refused. All of it is checked before the
checkpoints are read, so a refused command deletes nothing.
"""

import argparse
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from omegaconf import OmegaConf
from safetensors.torch import save_file
from tqdm import tqdm

from sr.commands.config import compose
from sr.errors import one_line_errors
from sr.models.cfw import CFW
from sr.models.encoder import TimeAwareEncoder
from sr.models.prompt import PromptEmbedding
from sr.pipelines import StableSRPipeline
from sr.pipelines.build import PIPELINE_INDEX, new_sft_adapter
from sr.utils.checkpoint import check_checkpoint_file, load_checkpoint_state_dict

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
ENCODER_PREFIX = "structcond_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
EMA_PREFIX = "model_ema."
CFW_PREFIX = "decoder.fusion_layer_"
SPADE_TAG = ".spade."  # diffusers' converter names SFT weights <resnet path>.spade.<parameter>
DISCRIMINATOR_PREFIX = "loss.discriminator."
DROPPED_VQGAN_PREFIXES = ("loss.perceptual_loss.", "loss.logvar")
VQGAN_VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
CHECKED_SCHEDULE_BUFFERS = ("betas", "alphas_cumprod")
DERIVED_SCHEDULE_BUFFERS = (
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
DISCRIMINATOR_FILE = "discriminator.safetensors"
TEXT_ENCODER_FOLDER = "text_encoder"
# OpenCLIP's tokenizer turns '' into [start-of-text, end-of-text] and pads with 0 (not with EOT, unlike the CLIP
# tokenizer of SD-1), so the empty prompt needs no vocabulary file.
OPEN_CLIP_SOT, OPEN_CLIP_EOT, OPEN_CLIP_PAD = 49406, 49407, 0

OPEN_CLIP_VIT_H_HEADS = 16
# variant -> the model preset the converted folder is used with (it also gives the architecture to build)
VARIANTS = {"512": "stablesr_official", "turbo": "stablesr_official_turbo", "768v": "stablesr_official_768v"}


class ConversionError(ValueError):
    """A checkpoint whose tensors do not map one-to-one onto the model; the message names the file."""


@dataclass
class Architecture:
    """Everything the converter builds: diffusers UNet/VAE configs, our parts' configs, text-tower heads.

    The UNet/VAE configs are SD-2.1's (docs/method.md#checkpoint-conversion), from the same preset the converted folder is used with.
    """

    unet: dict
    vae: dict
    encoder: dict
    cfw: dict
    sft: dict
    scheduler: dict
    text_heads: int
    latent_tile: int = 64
    sampling: dict = field(default_factory=dict)

    @classmethod
    def from_preset(cls, preset: str, text_heads: int = OPEN_CLIP_VIT_H_HEADS) -> "Architecture":
        """The configs of ``conf/model/<preset>.yaml`` (following its ``defaults`` chain)."""
        config = _load_preset(preset)
        return cls(
            config["unet"],
            config["vae"],
            config["encoder"],
            config["cfw"],
            config.get("sft") or {},
            config["scheduler"],
            text_heads,
            config.get("latent_tile", 64),
            config.get("sampling") or {},
        )


def _load_preset(name: str) -> dict:
    """The model preset ``conf/model/<name>.yaml`` as Hydra composes it for ``upscale.py model=<name>`` (its
    ``defaults`` chain and the ``sampling`` schema of ``sr.sampling.settings``)."""
    composed = compose("upscale", [f"model={name}", "input=-", "output=-"])
    return OmegaConf.to_container(composed.model, resolve=True)


@dataclass
class Converted:
    """Converted tensors per destination, and the source keys dropped by a documented rule."""

    groups: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        kept = ", ".join(f"{name} {len(tensors)}" for name, tensors in self.groups.items())
        dropped = ", ".join(f"{rule} {len(keys)}" for rule, keys in self.dropped.items() if keys)
        return f"converted: {kept}; dropped: {dropped or 'none'}"


def _with_prefix(state_dict: dict, prefix: str) -> dict:
    return {key: value for key, value in state_dict.items() if key.startswith(prefix)}


def _strip(state_dict: dict, prefix: str) -> dict:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _check_complete(source: str, group: str, converted: dict, expected_count: int) -> None:
    """diffusers' converters fill missing sources with ``None`` and skip unknown ones: both must not happen."""
    empty = [key for key, value in converted.items() if value is None]
    if empty or len(converted) != expected_count:
        raise ConversionError(
            f"{source}: {group}: {expected_count} source tensors became {len(converted)} "
            f"({len(empty)} without a source, e.g. {empty[:3]})"
        )


def text_tower_layers(tower: dict[str, torch.Tensor]) -> int:
    """Number of residual blocks in an OpenCLIP text tower state dict (24 for ViT-H-14)."""
    return 1 + max(int(key.split(".")[2]) for key in tower if key.startswith("transformer.resblocks."))


def _text_tower_keys_used(layers: int) -> set[str]:
    block_keys = [
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
    ]
    used = {"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"}
    return used | {f"transformer.resblocks.{i}.{k}" for i in range(layers) for k in block_keys}


def convert_stablesr_state_dict(
    state_dict: dict[str, torch.Tensor], architecture: Architecture, use_ema: bool = False, source: str = "checkpoint"
) -> Converted:
    """Split a released ``stablesr_*.ckpt`` state dict into this project's groups (see the module docstring).

    Groups: ``unet`` (diffusers names, SPADE keys included as ``<resnet>.spade.*``), ``vae``,
    ``time_aware_encoder``, ``text_tower`` (OpenCLIP names, only the tensors the penultimate-layer context uses),
    ``schedule`` (``betas``, ``alphas_cumprod``). Raises :class:`ConversionError` on any key no rule accounts for.
    """
    ema_keys = sorted(_with_prefix(state_dict, EMA_PREFIX))
    if use_ema and not ema_keys:
        raise ConversionError(f"{source}: --ema was given but the checkpoint has no {EMA_PREFIX}* weights")
    result = Converted()

    unet_source = _with_prefix(state_dict, UNET_PREFIX)
    ema_source = {key: state_dict[key] for key in ema_keys} if use_ema else {}
    unet = convert_ldm_unet_checkpoint({**unet_source, **ema_source}, architecture.unet, extract_ema=use_ema)
    _check_complete(source, "UNet", unet, len(unet_source))
    result.groups["unet"] = unet

    vae_source = _with_prefix(state_dict, VAE_PREFIX)
    vae = convert_ldm_vae_checkpoint(vae_source, architecture.vae)
    _check_complete(source, "VAE", vae, len(vae_source))
    result.groups["vae"] = vae

    result.groups["time_aware_encoder"] = _strip(state_dict, ENCODER_PREFIX)

    tower = _strip(state_dict, TEXT_PREFIX)
    if not tower:
        raise ConversionError(f"{source}: no {TEXT_PREFIX}* text-encoder weights")
    used_text_keys = _text_tower_keys_used(text_tower_layers(tower) - 1)
    missing_text = sorted(used_text_keys - set(tower))
    if missing_text:
        raise ConversionError(f"{source}: text tower lacks {missing_text[:3]}")
    result.groups["text_tower"] = {key: tower[key] for key in sorted(used_text_keys)}
    result.dropped["text tower (last block, projection, logit scale)"] = [
        TEXT_PREFIX + key for key in sorted(set(tower) - used_text_keys)
    ]

    missing_schedule = [name for name in CHECKED_SCHEDULE_BUFFERS if name not in state_dict]
    if missing_schedule:
        raise ConversionError(f"{source}: schedule buffers {missing_schedule} missing")
    result.groups["schedule"] = {name: state_dict[name] for name in CHECKED_SCHEDULE_BUFFERS}
    result.dropped["derived schedule buffers"] = [name for name in DERIVED_SCHEDULE_BUFFERS if name in state_dict]
    result.dropped["EMA weights (non-EMA used)" if not use_ema else "non-EMA UNet (EMA used)"] = (
        ema_keys if not use_ema else sorted(unet_source)
    )

    accounted = set(unet_source) | set(vae_source) | set(ema_keys)
    accounted |= set(_with_prefix(state_dict, ENCODER_PREFIX)) | set(_with_prefix(state_dict, TEXT_PREFIX))
    accounted |= set(CHECKED_SCHEDULE_BUFFERS) | set(DERIVED_SCHEDULE_BUFFERS)
    unknown = sorted(set(state_dict) - accounted)
    if unknown:
        raise ConversionError(f"{source}: {len(unknown)} keys no conversion rule accounts for, e.g. {unknown[:5]}")
    return result


def convert_vqgan_state_dict(
    state_dict: dict[str, torch.Tensor], architecture: Architecture, source: str = "checkpoint"
) -> Converted:
    """Split a released ``vqgan_cfw_*.ckpt`` state dict into ``vae`` (diffusers names), ``cfw``, ``discriminator``."""
    result = Converted()
    cfw_source = _with_prefix(state_dict, CFW_PREFIX)
    vae_source = {
        key: value for key, value in state_dict.items() if key.startswith(VQGAN_VAE_PREFIXES) and key not in cfw_source
    }
    vae = convert_ldm_vae_checkpoint(vae_source, architecture.vae)
    _check_complete(source, "VAE", vae, len(vae_source))
    result.groups["vae"] = vae
    result.groups["cfw"] = _strip(cfw_source, "decoder.")
    result.groups["discriminator"] = _strip(state_dict, DISCRIMINATOR_PREFIX)
    dropped = sorted(key for key in state_dict if key.startswith(DROPPED_VQGAN_PREFIXES))
    result.dropped["LPIPS-VGG and logvar of the training loss"] = dropped
    unknown = sorted(
        set(state_dict)
        - set(vae_source)
        - set(cfw_source)
        - set(dropped)
        - set(_with_prefix(state_dict, DISCRIMINATOR_PREFIX))
    )
    if unknown:
        raise ConversionError(f"{source}: {len(unknown)} keys no conversion rule accounts for, e.g. {unknown[:5]}")
    if not result.groups["cfw"]:
        raise ConversionError(f"{source}: no {CFW_PREFIX}* weights: not a CFW (vqgan_cfw) checkpoint")
    return result


def empty_prompt_token_ids(context_length: int) -> torch.Tensor:
    """OpenCLIP tokens of ``''``: ``[SOT, EOT, 0, ..., 0]`` of length ``context_length``, shape ``[1, L]``."""
    tokens = torch.full((1, context_length), OPEN_CLIP_PAD, dtype=torch.long)
    tokens[0, :2] = torch.tensor([OPEN_CLIP_SOT, OPEN_CLIP_EOT])
    return tokens


def open_clip_text_context(
    tower: dict[str, torch.Tensor], token_ids: torch.Tensor, num_heads: int, layers: int
) -> torch.Tensor:
    """OpenCLIP text-transformer context of ``token_ids`` ``[B, L]`` using its first ``layers`` blocks, ``[B, L, D]``.

    ``x = token_embedding[ids] + positional_embedding``; per block (pre-LN, causal)
    ``x = x + MHA(ln_1(x))``, ``x = x + c_proj(GELU(c_fc(ln_2(x))))``; output ``ln_final(x)``. With
    ``layers = 23`` of ViT-H's 24 this is StableSR's ``FrozenOpenCLIPEmbedder(layer="penultimate")``.
    """
    length = token_ids.shape[1]
    x = F.embedding(token_ids, tower["token_embedding.weight"]) + tower["positional_embedding"][:length]
    width = x.shape[-1]
    causal_mask = torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1)
    x = x.transpose(0, 1)  # nn.MultiheadAttention's [L, B, D] layout, as in open_clip
    for index in range(layers):
        block = {k.split(".", 3)[3]: v for k, v in tower.items() if k.startswith(f"transformer.resblocks.{index}.")}
        h = F.layer_norm(x, (width,), block["ln_1.weight"], block["ln_1.bias"])
        h, _ = F.multi_head_attention_forward(
            h,
            h,
            h,
            width,
            num_heads,
            block["attn.in_proj_weight"],
            block["attn.in_proj_bias"],
            None,
            None,
            False,
            0.0,
            block["attn.out_proj.weight"],
            block["attn.out_proj.bias"],
            training=False,
            need_weights=False,
            attn_mask=causal_mask,
        )
        x = x + h
        h = F.layer_norm(x, (width,), block["ln_2.weight"], block["ln_2.bias"])
        x = x + F.linear(
            F.gelu(F.linear(h, block["mlp.c_fc.weight"], block["mlp.c_fc.bias"])),
            block["mlp.c_proj.weight"],
            block["mlp.c_proj.bias"],
        )
    x = x.transpose(0, 1)
    return F.layer_norm(x, (width,), tower["ln_final.weight"], tower["ln_final.bias"])


def empty_prompt_embedding(tower: dict[str, torch.Tensor], num_heads: int) -> torch.Tensor:
    """The ``[1, L, D]`` context StableSR always conditions on (docs/method.md#text-conditioning), from a text tower without its last block."""
    context_length = tower["positional_embedding"].shape[0]
    with torch.no_grad():
        return open_clip_text_context(
            {k: v.float() for k, v in tower.items()},
            empty_prompt_token_ids(context_length),
            num_heads,
            text_tower_layers(tower),
        )


def clip_text_model_from_open_clip(tower: dict[str, torch.Tensor], num_heads: int):
    """A transformers ``CLIPTextModel`` equal to the tower's penultimate-layer context (for other prompts).

    ``tower`` holds the blocks the context uses (``convert_stablesr_state_dict``'s ``text_tower`` group);
    diffusers' ``convert_open_clip_checkpoint`` renames them.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size, width = tower["token_embedding.weight"].shape
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=tower["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=text_tower_layers(tower),
        num_attention_heads=num_heads,
        max_position_embeddings=tower["positional_embedding"].shape[0],
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=width,
        bos_token_id=OPEN_CLIP_SOT,
        eos_token_id=OPEN_CLIP_EOT,
        pad_token_id=OPEN_CLIP_PAD,
    )
    model = CLIPTextModel(config)
    # diffusers names the weights for transformers 4's CLIPTextModel (under text_model.); transformers 5 dropped it
    renamed = convert_open_clip_checkpoint(model, tower, prefix="")
    model.load_state_dict({key.removeprefix("text_model."): value for key, value in renamed.items()}, strict=True)
    return model.eval()


def check_schedule(schedule: dict[str, torch.Tensor], scheduler_config: dict, source: str) -> list[str]:
    """Warnings for checkpoint ``betas``/``alphas_cumprod`` that differ from the scheduler's (relative 1e-4)."""
    scheduler = DDPMScheduler(**scheduler_config)
    problems = []
    for name, reference in (("betas", scheduler.betas), ("alphas_cumprod", scheduler.alphas_cumprod)):
        stored = schedule[name].double()
        if stored.shape != reference.shape or not torch.allclose(stored, reference.double(), rtol=1e-4, atol=1e-8):
            problems.append(
                f"{source}: {name} differs from the scheduler config {scheduler_config} (sampling will use the config)"
            )
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return problems


def compare_vae_copies(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], source: str) -> list[str]:
    """Names of VAE tensors that differ between the diffusion checkpoint and the CFW checkpoint (warned)."""
    differing = sorted(key for key in ours if key not in theirs or not torch.equal(ours[key], theirs[key]))
    if differing:
        warnings.warn(
            f"{source}: {len(differing)} VAE tensors differ from the diffusion checkpoint's VAE "
            f"(e.g. {differing[:3]}); "
            "keeping the diffusion checkpoint's copy",
            stacklevel=2,
        )
    return differing


def build_model(
    architecture: Architecture, converted: Converted, cfw_state: dict | None, source: str = "checkpoint"
) -> StableSRPipeline:
    """A ``StableSRPipeline`` whose every parameter is a converted tensor (built on ``meta``, filled strictly by
    assignment); no CFW component without ``cfw_state``."""
    prompt_embeds = empty_prompt_embedding(converted.groups["text_tower"], architecture.text_heads)
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**architecture.unet), AutoencoderKL(**architecture.vae)
        encoder = TimeAwareEncoder(**architecture.encoder)
        sft = new_sft_adapter(unet, encoder, architecture.sft)
        cfw = CFW(**architecture.cfw) if cfw_state is not None else None
    unet_state, sft_state = split_sft(converted.groups["unet"])
    parts = [(unet, unet_state, "UNet"), (sft, sft_state, "SFT"), (vae, converted.groups["vae"], "VAE"),
             (encoder, converted.groups["time_aware_encoder"], "time-aware encoder")]
    if cfw is not None:
        parts.append((cfw, cfw_state, "CFW"))
    for module, state, name in parts:
        _assign_exactly(module, state, name, source)
    return StableSRPipeline(
        unet, vae, encoder, sft, cfw, DDPMScheduler(**architecture.scheduler), PromptEmbedding.of(prompt_embeds),
        latent_tile=architecture.latent_tile, sampling=architecture.sampling,
        cfw_trained=cfw is not None,
    )


def split_sft(unet_state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(plain UNet tensors, SFT adapter tensors): ``<resnet>.spade.<p>`` becomes the adapter's ``<resnet>.<p>``."""
    unet = {key: value for key, value in unet_state.items() if SPADE_TAG not in key}
    sft = {key.replace(SPADE_TAG, "."): value for key, value in unet_state.items() if SPADE_TAG in key}
    return unet, sft


def _assign_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """``module``'s tensors become ``state``'s; every parameter filled, every tensor used, shapes equal."""
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong_shape = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        raise ConversionError(
            f"{source}: {name}: {len(missing)} of our tensors unfilled (e.g. {missing[:3]}), {len(unexpected)} "
            f"converted tensors unused (e.g. {unexpected[:3]}), {len(wrong_shape)} shape mismatches "
            f"(e.g. {wrong_shape[:3]})"
        )
    module.load_state_dict(state, strict=True, assign=True)


def _report(message: str) -> None:
    tqdm.write(message)


def converter_output_extras(folder: Path) -> list[str] | None:
    """The entries of ``folder`` that a converter output does not have (``[]``: it is one, so ``--overwrite`` may
    replace it), or None when ``folder`` is not a ``StableSRPipeline`` folder at all. A converter output holds
    ``model_index.json`` naming ``StableSRPipeline``, the component folders it lists and optionally
    ``text_encoder/``."""
    index_path = folder / PIPELINE_INDEX
    if folder.is_symlink() or not folder.is_dir() or not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("_class_name") != StableSRPipeline.__name__:
        return None
    components = {name for name, value in index.items() if isinstance(value, list) and not name.startswith("_")}
    expected = {PIPELINE_INDEX, TEXT_ENCODER_FOLDER} | components
    return sorted(entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir()
                  if entry.name not in expected or (entry.name != PIPELINE_INDEX and not entry.is_dir())
                  or entry.is_symlink())


def output_problem(out: Path, sources: list[Path], overwrite: bool) -> str | None:
    """Why the converter must not write ``out``: it holds a source checkpoint (whatever ``overwrite`` says), or it
    exists and ``overwrite`` is off, or ``overwrite`` is on but ``out`` is not a converter output (it is replaced
    only when :func:`converter_output_extras` finds nothing else in it: the converter never deletes what it did not
    write)."""
    inside = [source for source in sources if source.resolve().is_relative_to(out.resolve())]
    if inside:
        return f"--out {out} holds the source checkpoint {inside[0]}; choose an --out folder outside it"
    if not out.exists() and not out.is_symlink():
        return None
    if not overwrite:
        return f"{out}: already exists (pass --overwrite to replace it)"
    extras = converter_output_extras(out)
    if extras is None:
        return (f"{out}: --overwrite replaces only a model folder written by this converter (no {PIPELINE_INDEX} of "
                f"a {StableSRPipeline.__name__} there); choose another --out")
    if extras:
        more = " ..." if len(extras) > 5 else ""
        return (f"{out}: --overwrite replaces only a model folder written by this converter, and this one also holds "
                f"{', '.join(extras[:5])}{more}; move them or choose another --out")
    return None


def convert_stablesr(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    variant: str = "512",
    vqgan: str | os.PathLike | None = None,
    overwrite: bool = False,
    use_ema: bool = False,
    text_encoder: bool = False,
    architecture: Architecture | None = None,
) -> Path:
    """Convert the released checkpoint(s) into a ``StableSRPipeline.from_pretrained`` folder at ``out``; returns
    ``out``.

    Without ``vqgan`` the pipeline has no CFW component (decode with ``w = 0``). ``architecture`` defaults to the
    variant's preset (``VARIANTS``; tests pass a small one). Written into a temporary sibling folder, renamed last;
    an existing ``out`` is refused before any work (:func:`output_problem`) unless it is an earlier converter output
    and ``overwrite``, and then swapped out only once the new folder is complete.
    """
    out = Path(out)
    if problem := output_problem(out, [Path(ckpt)] + ([Path(vqgan)] if vqgan is not None else []), overwrite):
        raise FileExistsError(problem)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    architecture = architecture or Architecture.from_preset(VARIANTS[variant])
    steps = tqdm(total=5 if vqgan else 4, desc="convert", unit="step")

    state_dict = load_checkpoint_state_dict(ckpt)
    converted = convert_stablesr_state_dict(state_dict, architecture, use_ema, source=str(ckpt))
    check_schedule(converted.groups["schedule"], architecture.scheduler, str(ckpt))
    _report(f"{ckpt}: {len(state_dict)} tensors; {converted.summary()}")
    steps.update()

    cfw_converted = None
    if vqgan is not None:
        cfw_converted = convert_vqgan_state_dict(load_checkpoint_state_dict(vqgan), architecture, source=str(vqgan))
        compare_vae_copies(converted.groups["vae"], cfw_converted.groups["vae"], str(vqgan))
        _report(f"{vqgan}: {cfw_converted.summary()}")
        steps.update()

    pipe = build_model(architecture, converted, cfw_converted.groups["cfw"] if cfw_converted else None, str(ckpt))
    _report(
        f"filled {sum(1 for _ in pipe.unet.parameters())} UNet tensors, {sum(1 for _ in pipe.sft.parameters())} SFT, "
        f"{len(converted.groups['vae'])} VAE, {len(converted.groups['time_aware_encoder'])} encoder"
        + (f", {len(cfw_converted.groups['cfw'])} CFW" if cfw_converted else ", no CFW (pass --vqgan)")
    )
    steps.update()

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        folder = pipe.save_pretrained(staging / "model")
        if cfw_converted is not None:
            discriminator = {k: v.contiguous() for k, v in cfw_converted.groups["discriminator"].items()}
            save_file(discriminator, folder / "cfw" / DISCRIMINATOR_FILE)
        steps.update()
        if text_encoder:
            clip = clip_text_model_from_open_clip(converted.groups["text_tower"], architecture.text_heads)
            clip.save_pretrained(folder / TEXT_ENCODER_FOLDER)
        replaced = staging / "replaced"
        if out.exists():  # a converter output (output_problem): swapped out, deleted with the staging folder
            os.replace(out, replaced)
        try:
            os.replace(folder, out)
        except BaseException:
            if replaced.exists():
                os.replace(replaced, out)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    steps.update()
    steps.close()
    _report(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sr.commands.convert", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    stablesr = commands.add_parser("stablesr", help="released stablesr_*.ckpt (+ vqgan_cfw_*.ckpt) -> model folder")
    stablesr.add_argument(
        "--ckpt", required=True, help="stablesr_000117.ckpt, stablesr_768v_000139.ckpt or stablesr_turbo.ckpt"
    )
    stablesr.add_argument("--vqgan", help="vqgan_cfw_00011.ckpt (CFW decoder); without it the folder has no cfw/")
    stablesr.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="512",
        help="512 (default) and turbo: SD-2.1-base eps; 768v: SD-2.1-768 v-prediction",
    )
    stablesr.add_argument("--out", required=True, help="output folder (model.pretrained=<out>)")
    stablesr.add_argument("--overwrite", action="store_true",
                          help="replace an existing output folder written by this converter (nothing else)")
    stablesr.add_argument("--ema", action="store_true", help="use model_ema.* weights (absent in the released files)")
    stablesr.add_argument(
        "--text-encoder",
        action="store_true",
        help="also write text_encoder/ (diffusers CLIPTextModel) for prompts other than ''",
    )
    stablesr.add_argument("--debug", action="store_true", help="show the traceback of an error (one line otherwise)")
    args = parser.parse_args(argv)
    name = Path(args.ckpt).name
    guessed = "768v" if "768" in name else "turbo" if "turbo" in name else "512"
    if guessed != args.variant:
        warnings.warn(
            f"{args.ckpt}: the file name suggests --variant {guessed}, converting as {args.variant}", stacklevel=1
        )
    with one_line_errors("sr.commands.convert", args.debug, debug_flag="--debug"):
        for checkpoint in (args.ckpt, args.vqgan):  # before any work starts: empty, truncated, foreign files
            if checkpoint is not None:
                check_checkpoint_file(checkpoint)
        convert_stablesr(args.ckpt, args.out, args.variant, args.vqgan, args.overwrite, args.ema, args.text_encoder)


if __name__ == "__main__":
    main()
