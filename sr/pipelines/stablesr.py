"""``StableSRPipeline``: any-size StableSR upscaling in diffusers style (spec sections 7-10).

    pipe = StableSRPipeline.from_pretrained("weights/stablesr_official").to("cuda")
    image = pipe(Image.open("lr.png"), w=0.5).images[0]

Components (saved by ``save_pretrained`` as one subfolder each, listed in ``model_index.json``): ``unet`` and ``vae``
(plain diffusers SD models), ``time_aware_encoder``, ``sft`` (the SPADE adapter applied to the UNet only while it
runs), ``cfw`` (CFW fusion layers; may be absent), ``scheduler`` (the model's diffusion schedule) and
``prompt_embedding`` (the cached empty-prompt embedding). The pipeline config also records ``latent_tile`` (the
preset's latent tile side), ``sampling`` (the preset's default sampling settings) and ``cfw_trained``.

One call, for ``lr [B, C, h, w]`` in [0, 1] (C = 1 or 3), ``work = round((h, w) * max(scale, input_size / min(h, w)))``::

    up     = clamp(bicubic(2 lr - 1, work), -1, 1)              reflect-padded to multiples of 64 px
    z_lr, f = encode(up)                                       diffusion-space latent, CFW features (VAE tiles)
    x_0    = progressive aggregation from x_T (sr.sampling)    latent tiles fused at every step
    image  = decode(x_0, f, w)[:work] -> colour fix vs up -> (image + 1) / 2 -> antialiased resize to
             round(h, w * scale) when input_size raised the working size -> grey back to one channel (luma)

Two no-diffusion baselines share these steps (eval.py scores them beside every run): ``StableSRPipeline.bicubic``
(``up`` at the output size, no model) and ``StableSRPipeline.reconstruct`` (``z_lr`` from the posterior mode decoded
at once: the VAE + CFW ceiling without sampling).

This class is the one place where sampling settings are defaulted and resolved (``sampling_settings``; their valid
ranges are ``sr.validation.validate_sampling``'s, shared with the commands) and the one decode path
(``StableSR.decode``: the CFW warning fires here). Latents are in diffusion space everywhere
(``scaling_factor * E(x)``, see ``sr.models.stablesr``).
"""

import os
import shutil
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from sr.models.stablesr import StableSR
from sr.models.tiled_vae import DEFAULT_MODE as DEFAULT_VAE_TILE_MODE
from sr.ops.color import color_fix as apply_color_fix
from sr.sampling.aggregation import denoise
from sr.sampling.padding import output_size, reflect_pad_to, round_up, working_scale
from sr.sampling.respacing import check_respacing, set_sampling_timesteps
from sr.validation import validate_sampling

PIXEL_PAD_MULTIPLE = 64
VAE_FACTOR = 8
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
IMAGE_OUTPUT_TYPES = ("pil", "np", "pt")
OUTPUT_TYPES = (*IMAGE_OUTPUT_TYPES, "latent")


