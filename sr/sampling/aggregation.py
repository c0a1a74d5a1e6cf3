"""Progressive aggregation sampling: latent tiles fused at every denoising step (spec sections 7 and 8.1).

One image (or a batch of same-size images) is denoised on its full latent ``x``; at every step ``t`` (original
0..999 units)::

    out_k = model.predict(x[tile k], t, z_lr[tile k])          # encoder on the LR-latent tile, as trained
    out   = sum_k w * out_k / sum_k w                           # w: Gaussian tile weight (sr.ops.tiling)
    x     = scheduler.step(out, t, x)                           # ONE step on the full latent, one noise draw

Start (``start="lr"``, the any-size scripts' default) with the original 1000-step ``alpha_bar``::

    x_T = sqrt(alpha_bar[t_0]) * z_lr + sqrt(1 - alpha_bar[t_0]) * eps,    t_0 = first sampling timestep (999)

or pure noise ``x_T = init_noise_sigma * eps`` (``start="noise"``).

The scheduler is any diffusers scheduler with ``set_timesteps`` / ``step`` (DDPM respaced = the released recipe,
DDIM, DPM-Solver++); ``respacing`` picks its timesteps (``official``: the released code's, ``scheduler``: its own
``timestep_spacing``; sr.sampling.respacing) and ``tile_weighting`` the Gaussian (``official`` or ``centred``;
sr.ops.tiling). A fresh copy is made for every ``sample`` call with the model's ``prediction_type``, so one
sampler object serves eps- and v-prediction models and keeps no state between images.

Sizes: tiles are ``tile_size`` x ``tile_size`` latent pixels (a multiple of 8, the UNet's downsampling factor);
a latent side shorter than one tile is reflect-padded up to the tile and the result cropped back, because the model
was trained on (and behaves best at) full tiles. The tile grid, its weights in the latent's dtype and the LR-latent
tiles are built once per call; each step only copies the current tiles into a preallocated batch and accumulates
in place. When one tile covers the whole latent the model output is used as is (bit-identical to untiled sampling).

Randomness: every draw (start noise, per-step noise) comes from the caller's ``torch.Generator``.
"""

from typing import Literal

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from sr.ops.tiling import TileGrid, TileWeighting, check_tile_weighting
from sr.sampling.padding import reflect_pad_to
from sr.sampling.respacing import Respacing, check_respacing, set_sampling_timesteps

__all__ = ["AggregationSampler", "TileFusion", "fresh_scheduler", "noised_latent"]

StartMode = Literal["lr", "noise"]
UNET_DOWNSAMPLING = 8


