"""``StableSRPipeline``: any-size StableSR upscaling in diffusers style (docs/method.md#sampling, docs/method.md#aggregation, docs/method.md#colour-correction, docs/method.md#script-defaults).

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
             round(h, w * scale) when input_size raised the working size -> grey in, grey out (luma)

Grey in, grey out (``sr.ops.color.keep_grey``): an image whose input is grey (one channel, or three exactly equal
channels) comes out as the BT.601 luma ``Y' = 0.299 R + 0.587 G + 0.114 B`` of its output, one channel for a
one-channel input, three equal channels otherwise; per image, so a batch may mix grey and colour images.

Two no-diffusion baselines share these steps (eval.py scores them beside every run): ``StableSRPipeline.bicubic``
(``up`` at the output size, no model) and ``StableSRPipeline.reconstruct`` (``z_lr`` from the posterior mode decoded
at once: the VAE + CFW ceiling without sampling).

This class is the one place where sampling settings are layered and resolved (``sampling_settings``: the pipeline's
``sampling`` config over the defaults of ``sr.sampling.settings.SamplingSettings``, whose field names are the call's
keywords and which decides their valid values) and the one decode path
(``StableSR.decode``: the CFW warning fires here). Latents are in diffusion space everywhere
(``scaling_factor * E(x)``, see ``sr.models.stablesr``).
"""

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    SchedulerMixin,
    UNet2DConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput

from sr.io import image_from_pil, read_image
from sr.models.autoencoder import CFWAutoencoder
from sr.models.cfw import CFW
from sr.models.encoder import TimeAwareEncoder
from sr.models.prompt import PromptEmbedding
from sr.models.sft import SFTAdapter
from sr.models.stablesr import StableSR
from sr.ops.color import color_fix as apply_color_fix
from sr.ops.color import keep_grey
from sr.sampling.aggregation import denoise
from sr.sampling.padding import output_size, reflect_pad_to, round_up, working_scale
from sr.sampling.respacing import check_respacing, set_sampling_timesteps
from sr.sampling.settings import (
    SamplingSettings,
    TileSettings,
    VaeTileSettings,
    legacy_names_mapped,
)