@dataclass(frozen=True)
class SamplingSettings:
    """Every sampling setting of one call, resolved and validated (``StableSRPipeline.sampling_settings``).

    The defaults are the released any-size recipe's (spec 10); a pipeline's ``sampling`` config (its preset's)
    overrides them, and the call's arguments override both. ``tile_size`` None = the pipeline's ``latent_tile``,
    ``tile_overlap`` None = half the tile, ``input_size`` None or 0 = no minimum working size. ``vae_tile_mode``
    ``exact`` (the tiled VAE equals the untiled one up to float rounding) or ``estimate`` (approximate per-tile
    passes, sr.models.tiled_vae) applies only above one VAE tile. ``tile_weighting``
    ``centred`` (ours) or ``official`` (the released code's y-centre, sr.ops.tiling) and ``respacing`` ``scheduler``
    (its ``timestep_spacing``) or ``official`` (the released code's timesteps, sr.sampling.respacing): the
    ``stablesr_official*`` presets choose both ``official``.
    """

    num_inference_steps: int = 200
    w: float = 0.5
    color_fix: str = "adain"
    scale: float = 4.0
    tile_size: int | None = None
    tile_overlap: int | None = None
    tile_batch_size: int = 4
    vae_tile_size: int = 1024
    vae_tile_overlap: int = 128
    vae_tile_mode: str = DEFAULT_VAE_TILE_MODE
    input_size: int | None = None
    start: str = "lr"
    tile_weighting: str = "centred"
    respacing: str = "scheduler"

    @classmethod
    def resolve(cls, latent_tile: int, defaults: dict | None = None, **overrides) -> "SamplingSettings":
        """Library defaults < ``defaults`` (a preset's) < ``overrides`` (None = unset); ``tile_size`` None ->
        ``latent_tile``, ``tile_overlap`` None -> ``tile_size // 2``; validated. Unknown names raise."""
        defaults = dict(defaults or {})
        known = {field.name for field in fields(cls)}
        unknown = sorted((set(overrides) | set(defaults)) - known)
        if unknown:
            raise TypeError(f"unknown sampling settings {unknown}; known: {sorted(known)}")
        settings = replace(cls(), **{**defaults, **{k: v for k, v in overrides.items() if v is not None}})
        tile_size = settings.tile_size if settings.tile_size is not None else latent_tile
        tile_overlap = settings.tile_overlap if settings.tile_overlap is not None else tile_size // 2
        return replace(settings, tile_size=tile_size, tile_overlap=tile_overlap).validate()

    def validate(self) -> "SamplingSettings":
        """``self`` if every setting is usable; otherwise one ``ConfigError`` (a ``ValueError``) listing each problem
        under its run-config key (``sr.validation.validate_sampling`` decides the valid ranges)."""
        validate_sampling({
            "scale": self.scale, "steps": self.num_inference_steps, "w": self.w, "start": self.start,
            "respacing": self.respacing, "color_fix": self.color_fix, "input_size": self.input_size or None,
            "tile": {"size": self.tile_size, "overlap": self.tile_overlap, "weighting": self.tile_weighting,
                     "batch_size": self.tile_batch_size},
            "vae_tile": {"size": self.vae_tile_size, "overlap": self.vae_tile_overlap, "mode": self.vae_tile_mode},
        })
        return self


