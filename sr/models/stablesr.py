"""The StableSR model operations: frozen SD UNet + VAE, time-aware encoder + SFT adapter (stage 1), CFW (stage 2).

``StableSR`` is an ``nn.Module`` over the components of a ``sr.pipelines.StableSRPipeline`` (the same module
objects, so training one trains the other): what every training stage and the pipeline need to encode, predict and
decode. Loading and saving belong to the pipeline (``StableSRPipeline.from_pretrained`` / ``save_pretrained``); the
small trainable-weight files (``stage1.safetensors``, ``cfw.safetensors``) are written and read here.

Latent convention, for every entry point (``encode``, ``predict``, ``decode``, the pipeline's ``latents``): latents
are in **diffusion space**, ``z = scaling_factor * E(x)`` (``vae.config.scaling_factor``, 0.18215 for SD); only the
VAE-level functions of ``sr.models.cfw`` and ``sr.models.tiled_vae`` take VAE-space latents ``z / scaling_factor``,
as ``AutoencoderKL.decode`` does.
"""

import json
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from sr.io import write_bytes_atomic
from sr.models.autoencoder import CFWAutoencoder
from sr.models.cfw import plain_decoder
from sr.models.tiled_vae import DEFAULT_MODE, TiledVAEMode

TRAINABLE_PARTS = {"stage1": ("encoder", "sft"), "stage2": ("cfw",)}
VAE_FACTOR = 8