def noised_latent(latent: torch.Tensor, noise: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
    """Forward diffusion ``q(x_t | x_0)``: ``sqrt(alpha_bar) * latent + sqrt(1 - alpha_bar) * noise``."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=latent.dtype, device=latent.device)
    return alpha_bar.sqrt() * latent + (1 - alpha_bar).sqrt() * noise


def fresh_scheduler(template, prediction_type: str):
    """A new scheduler of ``template``'s class and config with ``prediction_type`` ("epsilon" / "v_prediction")."""
    return type(template).from_config(template.config, prediction_type=prediction_type)


class AggregationSampler:
    """Tiled sampler; ``sample(model, z_lr, generator)`` returns the denoised scaled latent (module docstring)."""

    def __init__(
        self,
        scheduler,
        num_steps: int = 200,
        tile_size: int = 64,
        tile_overlap: int = 32,
        tile_batch_size: int = 1,
        start: StartMode = "lr",
        progress: bool = True,
        tile_weighting: TileWeighting = "centred",
        respacing: Respacing = "scheduler",
    ):
        if num_steps < 1:
            raise ValueError(f"number of sampling steps must be >= 1, got {num_steps}")
        if tile_size < UNET_DOWNSAMPLING or tile_size % UNET_DOWNSAMPLING:
            raise ValueError(f"latent tile size must be a positive multiple of {UNET_DOWNSAMPLING}, got {tile_size}")
        if not 0 <= tile_overlap < tile_size:
            raise ValueError(f"tile overlap must satisfy 0 <= overlap < tile size ({tile_size}), got {tile_overlap}")
        if tile_batch_size < 1:
            raise ValueError(f"tile batch size must be >= 1, got {tile_batch_size}")
        if start not in ("lr", "noise"):
            raise ValueError(f"unknown sampling start {start!r}; expected 'lr' or 'noise'")
        check_tile_weighting(tile_weighting)
        check_respacing(scheduler, respacing)
        self.scheduler = scheduler
        self.num_steps = num_steps
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.tile_batch_size = tile_batch_size
        self.start = start
        self.progress = progress
        self.tile_weighting = tile_weighting
        self.respacing = respacing

    def initial_latent(self, scheduler, z_lr: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``x_T`` for ``z_lr``'s shape: the LR latent noised to the first timestep, or pure noise."""
        noise = randn_tensor(z_lr.shape, generator=generator, device=z_lr.device, dtype=z_lr.dtype)
        if self.start == "noise":
            return noise * scheduler.init_noise_sigma
        first_timestep = int(scheduler.timesteps[0])
        return noised_latent(z_lr, noise, scheduler.alphas_cumprod[first_timestep])

    @torch.no_grad()
    def sample(self, model, z_lr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoise from ``z_lr [B, 4, h, w]`` (scaled LR latent, any h, w) to a latent of the same shape."""
        if z_lr.ndim != 4:
            raise ValueError(f"z_lr must be [B, C, h, w], got shape {tuple(z_lr.shape)}")
        height, width = z_lr.shape[-2:]
        padded_h, padded_w = max(height, self.tile_size), max(width, self.tile_size)
        z_padded = reflect_pad_to(z_lr, padded_h, padded_w)

        scheduler = fresh_scheduler(self.scheduler, model.prediction_type)
        set_sampling_timesteps(scheduler, self.num_steps, self.respacing, device=z_lr.device)
        x = self.initial_latent(scheduler, z_padded, generator)

        grid = TileGrid.build(padded_h, padded_w, self.tile_size, self.tile_overlap, weighting=self.tile_weighting)
        fuse = TileFusion(grid, z_padded, self.tile_batch_size)
        for timestep in tqdm(scheduler.timesteps, desc="sampling", leave=False, disable=not self.progress):
            model_input = scheduler.scale_model_input(x, timestep)
            output = fuse(model, model_input, timestep)
            x = scheduler.step(output, timestep, x, generator=generator).prev_sample
        return x[..., :height, :width]


class TileFusion:
    """``fuse(model, x, t) = sum_k w * model.predict(x[tile k], t, z_lr[tile k]) / sum_k w`` over ``grid``.

    Built once per image (weights in ``z_lr``'s dtype, LR tiles cut, input buffer allocated) and called every step.
    """

    def __init__(self, grid: TileGrid, z_lr: torch.Tensor, tile_batch_size: int):
        self.grid = grid
        self.batch = z_lr.shape[0]
        self.single_tile = len(grid) == 1
        device, dtype = z_lr.device, z_lr.dtype
        self.weights = grid.weights.to(device=device, dtype=dtype)
        self.inverse_weight_sum = grid.inverse_weight_sum.to(device=device, dtype=dtype)
        self.accumulator = torch.empty_like(z_lr)
        # Tile k of image b sits at row k * B + b of the flattened tile stack.
        indices = list(range(len(grid)))
        self.tile_groups = [indices[i : i + tile_batch_size] for i in range(0, len(indices), tile_batch_size)]
        lr_tiles = grid.crop(z_lr).flatten(0, 1)
        self.lr_tile_batches = [
            lr_tiles[group[0] * self.batch : (group[-1] + 1) * self.batch] for group in self.tile_groups
        ]
        self.input_buffer = torch.empty(
            (len(self.tile_groups[0]) * self.batch, *z_lr.shape[1:-2], grid.tile_h, grid.tile_w), device=device,
            dtype=dtype,
        )

    def __call__(self, model, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if self.single_tile:
            return model.predict(x, timestep, self.lr_tile_batches[0])
        self.accumulator.zero_()
        for group, lr_tiles in zip(self.tile_groups, self.lr_tile_batches):
            inputs = self.input_buffer[: len(group) * self.batch]
            for position, index in enumerate(group):
                inputs[position * self.batch : (position + 1) * self.batch].copy_(x[(..., *self.grid.slices[index])])
            outputs = model.predict(inputs, timestep, lr_tiles)
            for position, index in enumerate(group):
                region = self.accumulator[(..., *self.grid.slices[index])]
                region.addcmul_(outputs[position * self.batch : (position + 1) * self.batch], self.weights)
        return self.accumulator * self.inverse_weight_sum