PIXEL_PAD_MULTIPLE = 64
VAE_FACTOR = 8
IMAGE_OUTPUT_TYPES = ("pil", "np", "pt")
OUTPUT_TYPES = (*IMAGE_OUTPUT_TYPES, "latent")
PIPELINE_INDEX = "model_index.json"
# Outputs are already in [0, 1]: the processor only converts them (no denormalisation, no resize).
OUTPUT_PROCESSOR = VaeImageProcessor(do_resize=False, do_normalize=False)
ImageInput = torch.Tensor | PIL.Image.Image | np.ndarray | str | os.PathLike | list


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
    # what `callback_on_step_end` may read and replace: the padded diffusion-space latent being denoised
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        time_aware_encoder: TimeAwareEncoder,
        sft: SFTAdapter,
        cfw: CFW | None,
        scheduler: SchedulerMixin,
        prompt_embedding: PromptEmbedding,
        latent_tile: int = 64,
        sampling: dict | None = None,
        cfw_trained: bool = False,
    ):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, time_aware_encoder=time_aware_encoder, sft=sft, cfw=cfw,
                              scheduler=scheduler, prompt_embedding=prompt_embedding)
        self.register_to_config(latent_tile=latent_tile, sampling=legacy_names_mapped(sampling),
                                cfw_trained=bool(cfw_trained and cfw is not None))
        self._vae_tiling = True
        self._interrupt = False
        self._num_timesteps = 0

    @property
    def model(self) -> StableSR:
        """The model operations over this pipeline's components (the same module objects)."""
        return StableSR(self.unet, self.vae, self.time_aware_encoder, self.sft, self.cfw, self.scheduler,
                        self.prompt_embedding, cfw_trained=self.config.cfw_trained, vae_tiling=self._vae_tiling)

    @property
    def autoencoder(self) -> CFWAutoencoder:
        """``vae`` and ``cfw`` as one component (``sr.models.autoencoder``), with this pipeline's tiling switch."""
        return self.model.autoencoder

    def enable_vae_tiling(self) -> None:
        """Encode and decode tile by tile (the call's ``vae_tile`` settings) when the image is
        larger than one VAE tile: the default. ``exact`` mode equals the untiled pass, CFW included."""
        self._vae_tiling = True

    def disable_vae_tiling(self) -> None:
        """Encode and decode every image in one pass, whatever its size."""
        self._vae_tiling = False

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the latest call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. in ``callback_on_step_end``) to skip the call's remaining steps; the
        image is decoded from the latent reached."""
        return self._interrupt

    def sampling_settings(self, run_config=None, **overrides) -> SamplingSettings:
        """The settings a call samples with: ``SamplingSettings`` defaults < the pipeline's ``sampling`` config < the
        setting keys of ``run_config`` (an ``upscale.py`` / ``eval.py`` config) < ``overrides`` (the call's keywords,
        None = unset); tile defaults resolved against ``latent_tile``; validated. ``pipe(image,
        **pipe.sampling_settings(cfg).arguments())`` samples as the command does."""
        layer = None if run_config is None else SamplingSettings.of_run_config(run_config)
        return SamplingSettings.resolve(self.config.latent_tile, self.config.sampling, layer, **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> Path:
        """``DiffusionPipeline.save_pretrained`` written atomically: into a temporary sibling folder, which then
        replaces ``save_directory``. An existing pipeline folder (one with a ``model_index.json``) or an empty folder
        is replaced, as diffusers saves into existing folders; any other non-empty folder is refused. The configs
        record no ``_name_or_path`` (the folder it was loaded from: a machine path). Returns the folder."""
        folder = Path(save_directory)
        if folder.exists() and not (folder.is_dir() and (not any(folder.iterdir())
                                                         or (folder / PIPELINE_INDEX).is_file())):
            raise FileExistsError(f"{folder}: exists and is not a pipeline folder (no {PIPELINE_INDEX}); "
                                  "not replaced")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        previous = staging.with_name(staging.name + ".previous")
        try:
            super().save_pretrained(staging, **kwargs)
            for config in staging.glob("**/*.json"):
                _drop_name_or_path(config)
            if folder.exists():
                os.replace(folder, previous)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(previous, ignore_errors=True)
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
        image: ImageInput,
        num_inference_steps: int | None = None,
        w: float | None = None,
        color_fix: str | None = None,
        scale: float | None = None,
        input_size: int | None = None,
        start: str | None = None,
        respacing: str | None = None,
        tile: TileSettings | dict | None = None,
        vae_tile: VaeTileSettings | dict | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        sample_posterior: bool | None = None,
        output_type: str = "pil",
        return_latents: bool = False,
        return_dict: bool = True,
        callback_on_step_end: Callable[["StableSRPipeline", int, torch.Tensor, dict], dict] | PipelineCallback
        | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ):
        """Upscale ``image`` (module docstring). Settings (``num_inference_steps`` ... ``vae_tile``: the fields of
        ``SamplingSettings``, which documents them) left None take the pipeline's defaults (``sampling_settings``);
        ``tile`` and ``vae_tile`` are ``TileSettings`` / ``VaeTileSettings`` or mappings of some of their fields
        (``tile={"size": 32, "overlap": 16}``). The sampling schedule is ``self.scheduler`` (a fresh copy per call).

        Args:
            image: a path or a PIL image (read as ``upscale.py`` reads files, ``sr.io``: 16-bit, grey kept grey, EXIF
                orientation; alpha is dropped), a ``[C, h, w]`` / ``[B, C, h, w]`` tensor or an ``[h, w, C]`` /
                ``[B, h, w, C]`` numpy array (C = 1 or 3; float in [0, 1], or uint8 / uint16 scaled by 255 / 65535),
                or a list of any of these of one size.
            num_inference_steps: denoising steps (the scheduler's respacing of its training steps).
            w: CFW fusion strength (0 = plain SD decoder, 1 = most fidelity).
            color_fix: ``adain``, ``wavelet`` or ``none``.
            scale: output = ``round(h * scale) x round(w * scale)``.
            input_size: sample at >= this many pixels on the short side, then resize to the output (0/None: off).
            start: ``lr`` (x_T = the LR latent noised to the first timestep) or ``noise``.
            respacing: ``scheduler`` or ``official`` timesteps (official needs a scheduler that takes custom
                timesteps: DDPM, DPM-Solver).
            tile: latent tiles of progressive aggregation: ``size``, ``overlap``, ``weighting`` (``centred`` or
                ``official`` Gaussian), ``batch_size`` (tiles per UNet call).
            vae_tile: pixel tiles of the VAE encode/decode (untiled when one tile covers, or after
                ``disable_vae_tiling()``): ``size``, ``overlap``, ``mode`` (``exact``: equals the untiled VAE up to
                float rounding, or ``estimate``: approximate per-tile passes).
            num_images_per_prompt: outputs per input image (``[a, a, b, b]`` for inputs ``[a, b]`` and 2).
            generator: every random draw (posterior sample, x_T noise, step noise), in that order. One generator
                draws for the whole batch; a list gives output ``k`` its own (length batch x
                ``num_images_per_prompt``): output ``k`` then equals a one-image call with ``generator[k]``.
            prompt_embeds: ``[1 or B, L, D]`` text conditioning replacing the cached empty-prompt embedding.
            latents: ``x_T`` in diffusion space, of the padded latent's size (as returned with
                ``return_latents=True``); replaces the ``start`` draw.
            sample_posterior: False encodes deterministically (the posterior mode ``scaling_factor * mean``).
                A setting (``SamplingSettings``): ``upscale.py sample_posterior=false``.
            output_type: ``pil``, ``np``, ``pt`` (``[B, C, H, W]`` in [0, 1] on the input's device) or ``latent``
                (the denoised diffusion-space latent, cropped to the image's latent size; not decoded).
            return_latents: also return the ``x_T`` used (``StableSRPipelineOutput.latents``).
            callback_on_step_end: ``callback(pipe, i, t, callback_kwargs) -> dict`` after every step ``i``;
                ``callback_kwargs`` holds ``callback_on_step_end_tensor_inputs`` (names of
                ``_callback_tensor_inputs``, default ``["latents"]``); a returned ``latents`` replaces the latent,
                and setting ``pipe._interrupt = True`` skips the remaining steps. With a generator list it runs per
                output image (``i`` restarts).
        """
        settings = self.sampling_settings(
            num_inference_steps=num_inference_steps, w=w, color_fix=color_fix, scale=scale, input_size=input_size,
            start=start, respacing=respacing, tile=tile, vae_tile=vae_tile, sample_posterior=sample_posterior,
        )
        check_respacing(self.scheduler, settings.respacing)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        unknown = sorted(set(tensor_inputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} unknown; expected names of "
                             f"{self._callback_tensor_inputs}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        images = _as_batch(image)
        lr = images.repeat_interleave(num_images_per_prompt, dim=0)
        if prompt_embeds is not None and prompt_embeds.shape[0] == images.shape[0] > 1:
            prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        self._interrupt = False
        step_end = None
        if callback_on_step_end is not None:
            def step_end(index, timestep, x):
                outputs = callback_on_step_end(self, index, timestep, {name: x for name in tensor_inputs})
                return (outputs or {}).get("latents", x)

        if isinstance(generator, list):
            if len(generator) != lr.shape[0]:
                raise ValueError(f"{len(generator)} generators for {lr.shape[0]} output images (batch "
                                 f"{images.shape[0]} x num_images_per_prompt {num_images_per_prompt}); pass one "
                                 "generator, or one per output image")
            runs = [self._upscale(lr[k : k + 1], settings, generator[k], _item(prompt_embeds, k),
                                  _item(latents, k), settings.sample_posterior, output_type, step_end)
                    for k in range(lr.shape[0])]
            result, initial = torch.cat([run[0] for run in runs]), torch.cat([run[1] for run in runs])
        else:
            result, initial = self._upscale(lr, settings, generator, prompt_embeds, latents, settings.sample_posterior,
                                            output_type, step_end)
        images_out = result if output_type == "latent" else _convert_output(result, output_type)
        initial = initial if return_latents else None
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images_out, initial)
        return StableSRPipelineOutput(images=images_out, latents=initial)

    def _upscale(self, lr: torch.Tensor, settings: SamplingSettings, generator, prompt_embeds, latents,
                 sample_posterior: bool, output_type: str, step_end) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch through the whole call (module docstring): (images ``[B, C, H, W]`` in [0, 1] on ``lr``'s
        device, or the denoised latent for ``output_type="latent"``; ``x_T``)."""
        model = self.model
        device, dtype = self._execution_device, self.vae.dtype
        upsampled, work, target = self._upsample(lr, settings)
        z_lr, features = self._encode(model, upsampled, work, settings, generator, sample_posterior)

        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        set_sampling_timesteps(scheduler, settings.num_inference_steps, settings.respacing, device=device)
        self._num_timesteps = len(scheduler.timesteps)
        if prompt_embeds is not None:
            prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)

        def predict(x_t, timestep, lr_tiles):
            return model.predict(x_t, timestep, lr_tiles, prompt_embeds)

        latent, x_t = denoise(
            predict, scheduler, z_lr, settings.tile.size, settings.tile.overlap, settings.tile.batch_size,
            settings.start, generator, None if latents is None else latents.to(device=device, dtype=dtype),
            progress=lambda timesteps: self.progress_bar(timesteps), tile_weighting=settings.tile.weighting,
            step_end=step_end, interrupted=lambda: self.interrupt,
        )
        if output_type == "latent":
            return latent, x_t
        decoded = self._decode(model, latent, features, settings, work)
        del features
        return self._postprocess(decoded, upsampled, settings, target, lr), x_t

    @torch.no_grad()
    def reconstruct(
        self,
        image: ImageInput,
        w: float | None = None,
        color_fix: str | None = None,
        scale: float | None = None,
        input_size: int | None = None,
        vae_tile: VaeTileSettings | dict | None = None,
        output_type: str = "pil",
    ) -> StableSRPipelineOutput:
        """The ``lr_latent`` baseline: a call without diffusion. The bicubic-upsampled LR is encoded exactly as a
        call encodes it (posterior mode, the call's VAE tiles) and that latent is decoded at once through the one
        decode path with CFW strength ``w`` fused with the LR's own encoder features, then colour-fixed, resized and
        converted as a call's output. It measures what the VAE (+ CFW) recovers from the LR alone, the ceiling of a
        sampler that returned the LR latent unchanged. Arguments as for ``__call__`` (None = the pipeline's
        defaults); ``output_type`` one of ``pil``, ``np``, ``pt``."""
        settings = self.sampling_settings(w=w, color_fix=color_fix, scale=scale, input_size=input_size,
                                          vae_tile=vae_tile)
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
    def bicubic(image: ImageInput, scale: float,
                output_type: str = "pil") -> StableSRPipelineOutput:
        """The ``bicubic`` baseline (no model): the LR resized to the output size ``round((h, w) * scale)`` by the
        resize a call applies before encoding (``upsample_lr``), then made an output as a call's image is, without
        colour fix (grey in, grey out). ``output_type`` one of ``pil``, ``np``, ``pt``."""
        if output_type not in IMAGE_OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {IMAGE_OUTPUT_TYPES}")
        settings = SamplingSettings(scale=scale, color_fix="none")
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
        vae_tiles = tuple(min(settings.vae_tile.size, side) for side in padded.shape[-2:])
        vae_overlaps = tuple(min(settings.vae_tile.overlap, tile - VAE_FACTOR) for tile in vae_tiles)
        _onload(self.vae)
        return model.encode(padded, generator, sample=sample_posterior, tile=vae_tiles, overlap=vae_overlaps,
                            progress=self._progress_enabled(), mode=settings.vae_tile.mode)

    def _decode(self, model: StableSR, latent: torch.Tensor, features, settings: SamplingSettings,
                work) -> torch.Tensor:
        """A padded diffusion-space latent through the one decode path (CFW strength ``w`` fused with
        ``features``), cropped to the working size: in about [-1, 1], before ``_postprocess``."""
        _onload(self.cfw, self.vae)
        decoded = model.decode(latent, features, settings.w, tile=settings.vae_tile.size // VAE_FACTOR,
                               overlap=settings.vae_tile.overlap // VAE_FACTOR, progress=self._progress_enabled(),
                               mode=settings.vae_tile.mode)
        return decoded[..., : work[0], : work[1]]

    def _progress_enabled(self) -> bool:
        return not getattr(self, "_progress_bar_config", {}).get("disable", False)

    @staticmethod
    def _postprocess(image, upsampled, settings: SamplingSettings, target, lr: torch.Tensor) -> torch.Tensor:
        """Colour fix against the upsampled input, [0, 1], resize to the target, grey in, grey out (``keep_grey``:
        the one place a call, ``reconstruct`` and ``bicubic`` make a grey input's output grey)."""
        image = apply_color_fix(image.float(), upsampled.float(), settings.color_fix)
        image = ((image + 1) / 2).clamp(0, 1)
        if tuple(image.shape[-2:]) != target:
            image = F.interpolate(image, size=target, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return keep_grey(image, lr).to(lr.device)


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


def _as_batch(image: ImageInput) -> torch.Tensor:
    """``image`` (``__call__``'s ``image``) as a float ``[B, C, h, w]`` tensor in [0, 1] with C = 1 or 3. Paths and
    PIL images go through ``sr.io`` as ``upscale.py`` reads files; ``VaeImageProcessor.preprocess`` does not fit
    here: it maps to [-1, 1], resizes to multiples of 8, and divides every PIL image by 255 (16-bit grey turns
    white)."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("image is an empty list")
        items = [_as_batch(item) for item in image]
        shapes = sorted({tuple(item.shape[1:]) for item in items})
        if len(shapes) > 1:
            raise ValueError(f"the images of a list must share one [C, h, w], got {shapes}")
        return torch.cat(items)
    if isinstance(image, (str, os.PathLike)):
        return read_image(image).image[None]
    if isinstance(image, PIL.Image.Image):
        return image_from_pil(image).image[None]
    if isinstance(image, np.ndarray):
        array = image[..., None] if image.ndim == 2 else image
        if array.ndim not in (3, 4):
            raise ValueError(f"expected a numpy image [h, w, C] or [B, h, w, C], got shape {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(_unit_range(array)))
        image = tensor.permute(2, 0, 1) if array.ndim == 3 else tensor.permute(0, 3, 1, 2)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a path, PIL image, numpy array, tensor or a list of them, got "
                        f"{type(image).__name__}")
    batch = image[None] if image.ndim == 3 else image
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, C, h, w] with C = 1 or 3, got shape {tuple(image.shape)}")
    return batch if batch.is_floating_point() else batch.float() / 255


def _unit_range(array: np.ndarray) -> np.ndarray:
    """A numpy image in [0, 1]: float as given, uint8 / uint16 divided by 255 / 65535 (as ``sr.io`` reads files)."""
    if array.dtype == np.uint16:
        return array.astype(np.float32) / (2**16 - 1)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"numpy images must be float in [0, 1], uint8 or uint16, got {array.dtype}")
    return array


def _item(tensor: torch.Tensor | None, index: int) -> torch.Tensor | None:
    """Row ``index`` of a per-image batch tensor (a batch of one is shared)."""
    if tensor is None or tensor.shape[0] == 1:
        return tensor
    return tensor[index : index + 1]


def _convert_output(images: torch.Tensor, output_type: str):
    """``[B, C, H, W]`` in [0, 1] as ``pt`` (itself), ``np`` or ``pil`` (grey as ``L``), by ``VaeImageProcessor``."""
    if output_type == "pt":
        return images
    return OUTPUT_PROCESSOR.postprocess(images, output_type=output_type, do_denormalize=[False] * images.shape[0])


def _drop_name_or_path(config: Path) -> None:
    """Remove ``_name_or_path`` from a saved diffusers config (``save_pretrained``)."""
    data = json.loads(config.read_text())
    if isinstance(data, dict) and "_name_or_path" in data:
        del data["_name_or_path"]
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


__all__ = ["SamplingSettings", "StableSRPipeline", "StableSRPipelineOutput", "TileSettings", "VaeTileSettings"]
