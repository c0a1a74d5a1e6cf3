"""Progressive aggregation sampling: latent tiles fused at every denoising step (docs/method.md#sampling, docs/method.md#aggregation).

One image (or a batch of same-size images) is denoised on its full latent ``x``; at every step ``t`` (original
0..999 units)::

    out_k = predict(x[tile k], t, z_lr[tile k])                # encoder on the LR-latent tile, as trained
    out   = sum_k w * out_k / sum_k w                           # w: Gaussian tile weight (sr.ops.tiling)
    x     = scheduler.step(out, t, x)                           # ONE step on the full latent, one noise draw

Start (``start="lr"``, the any-size scripts' default) with the original 1000-step ``alpha_bar``, through the
scheduler's own forward process (``scheduler.add_noise``)::

    x_T = sqrt(alpha_bar[t_0]) * z_lr + sqrt(1 - alpha_bar[t_0]) * eps,    t_0 = first sampling timestep (999)

or pure noise ``x_T = init_noise_sigma * eps`` (``start="noise"``); or a given ``x_T``.

The scheduler is any diffusers scheduler with ``set_timesteps`` / ``step`` (DDPM respaced = the released recipe,
DDIM, DPM-Solver++); ``fresh_scheduler`` makes the per-call copy with the model's ``prediction_type``, so no state
is kept between images; ``respacing`` picks its timesteps (``official``: the released code's, ``scheduler``: its own
``timestep_spacing``; sr.sampling.respacing) and ``tile_weighting`` the Gaussian (``official`` or ``centred``;
sr.ops.tiling). ``sr.pipelines.StableSRPipeline`` is the caller: it validates the settings and owns the model; this
module is the math.

Sizes: tiles are ``tile_size`` x ``tile_size`` latent pixels (a multiple of 8, the UNet's downsampling factor);
a latent side shorter than one tile is reflect-padded up to the tile and the result cropped back, because the model
was trained on (and behaves best at) full tiles. The tile grid, its weights in the latent's dtype and the LR-latent
tiles are built once per call; each step only copies the current tiles into a preallocated batch and accumulates
in place. When one tile covers the whole latent the model output is used as is (bit-identical to untiled sampling).

Randomness: every draw (start noise, per-step noise) comes from the caller's ``torch.Generator``.
"""

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from diffusers.utils.torch_utils import randn_tensor

from sr.ops.tiling import TileGrid, TileWeighting
from sr.sampling.padding import reflect_pad_to

__all__ = ["Predict", "TileFusion", "denoise", "fresh_scheduler", "initial_latent", "padded_size"]

StartMode = Literal["lr", "noise"]
START_MODES = ("lr", "noise")
# predict(x_t tiles [N, C, h, w], t, LR-latent tiles [N, C, h, w]) -> model output (eps or v) [N, C, h, w]
Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fresh_scheduler(template, prediction_type: str):
    """A new scheduler of ``template``'s class and config with ``prediction_type`` ("epsilon" / "v_prediction")."""
    return type(template).from_config(template.config, prediction_type=prediction_type)


def initial_latent(scheduler, z_lr: torch.Tensor, start: StartMode, generator: torch.Generator | None) -> torch.Tensor:
    """``x_T`` for ``z_lr``'s shape (timesteps set): ``add_noise(z_lr, eps, t_0)`` (``lr``) or
    ``init_noise_sigma * eps`` (``noise``), ``eps ~ N(0, I)`` from ``generator``."""
    noise = randn_tensor(z_lr.shape, generator=generator, device=z_lr.device, dtype=z_lr.dtype)
    if start == "noise":
        return noise * scheduler.init_noise_sigma
    if start != "lr":
        raise ValueError(f"unknown sampling start {start!r}; expected one of {START_MODES}")
    return scheduler.add_noise(z_lr, noise, scheduler.timesteps[:1])


@torch.no_grad()
def denoise(
    predict: Predict,
    scheduler,
    z_lr: torch.Tensor,
    tile_size: int,
    tile_overlap: int,
    tile_batch_size: int,
    start: StartMode = "lr",
    generator: torch.Generator | None = None,
    x_t: torch.Tensor | None = None,
    progress: Callable[[Iterable], Iterable] = iter,
    tile_weighting: TileWeighting = "centred",
    step_end: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    interrupted: Callable[[], bool] = lambda: False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Progressive aggregation over ``scheduler.timesteps`` (set by the caller, e.g. with
    ``sr.sampling.respacing.set_sampling_timesteps``); returns ``(x_0, x_T)``.

    ``z_lr [B, C, h, w]``: the diffusion-space LR latent, any ``h, w``; sides shorter than ``tile_size`` are
    reflect-padded to it, and ``x_0`` is cropped back to ``h, w``. ``x_T`` is ``x_t`` when given (shape of the padded
    latent, ``padded_size``), else ``initial_latent(scheduler, padded z_lr, start, generator)``. Tiles are blended
    with the ``tile_weighting`` Gaussian (``centred`` or ``official``, sr.ops.tiling). ``progress`` wraps the
    timestep iterable (e.g. a progress bar). ``step_end(i, t, x)``, after step ``i``, returns the ``x`` sampling goes
    on from (the pipeline's ``callback_on_step_end``); once ``interrupted()`` is true, the remaining steps are skipped and
    the current ``x`` returned.
    """
    if z_lr.ndim != 4:
        raise ValueError(f"z_lr must be [B, C, h, w], got shape {tuple(z_lr.shape)}")
    height, width = z_lr.shape[-2:]
    padded = padded_size(height, width, tile_size)
    z_padded = reflect_pad_to(z_lr, *padded)
    if x_t is None:
        x_t = initial_latent(scheduler, z_padded, start, generator)
    elif tuple(x_t.shape) != tuple(z_padded.shape):
        raise ValueError(f"latents (x_T) must have shape {tuple(z_padded.shape)}, got {tuple(x_t.shape)}")
    grid = TileGrid.build(*padded, tile_size, tile_overlap, weighting=tile_weighting)
    fuse = TileFusion(grid, z_padded, tile_batch_size)
    x = x_t.to(device=z_lr.device, dtype=z_lr.dtype)
    for index, timestep in enumerate(progress(scheduler.timesteps)):
        if interrupted():
            break
        model_input = scheduler.scale_model_input(x, timestep)
        output = fuse(predict, model_input, timestep)
        x = scheduler.step(output, timestep, x, generator=generator).prev_sample
        if step_end is not None:
            x = step_end(index, timestep, x)
    return x[..., :height, :width], x_t


def padded_size(height: int, width: int, tile_size: int) -> tuple[int, int]:
    """The latent size sampling runs at: each side raised to at least one tile."""
    return max(height, tile_size), max(width, tile_size)


class TileFusion:
    """``fuse(predict, x, t) = sum_k w * predict(x[tile k], t, z_lr[tile k]) / sum_k w`` over ``grid``.

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

    def __call__(self, predict: Predict, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if self.single_tile:
            return predict(x, timestep, self.lr_tile_batches[0])
        self.accumulator.zero_()
        for group, lr_tiles in zip(self.tile_groups, self.lr_tile_batches):
            inputs = self.input_buffer[: len(group) * self.batch]
            for position, index in enumerate(group):
                inputs[position * self.batch : (position + 1) * self.batch].copy_(x[(..., *self.grid.slices[index])])
            outputs = predict(inputs, timestep, lr_tiles)
            for position, index in enumerate(group):
                region = self.accumulator[(..., *self.grid.slices[index])]
                region.addcmul_(outputs[position * self.batch : (position + 1) * self.batch], self.weights)
        return self.accumulator * self.inverse_weight_sum
