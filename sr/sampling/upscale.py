"""Any-size super-resolution with a StableSR model: pre-processing, tiled encode, sampling, CFW decode, colour fix.

Pipeline for ``lr [1, C, h, w]`` in [0, 1] (spec section 10, the "any size" script), ``C`` 3 or 1 (grey is
replicated to RGB for the model and returned as its BT.601 luma ``0.299 R + 0.587 G + 0.114 B``)::

    s        = max(input_size / min(h, w), scale)   if input_size else scale
    target   = (round(h * scale), round(w * scale))         # Python round; the exact output size
    work     = (round(h * s), round(w * s))
    up       = clamp(bicubic(2 lr - 1, work), -1, 1)        # F.interpolate, no antialias (as trained)
    padded   = reflect-pad up (bottom/right) to multiples of 64 px
    moments, feats = tiled_encode(padded)                    # untiled when one VAE tile covers the image
    z_lr     = scaling_factor * N(moments).sample(generator)
    z        = sampler.sample(model, z_lr, generator)        # progressive aggregation (sr.sampling.aggregation)
    x        = tiled_decode(z / scaling_factor, feats, w)    # CFW fusion with the padded LR's encoder features
    x        = colour_fix(x[:work], up)                      # adain | wavelet | none, in [-1, 1]
    out      = clamp((x + 1) / 2, 0, 1), resized to target (bicubic, antialiased) if work != target

Why 64 px and not the official 32: the latent must be a multiple of 8 (the SD UNet's downsampling factor) so that
any latent up to one tile is a valid UNet input; 32 px only worked officially because tiles were always 64^2.

Deliberate differences from the official script: the output is exactly ``target`` (the official final resize used
the padded size, and its crop was a no-op); the padding is cropped *before* the colour fix, so the mirrored border
does not bias the colour statistics; the downscale when ``s > scale`` is antialiased. The VAE passes are tiled
(``sr.models.tiled_vae``) with tiles of ``vae_tile_size`` pixels, so their memory is bounded by the tile; the sampler's
by its latent tiles. Image-sized buffers remain: the input/output images, the CFW encoder features, the latents.
"""

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from hydra.utils import instantiate
from omegaconf import DictConfig

from sr.ops.color import ColorFixMethod, color_fix
from sr.models.tiled_vae import tiled_decode, tiled_encode
from sr.sampling.aggregation import AggregationSampler
from sr.sampling.padding import reflect_pad_to, round_up

PIXEL_PAD_MULTIPLE = 64
VAE_FACTOR = 8
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(round(height * scale), round(width * scale))``, at least 1 pixel per side."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def working_scale(height: int, width: int, scale: float, input_size: int | None) -> float:
    """``max(input_size / min(height, width), scale)`` (the model works at >= ``input_size`` on the short side)."""
    return max(input_size / min(height, width), scale) if input_size else scale