@dataclass
class StableSRPipelineOutput(BaseOutput):
    """``images``: PIL list, ``[B, H, W, C]`` numpy, ``[B, C, H, W]`` tensor in [0, 1], or the denoised
    diffusion-space latent (``output_type="latent"``); ``latents``: the ``x_T`` the call started from (padded-latent
    size, diffusion space) when ``return_latents=True`` — pass it back as ``latents=`` to replay the start."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    latents: torch.Tensor | None = None


class StableSRPipeline(DiffusionPipeline):
    """Any-size StableSR super-resolution (module docstring); ``pipe(image, **settings).images``."""

    # enable_model_cpu_offload: one component on the accelerator at a time, in this order. The SFT adapter runs
    # inside every UNet call and the prompt embedding is a tensor, so both stay on the accelerator.
    model_cpu_offload_seq = "vae->time_aware_encoder->unet->cfw"
    _exclude_from_cpu_offload = ["sft", "prompt_embedding"]
    _optional_components = ["cfw"]

    def __init__(
        self,
        unet,
        vae,
        time_aware_encoder,
        sft,
        cfw,
        scheduler,
        prompt_embedding,
        latent_tile: int = 64,
        sampling: dict | None = None,
        cfw_trained: bool = False,
    ):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, time_aware_encoder=time_aware_encoder, sft=sft, cfw=cfw,
                              scheduler=scheduler, prompt_embedding=prompt_embedding)
        self.register_to_config(latent_tile=latent_tile, sampling=dict(sampling or {}),
                                cfw_trained=bool(cfw_trained and cfw is not None))

    @property
    def model(self) -> StableSR:
        """The model operations over this pipeline's components (the same module objects)."""
        return StableSR(self.unet, self.vae, self.time_aware_encoder, self.sft, self.cfw, self.scheduler,
                        self.prompt_embedding, cfw_trained=self.config.cfw_trained)

    def sampling_settings(self, **overrides) -> SamplingSettings:
        """The call's settings: library defaults < the pipeline's ``sampling`` config < ``overrides`` (None = unset),
        tile defaults resolved against ``latent_tile``, validated (``SamplingSettings.resolve``)."""
        return SamplingSettings.resolve(self.config.latent_tile, self.config.sampling, **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike, overwrite: bool = False, **kwargs) -> Path:
        """``DiffusionPipeline.save_pretrained`` written atomically (temporary sibling folder, then rename); an
        existing folder is replaced only with ``overwrite``. Returns the folder."""
        folder = Path(save_directory)
        if folder.exists() and not overwrite:
            raise FileExistsError(f"{folder}: already exists (pass overwrite=True to replace it)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            super().save_pretrained(staging, **kwargs)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def load_trainable(self, path, parts: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """Load a ``stage1.safetensors`` / ``cfw.safetensors`` file (``StableSR.save_trainable``) into the
        components."""
        parts = self.model.load_trainable(path, parts)
        if "cfw" in parts:
            self.register_to_config(cfw_trained=True)
        return parts

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor | PIL.Image.Image | np.ndarray,
        num_inference_steps: int | None = None,
        w: float | None = None,
        color_fix: str | None = None,
        scale: float | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        tile_batch_size: int | None = None,
        vae_tile_size: int | None = None,
        vae_tile_overlap: int | None = None,
        vae_tile_mode: str | None = None,
        input_size: int | None = None,
        start: str | None = None,
        tile_weighting: str | None = None,
        respacing: str | None = None,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        sample_posterior: bool = True,
        output_type: str = "pil",
        return_latents: bool = False,
        return_dict: bool = True,
    ):
        """Upscale ``image`` (module docstring). Settings left None take the pipeline's defaults
        (``sampling_settings``); the sampling schedule is ``self.scheduler`` (a fresh copy per call).

        Args:
            image: ``[C, h, w]`` / ``[B, C, h, w]`` tensor in [0, 1] (C = 1 or 3), a PIL image, or an ``[h, w, C]``
                numpy array in [0, 1].
            num_inference_steps: denoising steps (the scheduler's respacing of its training steps).
            w: CFW fusion strength (0 = plain SD decoder, 1 = most fidelity).
            color_fix: ``adain``, ``wavelet`` or ``none``.
            scale: output = ``round(h * scale) x round(w * scale)``.
            tile_size, tile_overlap, tile_batch_size: latent tiles of progressive aggregation, tiles per UNet call.
            vae_tile_size, vae_tile_overlap: pixel tiles of the VAE encode/decode (untiled when one tile covers).
            vae_tile_mode: ``exact`` (equals the untiled VAE up to float rounding) or ``estimate`` (approximate
                per-tile passes) for images above one VAE tile (``SamplingSettings``).
            input_size: sample at >= this many pixels on the short side, then resize to the output (0/None: off).
            start: ``lr`` (x_T = the LR latent noised to the first timestep) or ``noise``.
            tile_weighting: ``centred`` or ``official`` Gaussian tile weights (``SamplingSettings``).
            respacing: ``scheduler`` or ``official`` timesteps (``SamplingSettings``; official needs a scheduler
                that takes custom timesteps: DDPM, DPM-Solver).
            generator: every random draw (posterior sample, x_T noise, step noise), in that order.
            prompt_embeds: ``[1 or B, L, D]`` text conditioning replacing the cached empty-prompt embedding.
            latents: ``x_T`` in diffusion space, of the padded latent's size (as returned with
                ``return_latents=True``); replaces the ``start`` draw.
            sample_posterior: False encodes deterministically (the posterior mode ``scaling_factor * mean``).
            output_type: ``pil``, ``np``, ``pt`` (``[B, C, H, W]`` in [0, 1] on the input's device) or ``latent``
                (the denoised diffusion-space latent, cropped to the image's latent size; not decoded).
            return_latents: also return the ``x_T`` used (``StableSRPipelineOutput.latents``).
        """
        settings = self.sampling_settings(
            num_inference_steps=num_inference_steps, w=w, color_fix=color_fix, scale=scale, tile_size=tile_size,
            tile_overlap=tile_overlap, tile_batch_size=tile_batch_size, vae_tile_size=vae_tile_size,
            vae_tile_overlap=vae_tile_overlap, vae_tile_mode=vae_tile_mode, input_size=input_size, start=start,
            tile_weighting=tile_weighting, respacing=respacing,
        )
        check_respacing(self.scheduler, settings.respacing)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}")
        lr = _as_batch(image)
        model = self.model
        device, dtype = self._execution_device, self.vae.dtype
        upsampled, work, target = self._upsample(lr, settings)
        z_lr, features = self._encode(model, upsampled, work, settings, generator, sample_posterior)

        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        set_sampling_timesteps(scheduler, settings.num_inference_steps, settings.respacing, device=device)
        if prompt_embeds is not None:
            prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)

        def predict(x_t, timestep, lr_tiles):
            return model.predict(x_t, timestep, lr_tiles, prompt_embeds)

        latent, x_t = denoise(
            predict, scheduler, z_lr, settings.tile_size, settings.tile_overlap, settings.tile_batch_size,
            settings.start, generator, None if latents is None else latents.to(device=device, dtype=dtype),
            progress=lambda timesteps: self.progress_bar(timesteps), tile_weighting=settings.tile_weighting,
        )
        if output_type == "latent":
            images = latent
        else:
            decoded = self._decode(model, latent, features, settings, work)
            del features
            images = _convert_output(self._postprocess(decoded, upsampled, settings, target, lr), output_type)
        initial = x_t if return_latents else None
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, initial)
        return StableSRPipelineOutput(images=images, latents=initial)

    @torch.no_grad()
    def reconstruct(
        self,
        image: torch.Tensor | PIL.Image.Image | np.ndarray,
        w: float | None = None,
        color_fix: str | None = None,
        scale: float | None = None,
        vae_tile_size: int | None = None,
        vae_tile_overlap: int | None = None,
        vae_tile_mode: str | None = None,
        input_size: int | None = None,
        output_type: str = "pil",
    ) -> StableSRPipelineOutput:
        """The ``lr_latent`` baseline: a call without diffusion. The bicubic-upsampled LR is encoded exactly as a
        call encodes it (posterior mode, the call's VAE tiles) and that latent is decoded at once through the one
        decode path with CFW strength ``w`` fused with the LR's own encoder features, then colour-fixed, resized and
        converted as a call's output. It measures what the VAE (+ CFW) recovers from the LR alone, the ceiling of a
        sampler that returned the LR latent unchanged. Arguments as for ``__call__`` (None = the pipeline's
        defaults); ``output_type`` one of ``pil``, ``np``, ``pt``."""
        settings = self.sampling_settings(w=w, color_fix=color_fix, scale=scale, vae_tile_size=vae_tile_size,
                                          vae_tile_overlap=vae_tile_overlap, vae_tile_mode=vae_tile_mode,
                                          input_size=input_size)
        if output_type not in IMAGE_OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {IMAGE_OUTPUT_TYPES}")
        lr = _as_batch(image)
        model = self.model
        upsampled, work, target = self._upsample(lr, settings)
        z_lr, features = self._encode(model, upsampled, work, settings, generator=None, sample_posterior=False)
        decoded = self._decode(model, z_lr, features, settings, work)
        del features
        images = self._postprocess(decoded, upsampled, settings, target, lr)
        self.maybe_free_model_hooks()
        return StableSRPipelineOutput(images=_convert_output(images, output_type))

    @staticmethod
    def bicubic(image: torch.Tensor | PIL.Image.Image | np.ndarray, scale: float,
                output_type: str = "pil") -> StableSRPipelineOutput:
        """The ``bicubic`` baseline (no model): the LR resized to the output size ``round((h, w) * scale)`` by the
        resize a call applies before encoding (``upsample_lr``), then made an output as a call's image is, without
        colour fix (grey back to one channel). ``output_type`` one of ``pil``, ``np``, ``pt``."""
        if output_type not in IMAGE_OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {IMAGE_OUTPUT_TYPES}")
        settings = SamplingSettings(scale=scale, color_fix="none").validate()
        lr = _as_batch(image)
        target = output_size(*lr.shape[-2:], settings.scale)
        upsampled = upsample_lr(lr, target)
        images = StableSRPipeline._postprocess(upsampled, upsampled, settings, target, lr)
        return StableSRPipelineOutput(images=_convert_output(images, output_type))

    def _upsample(self, lr: torch.Tensor, settings: SamplingSettings):
        """(``up``, working size, output size) of a call (module docstring), ``up`` on the execution device in the
        VAE's dtype."""
        height, width = lr.shape[-2:]
        target = output_size(height, width, settings.scale)
        work = output_size(height, width, working_scale(height, width, settings.scale, settings.input_size))
        return upsample_lr(lr, work, self._execution_device, self.vae.dtype), work, target

    def _encode(self, model: StableSR, upsampled: torch.Tensor, work, settings: SamplingSettings,
                generator: torch.Generator | None, sample_posterior: bool):
        """(diffusion-space ``z_lr``, CFW encoder features) of ``up`` reflect-padded to multiples of 64 px."""
        padded = reflect_pad_to(upsampled, round_up(work[0], PIXEL_PAD_MULTIPLE), round_up(work[1], PIXEL_PAD_MULTIPLE))
        # Per-axis VAE tile/overlap, each a multiple of 8 and below the tile even when the image is narrower.
        vae_tiles = tuple(min(settings.vae_tile_size, side) for side in padded.shape[-2:])
        vae_overlaps = tuple(min(settings.vae_tile_overlap, tile - VAE_FACTOR) for tile in vae_tiles)
        _onload(self.vae)
        return model.encode(padded, generator, sample=sample_posterior, tile=vae_tiles, overlap=vae_overlaps,
                            progress=self._progress_enabled(), mode=settings.vae_tile_mode)

    def _decode(self, model: StableSR, latent: torch.Tensor, features, settings: SamplingSettings,
                work) -> torch.Tensor:
        """A padded diffusion-space latent through the one decode path (CFW strength ``w`` fused with
        ``features``), cropped to the working size: in about [-1, 1], before ``_postprocess``."""
        _onload(self.cfw, self.vae)
        decoded = model.decode(latent, features, settings.w, tile=settings.vae_tile_size // VAE_FACTOR,
                               overlap=settings.vae_tile_overlap // VAE_FACTOR, progress=self._progress_enabled(),
                               mode=settings.vae_tile_mode)
        return decoded[..., : work[0], : work[1]]

    def _progress_enabled(self) -> bool:
        return not getattr(self, "_progress_bar_config", {}).get("disable", False)

    @staticmethod
    def _postprocess(image, upsampled, settings: SamplingSettings, target, lr: torch.Tensor) -> torch.Tensor:
        """Colour fix against the upsampled input, [0, 1], resize to the target, grey back to one channel."""
        image = apply_color_fix(image.float(), upsampled.float(), settings.color_fix)
        image = ((image + 1) / 2).clamp(0, 1)
        if tuple(image.shape[-2:]) != target:
            image = F.interpolate(image, size=target, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        if lr.shape[1] == 1:
            luma = torch.tensor(LUMA_WEIGHTS, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
            image = (image * luma).sum(dim=1, keepdim=True)
        return image.to(lr.device)


def upsample_lr(lr: torch.Tensor, size: tuple[int, int], device=None, dtype=None) -> torch.Tensor:
    """``up = clamp(bicubic(2 lr - 1, size), -1, 1)``: the LR ``[B, C, h, w]`` in [0, 1] (grey replicated to RGB)
    mapped to [-1, 1] (on ``device`` in ``dtype``) and resized; what a call encodes and colour-fixes against, and the
    ``bicubic`` baseline."""
    lq = (lr.expand(-1, 3, -1, -1) * 2 - 1).to(device=device, dtype=dtype)
    return F.interpolate(lq, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def _onload(*modules) -> None:
    """Under ``enable_model_cpu_offload``, move ``modules`` to the accelerator as calling their ``forward`` would: the
    VAE encoder and the CFW layers are run through their submodules, which the offload hooks do not see."""
    for module in modules:
        hook = getattr(module, "_hf_hook", None)
        if hook is not None:
            hook.pre_forward(module)


def _as_batch(image) -> torch.Tensor:
    """``image`` as a float ``[B, C, h, w]`` tensor in [0, 1] with C = 1 or 3 (PIL: RGB, or L for grey)."""
    if isinstance(image, PIL.Image.Image):
        array = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"), dtype=np.float32) / 255
        image = array
    if isinstance(image, np.ndarray):
        array = image[..., None] if image.ndim == 2 else image
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a tensor, PIL image or numpy array, got {type(image).__name__}")
    batch = image[None] if image.ndim == 3 else image
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, C, h, w] with C = 1 or 3, got shape {tuple(image.shape)}")
    return batch if batch.is_floating_point() else batch.float() / 255


def _convert_output(images: torch.Tensor, output_type: str):
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).float().cpu().numpy()
    if output_type == "np":
        return array
    eight_bit = (array * 255).round().astype(np.uint8)
    return [PIL.Image.fromarray(item[..., 0] if item.shape[-1] == 1 else item) for item in eight_bit]


__all__ = ["SamplingSettings", "StableSRPipeline", "StableSRPipelineOutput"]