class StableSR(nn.Module):
    """The model's operations on shared pipeline components; owns no training or sampling loop.

    ``cfw_trained`` says whether ``cfw`` holds trained/converted weights; decoding with ``w > 0`` otherwise warns.
    ``vae_tiling``: the ``CFWAutoencoder`` tiling switch (``StableSRPipeline.enable_vae_tiling``).
    """

    def __init__(self, unet, vae, time_aware_encoder, sft, cfw, scheduler, prompt_embedding, cfw_trained: bool = False,
                 vae_tiling: bool = True):
        super().__init__()
        self.unet, self.vae, self.time_aware_encoder, self.sft = unet, vae, time_aware_encoder, sft
        self.cfw, self.prompt_embedding = cfw, prompt_embedding
        self.scheduler = scheduler
        self.cfw_trained = cfw_trained
        self.vae_tiling = vae_tiling

    @property
    def autoencoder(self) -> CFWAutoencoder:
        """The VAE and CFW as one component (the same module objects; not a submodule, so not in ``state_dict``)."""
        return CFWAutoencoder(self.vae, self.cfw, use_tiling=self.vae_tiling)

    # ------------------------------------------------------------------ parts and freezing
    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def scaling_factor(self) -> float:
        return self.vae.config.scaling_factor

    @property
    def prompt_embeds(self) -> torch.Tensor:
        """The cached empty-prompt embedding ``[1, L, D]``."""
        return self.prompt_embedding.prompt_embeds

    def parameters_of(self, stage: str) -> list[nn.Parameter]:
        """Trainable parameters of ``stage1`` (time-aware encoder + SFT) or ``stage2`` (CFW fusion layers)."""
        if stage == "stage1":
            return list(self.time_aware_encoder.parameters()) + list(self.sft.parameters())
        if stage == "stage2":
            return list(self.cfw.parameters())
        raise ValueError(f"unknown stage {stage!r}; expected 'stage1' or 'stage2'")

    def freeze_except(self, stage: str | None) -> None:
        """``requires_grad`` only on ``stage``'s parameters (None freezes everything)."""
        self.requires_grad_(False)
        for parameter in self.parameters_of(stage) if stage else []:
            parameter.requires_grad_(True)

    # ------------------------------------------------------------------ the model's operations
    def encode(
        self,
        image: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
        tile: int | tuple[int, int] | None = None,
        overlap: int | tuple[int, int] = 0,
        progress: bool = False,
        mode: TiledVAEMode = DEFAULT_MODE,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``image`` in [-1, 1] -> (diffusion-space latent, CFW encoder features [f1, f2]).

        The latent is ``scaling_factor * E(x).sample(generator)``, or the posterior mode ``scaling_factor * mean``
        with ``sample=False`` (deterministic). ``tile`` (pixels, per axis) runs the VAE encoder tile by tile in
        ``mode`` (``exact`` or ``estimate``, ``sr.models.tiled_vae.tiled_encode``); None encodes the whole image at
        once (``CFWAutoencoder.encode``).
        """
        encoding = self.autoencoder.encode(image, tile=tile, overlap=overlap, mode=mode, progress=progress)
        posterior = encoding.latent_dist
        latent = posterior.sample(generator=generator) if sample else posterior.mode()
        return latent * self.scaling_factor, encoding.features

    def predict(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, z_lr: torch.Tensor, prompt_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """UNet output (eps or v) for ``x_t`` at original timesteps ``t``, steered by SFT(``encoder(z_lr, t)``).

        ``prompt_embeds [1 or B, L, D]``: the text conditioning (default: the cached empty-prompt embedding).
        """
        timesteps = torch.as_tensor(timesteps, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        features = self.time_aware_encoder(z_lr, timesteps)
        context = self.prompt_embeds if prompt_embeds is None else prompt_embeds
        context = context.to(device=x_t.device, dtype=x_t.dtype).expand(x_t.shape[0], -1, -1)
        with self.sft.applied(self.unet, features):
            return self.unet(x_t, timesteps, encoder_hidden_states=context).sample

    def decode(
        self,
        latent: torch.Tensor,
        enc_features: list[torch.Tensor] | None = None,
        w: float = 0.0,
        tile: int | None = None,
        overlap: int = 0,
        progress: bool = False,
        mode: TiledVAEMode = DEFAULT_MODE,
    ) -> torch.Tensor:
        """Diffusion-space latent -> image in about [-1, 1], CFW fusion strength ``w`` in [0, 1] (0 = plain decoder).

        ``tile`` (latent pixels) decodes tile by tile in ``mode`` (``sr.models.tiled_vae.tiled_decode``); None decodes
        at once (``CFWAutoencoder.decode``).
        """
        if not plain_decoder(w) and (self.cfw is None or not self.cfw_trained):
            warnings.warn(
                "decoding with w > 0 but the CFW fusion layers were never loaded or trained"
                + (" (this model has none: plain decoder)" if self.cfw is None else " (random init)"),
                stacklevel=2,
            )
        return self.autoencoder.decode(latent / self.scaling_factor, enc_features, w, tile=tile, overlap=overlap,
                                       mode=mode, progress=progress)

    # ------------------------------------------------------------------ trainable weights only
    def trainable_state_dict(self, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """``encoder.*`` (time-aware encoder), ``sft.<resnet path>.*`` and/or ``cfw.*`` tensors (small checkpoints)."""
        modules = {"encoder": self.time_aware_encoder, "sft": self.sft, "cfw": self.cfw}
        state = {}
        for part in parts:
            if part not in modules:
                raise ValueError(f"unknown part {part!r}; expected encoder, sft or cfw")
            state.update({f"{part}.{k}": v for k, v in modules[part].state_dict().items()})
        return state

    def save_trainable(self, path: str | os.PathLike, parts: tuple[str, ...] = TRAINABLE_PARTS["stage1"]) -> Path:
        """Save ``parts`` as one safetensors file (written to a temp name, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict(parts).items()}
        metadata = {"parts": ",".join(parts)}
        for part, module in (("encoder", self.time_aware_encoder), ("sft", self.sft), ("cfw", self.cfw)):
            if part in parts:
                metadata[f"{part}_config"] = json.dumps(_public(module.config))
        return write_bytes_atomic(path, safetensors_bytes(tensors, metadata=metadata), overwrite=True)

    def load_trainable(self, path: str | os.PathLike, parts: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """Load a file written by ``save_trainable``; every expected tensor must be present with the right shape."""
        path = Path(path)
        tensors = load_tensors(path)
        stored_parts = tuple(sorted({key.split(".", 1)[0] for key in tensors}))
        parts = stored_parts if parts is None else parts
        expected = self.trainable_state_dict(parts)
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise KeyError(f"{path}: missing {len(missing)} tensors for parts {parts}, e.g. {missing[:3]}")
        for key, reference in expected.items():
            if tensors[key].shape != reference.shape:
                raise ValueError(
                    f"{path}: {key} has shape {tuple(tensors[key].shape)}, model expects {tuple(reference.shape)}"
                )
        with torch.no_grad():
            for key, reference in expected.items():
                reference.copy_(tensors[key])
        if "cfw" in parts:
            self.cfw_trained = True
        return parts


def _public(config) -> dict:
    """A diffusers config without its private entries (``_name_or_path`` may be a Path, not JSON)."""
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def load_tensors(path: Path, required: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; one clear line when the file is missing, damaged or lacks ``required``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        tensors = load_file(path)
    except Exception as error:  # safetensors raises several types for a damaged header
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    for key in required or []:
        if key not in tensors:
            raise KeyError(f"{path}: has no tensor named {key!r}")
    return tensors