class Upscaler:
    """``upscaler(lr [1, C, h, w] in [0, 1], generator) -> [1, C, round(h*scale), round(w*scale)]`` in [0, 1]."""

    def __init__(
        self,
        model,
        sampler: AggregationSampler,
        scale: float = 4.0,
        w: float = 0.5,
        color_fix: ColorFixMethod = "adain",
        input_size: int | None = None,
        vae_tile_size: int = 1024,
        vae_tile_overlap: int = 128,
        progress: bool = False,
    ):
        if scale <= 0:
            raise ValueError(f"upscaling factor must be positive, got {scale}")
        if color_fix not in ("adain", "wavelet", "none"):
            raise ValueError(f"unknown colour fix {color_fix!r}; expected 'adain', 'wavelet' or 'none'")
        if input_size is not None and input_size < 1:
            raise ValueError(f"input_size must be a positive number of pixels or None, got {input_size}")
        if vae_tile_size < PIXEL_PAD_MULTIPLE or vae_tile_size % PIXEL_PAD_MULTIPLE:
            raise ValueError(
                f"VAE tile size must be a positive multiple of {PIXEL_PAD_MULTIPLE} px, got {vae_tile_size}"
            )
        if vae_tile_overlap % VAE_FACTOR or not 0 <= vae_tile_overlap < vae_tile_size:
            raise ValueError(
                f"VAE tile overlap must be a multiple of {VAE_FACTOR} px in [0, {vae_tile_size}), "
                f"got {vae_tile_overlap}"
            )
        self.model = model
        self.sampler = sampler
        self.scale = scale
        self.w = w
        self.color_fix = color_fix
        self.input_size = input_size
        self.vae_tile_size = vae_tile_size
        self.vae_tile_overlap = vae_tile_overlap
        self.progress = progress

    def _encode(self, image: torch.Tensor, generator: torch.Generator | None):
        # Per-axis tile/overlap, each a multiple of 8 and below the tile even when the image is narrower than it.
        tiles = [min(self.vae_tile_size, side) for side in image.shape[-2:]]
        overlaps = [min(self.vae_tile_overlap, tile - VAE_FACTOR) for tile in tiles]
        moments, features = tiled_encode(self.model.vae, image, tile=tuple(tiles), overlap=tuple(overlaps),
                                         progress=self.progress)
        latent = DiagonalGaussianDistribution(moments).sample(generator=generator)
        return latent * self.model.scaling_factor, features

    def _decode(self, latent: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        return tiled_decode(
            self.model.vae, latent / self.model.scaling_factor, features, self.w,
            tile=self.vae_tile_size // VAE_FACTOR, overlap=self.vae_tile_overlap // VAE_FACTOR, cfw=self.model.cfw,
            progress=self.progress,
        )

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if lr.ndim != 4 or lr.shape[0] != 1 or lr.shape[1] not in (1, 3):
            raise ValueError(f"expected one image [1, C, h, w] with C = 1 or 3, got shape {tuple(lr.shape)}")
        height, width = lr.shape[-2:]
        target = output_size(height, width, self.scale)
        work_scale = working_scale(height, width, self.scale, self.input_size)
        work = output_size(height, width, work_scale)
        parameter = next(self.model.vae.parameters())
        gray = lr.shape[1] == 1

        lq = (lr.expand(-1, 3, -1, -1) * 2 - 1).to(device=parameter.device, dtype=parameter.dtype)
        upsampled = F.interpolate(lq, size=work, mode="bicubic", align_corners=False).clamp(-1, 1)
        padded = reflect_pad_to(upsampled, round_up(work[0], PIXEL_PAD_MULTIPLE), round_up(work[1], PIXEL_PAD_MULTIPLE))
        z_lr, features = self._encode(padded, generator)
        del padded
        latent = self.sampler.sample(self.model, z_lr, generator)
        image = self._decode(latent, features)[..., : work[0], : work[1]]
        del features
        image = color_fix(image.float(), upsampled.float(), self.color_fix)
        image = ((image + 1) / 2).clamp(0, 1)
        if work != target:
            image = F.interpolate(image, size=target, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        if gray:
            luma = torch.tensor(LUMA_WEIGHTS, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
            image = (image * luma).sum(dim=1, keepdim=True)
        return image.to(lr.device)


def build_sampler(cfg: DictConfig, latent_tile: int, progress: bool | None = None) -> AggregationSampler:
    """An ``AggregationSampler`` from the sampling keys of ``cfg`` (see ``build_upscaler``)."""
    tile_size = cfg.tile.size if cfg.tile.size is not None else latent_tile
    overlap = cfg.tile.overlap if cfg.tile.overlap is not None else tile_size // 2
    return AggregationSampler(
        scheduler=instantiate(cfg.scheduler),
        num_steps=cfg.steps,
        tile_size=tile_size,
        tile_overlap=overlap,
        tile_batch_size=cfg.tile.batch_size,
        start=cfg.start,
        progress=cfg.progress if progress is None else progress,
        tile_weighting=cfg.tile.weighting,
        respacing=cfg.respacing,
    )


def build_upscaler(model, cfg: DictConfig, progress: bool | None = None) -> Upscaler:
    """An ``Upscaler`` from a config with the keys of ``conf/upscale.yaml``::

        scheduler: {_target_: diffusers.DDPMScheduler, ...}   steps: 200   start: lr   respacing: scheduler
        tile: {size: null (= model.latent_tile), overlap: null (= size // 2), batch_size: 4, weighting: centred}
        scale: 4   w: 0.5   color_fix: adain   input_size: null   vae_tile: {size: 1024, overlap: 128}   progress: true
    """
    return Upscaler(
        model,
        build_sampler(cfg, model.latent_tile, progress),
        scale=cfg.scale,
        w=cfg.w,
        color_fix=cfg.color_fix,
        input_size=cfg.input_size,
        vae_tile_size=cfg.vae_tile.size,
        vae_tile_overlap=cfg.vae_tile.overlap,
        progress=cfg.progress if progress is None else progress,
    )

