"""StableSR model parts and the one builder the Hydra presets call."""

import os

import torch

from sr.models.cfw import CFW
from sr.models.encoder import TimeAwareEncoder
from sr.models.stablesr import StableSR

__all__ = ["CFW", "StableSR", "TimeAwareEncoder", "build_stablesr"]


def build_stablesr(
    pretrained: str | os.PathLike | None = None,
    unet: dict | None = None,
    vae: dict | None = None,
    encoder: dict | None = None,
    cfw: dict | None = None,
    sft: dict | None = None,
    scheduler: dict | None = None,
    prompt_length: int = 77,
    seed: int = 0,
    stage1_weights: str | None = None,
    cfw_weights: str | None = None,
    torch_dtype: str | None = None,
    name: str = "custom",
    latent_tile: int = 64,
    sampling: dict | None = None,
) -> StableSR:
    """Build a preset: random weights from the configs when ``pretrained`` is empty, else load the folder/hub id.

    ``stage1_weights`` / ``cfw_weights`` are safetensors files written by ``StableSR.save_trainable`` (training
    checkpoints) that replace the encoder+SFT / CFW weights after loading. ``name``, ``latent_tile`` (the
    preset's latent tile side) and ``sampling`` (its default sampling settings, read by conf/sampling) are recorded
    on the model.
    """
    dtype = getattr(torch, torch_dtype) if torch_dtype else None
    if pretrained:
        model = StableSR.from_pretrained(pretrained, encoder, cfw, sft, scheduler, torch_dtype=dtype)
    else:
        if unet is None or vae is None:
            raise ValueError("a model preset needs either `pretrained` or both `unet` and `vae` configs")
        model = StableSR.from_config(unet, vae, encoder or {}, cfw or {}, scheduler or {}, sft, prompt_length, seed)
        if dtype:
            model.to(dtype)
    if stage1_weights:
        model.load_trainable(stage1_weights, parts=("encoder", "sft"))
    if cfw_weights:
        model.load_trainable(cfw_weights, parts=("cfw",))
    model.name, model.latent_tile, model.sampling_defaults = name, latent_tile, dict(sampling or {})
    return model
