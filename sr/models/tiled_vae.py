"""Tiled VAE encode/decode (with CFW features and fusion) whose accelerator memory is bounded by the tile size.

Drop-in, tile-by-tile versions of ``sr.models.cfw.encoder_features`` and ``sr.models.cfw.decode_latent`` for images
too large to run in one pass, in two modes (``mode=``; default ``"exact"``). When one tile covers the whole input,
both run the untiled function unchanged, so the result is identical to it.

``"exact"`` (``sr.models.layerwise_vae``): the network runs layer by layer over whole activation maps parked in
host memory (``park_device``), each layer's compute tiled with a halo equal to its kernel radius (the receptive-field
radius for the norm-free CFW RRDB chain); every GroupNorm normalises with the whole map's statistics, accumulated over
all tiles as they are produced; the mid-block attention attends over the whole latent (its keys and values stay on
the accelerator: ``2 N C`` values, 512 MiB in fp16 for a 4096^2 SD image). The result equals the untiled pass up to
float rounding (tests: <= 1e-5 on the random tiny VAE; ``benchmarks/tiled_vae.py`` on a trained one). The price:
every map crosses the host link about twice, and host memory holds up to three full-resolution maps.

``"estimate"`` (fast, approximate): each tile runs the whole network on its own, which makes three errors, measured
per source by ``benchmarks/tiled_vae.py``:

1. **Tile grid with halo.** The input is covered by the docs/method.md#aggregation grid (``sr.ops.tiling``): ``tile`` x ``tile``
   tiles with ``overlap``. Each tile is run with ``halo`` extra context on every side (clipped at the image border,
   where the network's own zero padding then matches the full pass); the halo is thrown away and the tile cores are
   blended with the Gaussian tile weight, ``out = sum_k w_k out_k / sum_k w_k``, at every output resolution
   (moments at 1/8, CFW features f1 at 1/2 and f2 at 1/4 for the encoder; pixels at 8x for the decoder). A halo
   shorter than the network's receptive field (tens of latent pixels) leaves a context error.

2. **Shared GroupNorm statistics.** Every GroupNorm normalises every tile with the *same* per-(sample, group)
   statistics (per-tile statistics would give each tile its own brightness/contrast: block seams that no blending
   hides), estimated once per image by a statistics pass: the whole network run on the input resized
   (``nearest-exact``, then per-channel mean/std re-matched to the full input with AdaIN) to at most ``stats_size``
   on its long side. Inputs no larger than ``stats_size`` (the defaults: 1024 px to encode, 128 latent px to decode)
   get exact statistics; larger ones an estimate (one global shift shared by all tiles, not a seam).

3. **Mid-block attention.** The VAE mid-block self-attention is global over the latent; per tile it only sees the
   tile plus halo.

Units: ``tiled_encode`` works in pixels, ``tiled_decode`` in latent pixels. In estimate mode ``tile``, ``overlap``,
``halo`` and the image sides must be multiples of the VAE's downsampling factor (8 for SD).
"""

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from fractions import Fraction
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sr.models.cfw import CFW, decode_latent, encoder_features
from sr.models.layerwise_vae import LayerwiseRunner, group_normaliser
from sr.ops.color import adain_color_fix
from sr.ops.tiling import TileGrid

TensorAtScale = tuple[torch.Tensor, Fraction]
TiledVAEMode = Literal["exact", "estimate"]
TILED_VAE_MODES: tuple[TiledVAEMode, ...] = ("exact", "estimate")
DEFAULT_MODE: TiledVAEMode = "exact"


class GroupNormStatistics:
    """Per-call ``(mean, var)`` ``[B, groups]`` of every ``nn.GroupNorm`` in some modules, recorded then replayed.

    ``recording()`` stores the biased mean/variance of each GroupNorm's input (what ``F.group_norm`` uses);
    ``replaying()`` makes each GroupNorm compute ``(x - mean) / sqrt(var + eps) * weight + bias`` with the
    stored values instead of its input's own statistics. Call order is kept per module, so a GroupNorm used more
    than once per forward pass gets its own statistics for each use; ``next_pass()`` rewinds that order.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        self.norms = [m for module in modules for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self.values: dict[nn.GroupNorm, list[tuple[torch.Tensor, torch.Tensor]]] = {norm: [] for norm in self.norms}
        self.cursor: dict[nn.GroupNorm, int] = {}

    @staticmethod
    def _grouped(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        return x.float().reshape(x.shape[0], norm.num_groups, -1)

    @contextmanager
    def recording(self):
        def record(norm, args):
            var, mean = torch.var_mean(self._grouped(norm, args[0]), dim=2, unbiased=False)
            self.values[norm].append((mean, var))

        handles = [norm.register_forward_pre_hook(record) for norm in self.norms]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def next_pass(self) -> None:
        self.cursor = {norm: 0 for norm in self.norms}

    def _shared_forward(self, norm: nn.GroupNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            index = self.cursor.get(norm, 0)
            if index >= len(self.values[norm]):
                raise RuntimeError("a GroupNorm ran more often in a tile than in the statistics pass")
            self.cursor[norm] = index + 1
            mean, var = self.values[norm][index]
            if mean.shape[0] != x.shape[0]:
                raise RuntimeError(f"statistics were recorded for batch {mean.shape[0]}, tile has batch {x.shape[0]}")
            return group_normaliser(norm, mean, var)(x)

        return forward

    @contextmanager
    def replaying(self):
        for norm in self.norms:
            norm.forward = self._shared_forward(norm)
        try:
            self.next_pass()
            yield self
        finally:
            for norm in self.norms:
                del norm.forward


def _statistics_input(tensor: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
    """``tensor`` resized to ``target_hw`` (nearest-exact) with its per-channel mean/std restored (AdaIN)."""
    if tuple(tensor.shape[-2:]) == target_hw:
        return tensor
    resized = F.interpolate(tensor.float(), size=target_hw, mode="nearest-exact")
    return adain_color_fix(resized, tensor.float()).to(tensor.dtype)


def _as_pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _scaled(value: int, scale: Fraction, what: str) -> int:
    scaled = value * scale
    if scaled.denominator != 1:
        raise ValueError(f"{what} {value} is not a multiple of the VAE's downsampling factor {1 / scale}")
    return int(scaled)


def estimate_statistics(
    function: Callable[..., object],
    inputs: Sequence[TensorAtScale],
    output_scales: Sequence[Fraction],
    stats_size: int,
    statistics_modules: Sequence[nn.Module],
    compute_device: torch.device,
) -> GroupNormStatistics:
    """The estimate mode's statistics pass: ``function`` run once on the ``inputs`` resized (``_statistics_input``)
    to a long side of at most ``stats_size`` (a multiple of every scale's denominator), recording every GroupNorm of
    ``statistics_modules``. Inputs no larger than ``stats_size`` give the exact statistics."""
    height, width = inputs[0][0].shape[-2:]
    statistics = GroupNormStatistics(statistics_modules)
    reduction = min(Fraction(1), Fraction(stats_size, max(height, width)))
    multiple = max(scale.denominator for scale in [scale for _, scale in inputs] + list(output_scales))
    stats_hw = tuple(max(multiple, round(side * reduction / multiple) * multiple) for side in (height, width))
    stats_inputs = [
        _statistics_input(tensor, (int(stats_hw[0] * scale), int(stats_hw[1] * scale))).to(compute_device)
        for tensor, scale in inputs
    ]
    with statistics.recording():
        function(*stats_inputs)
    return statistics


def _tiled_apply(
    function: Callable[..., Sequence[torch.Tensor]],
    inputs: Sequence[TensorAtScale],
    output_scales: Sequence[Fraction],
    tile: int | tuple[int, int],
    overlap: int | tuple[int, int],
    halo: int,
    stats_size: int,
    statistics_modules: Sequence[nn.Module],
    compute_device: torch.device,
    output_device: torch.device,
    progress: bool,
) -> list[torch.Tensor]:
    """Run ``function(*input tiles)`` tile by tile with shared GroupNorm statistics; blend every output.

    ``inputs[0]`` defines the grid (scale 1); the others are aligned with it at ``scale`` times its resolution.
    Output ``i`` has ``output_scales[i]`` times the grid's resolution.
    """
    height, width = inputs[0][0].shape[-2:]
    tile_h, tile_w = (min(t, side) for t, side in zip(_as_pair(tile), (height, width)))
    # An axis one tile covers has no overlap to validate against the VAE grid.
    overlap_h, overlap_w = (0 if t == side else o for o, t, side in zip(_as_pair(overlap), (tile_h, tile_w),
                                                                         (height, width)))
    if halo < 0:
        raise ValueError(f"tile halo must be >= 0, got {halo}")
    grid = TileGrid.build(height, width, (tile_h, tile_w), (overlap_h, overlap_w))
    if len(grid) == 1:
        outputs = function(*(tensor.to(compute_device) for tensor, _ in inputs))
        return [output.to(output_device) for output in outputs]

    scales = [scale for _, scale in inputs] + list(output_scales)
    for scale in scales:
        for value, what in ((height, "image height"), (width, "image width"), (tile_h, "tile height"),
                            (tile_w, "tile width"), (overlap_h, "tile overlap"), (overlap_w, "tile overlap"),
                            (halo, "tile halo")):
            _scaled(value, scale, what)
    output_grids = [
        TileGrid.build(
            _scaled(height, scale, "image height"), _scaled(width, scale, "image width"),
            (_scaled(tile_h, scale, "tile"), _scaled(tile_w, scale, "tile")),
            (_scaled(overlap_h, scale, "overlap"), _scaled(overlap_w, scale, "overlap")),
        )
        for scale in output_scales
    ]

    statistics = estimate_statistics(function, inputs, output_scales, stats_size, statistics_modules, compute_device)

    totals: list[torch.Tensor | None] = [None] * len(output_scales)
    with statistics.replaying():
        for index, (rows, cols) in enumerate(tqdm(grid.slices, desc="tiled VAE", leave=False, disable=not progress)):
            top, bottom = max(rows.start - halo, 0), min(rows.stop + halo, height)
            left, right = max(cols.start - halo, 0), min(cols.stop + halo, width)
            tiles = [
                tensor[..., int(top * scale) : int(bottom * scale), int(left * scale) : int(right * scale)].to(
                    compute_device
                )
                for tensor, scale in inputs
            ]
            statistics.next_pass()
            outputs = function(*tiles)
            for position, (output, scale, output_grid) in enumerate(zip(outputs, output_scales, output_grids)):
                core_rows, core_cols = output_grid.slices[index]
                core = output[
                    ...,
                    core_rows.start - int(top * scale) : core_rows.stop - int(top * scale),
                    core_cols.start - int(left * scale) : core_cols.stop - int(left * scale),
                ]
                if totals[position] is None:
                    accumulate_dtype = torch.promote_types(output.dtype, torch.float32)
                    totals[position] = output_grid.new_accumulator(tuple(output.shape[:-2]), output_device,
                                                                   accumulate_dtype)
                output_grid.add_tile(totals[position], index, core)
            dtypes = [output.dtype for output in outputs]
    return [grid_.normalise(total).to(dtype) for grid_, total, dtype in zip(output_grids, totals, dtypes)]


def _compute_device(vae: nn.Module) -> torch.device:
    return next(vae.parameters()).device


def _downsampling_factor(vae: nn.Module) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _check_mode(mode: str) -> None:
    if mode not in TILED_VAE_MODES:
        raise ValueError(f"unknown tiled VAE mode {mode!r}; expected one of {', '.join(TILED_VAE_MODES)}")


@torch.no_grad()
def _run_exact(
    run: Callable[[LayerwiseRunner], Sequence[torch.Tensor] | torch.Tensor],
    modules: Sequence[nn.Module],
    base_hw: tuple[int, int],
    tile: int | tuple[int, int],
    compute_device: torch.device,
    park_device: torch.device | str,
    progress: bool,
):
    groups = {m.num_groups for module in modules for m in module.modules() if isinstance(m, nn.GroupNorm)}
    tile_hw = tuple(min(t, side) for t, side in zip(_as_pair(tile), base_hw))
    runner = LayerwiseRunner(compute_device, torch.device(park_device), tile_hw, base_hw, groups, progress)
    try:
        return run(runner)
    finally:
        runner.close()


def tiled_encode(
    vae: nn.Module,
    x: torch.Tensor,
    tile: int | tuple[int, int] = 512,
    overlap: int | tuple[int, int] = 128,
    halo: int = 32,
    stats_size: int = 1024,
    output_device: torch.device | str | None = None,
    progress: bool = True,
    mode: TiledVAEMode = DEFAULT_MODE,
    park_device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Tiled ``encoder_features``: ``x [B, 3, H, W]`` in [-1, 1] -> (posterior moments ``[B, 2*4, H/8, W/8]``,
    CFW features ``[f1 at H/2, f2 at H/4]``), as ``sr.models.cfw.encoder_features`` returns them.

    Pixel units. ``mode="exact"`` (default): layer by layer over maps parked on ``park_device``, tiles of ``tile``
    at the input resolution; equals the untiled pass up to float rounding (``overlap``, ``halo``, ``stats_size``
    unused). ``mode="estimate"``: overlapping ``tile``s with ``overlap`` and ``halo`` (multiples of 8, as ``H`` and
    ``W``) and GroupNorm statistics from a pass of long side ``stats_size`` (module docstring). Results go to
    ``output_device`` (default: ``x``'s device; use the CPU to keep image-sized features off the accelerator).
    """
    if x.ndim != 4:
        raise ValueError(f"tiled_encode expects x of shape [B, C, H, W], got {tuple(x.shape)}")
    _check_mode(mode)
    factor = _downsampling_factor(vae)
    output_device = torch.device(output_device) if output_device is not None else x.device
    compute_device = _compute_device(vae)
    height, width = x.shape[-2:]
    if mode == "exact" and any(t < side for t, side in zip(_as_pair(tile), (height, width))):
        moments, features = _run_exact(
            lambda runner: runner.encode(vae, x), [vae.encoder], (height, width), tile, compute_device, park_device,
            progress,
        )
        return moments.to(output_device), [feature.to(output_device) for feature in features]

    def encode(tile_x: torch.Tensor) -> list[torch.Tensor]:
        moments, (f1, f2) = encoder_features(vae, tile_x)
        return [moments, f1, f2]

    moments, f1, f2 = _tiled_apply(
        encode, [(x, Fraction(1))], [Fraction(1, factor), Fraction(1, 2), Fraction(1, 4)],
        tile, overlap, halo, stats_size, [vae.encoder], compute_device, output_device, progress,
    )
    return moments, [f1, f2]


def tiled_decode(
    vae: nn.Module,
    z: torch.Tensor,
    enc_feats: list[torch.Tensor] | None,
    w: float,
    tile: int | tuple[int, int] = 64,
    overlap: int | tuple[int, int] = 16,
    halo: int = 8,
    stats_size: int = 128,
    cfw: CFW | None = None,
    output_device: torch.device | str | None = None,
    progress: bool = True,
    mode: TiledVAEMode = DEFAULT_MODE,
    park_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Tiled ``decode_latent``: unscaled latent ``z [B, 4, h, w]`` -> image ``[B, 3, 8h, 8w]``, fusing the CFW
    ``enc_feats = [f1 at 4h, f2 at 2h]`` cropped to each tile with strength ``w`` (no ``cfw``: the plain decoder,
    features unused; ``sr.models.autoencoder.CFWAutoencoder`` passes None where ``w == 0``).

    Latent units for ``tile`` and, in ``mode="estimate"``, ``overlap``, ``halo`` and ``stats_size`` (long side of
    the GroupNorm statistics pass); ``mode="exact"`` (default) as in ``tiled_encode``.
    """
    if z.ndim != 4:
        raise ValueError(f"tiled_decode expects z of shape [B, C, h, w], got {tuple(z.shape)}")
    _check_mode(mode)
    factor = _downsampling_factor(vae)
    fused = cfw is not None
    inputs: list[TensorAtScale] = [(z, Fraction(1))]
    if fused:
        if enc_feats is None or len(enc_feats) != 2:
            raise ValueError("CFW decoding needs enc_feats = [f1, f2] of the LR image")
        expected = [(z.shape[-2] * factor // 2, z.shape[-1] * factor // 2),
                    (z.shape[-2] * factor // 4, z.shape[-1] * factor // 4)]
        for name, feature, size in zip(("f1", "f2"), enc_feats, expected):
            if tuple(feature.shape[-2:]) != size:
                raise ValueError(f"CFW feature {name} has size {tuple(feature.shape[-2:])}, expected {size}")
        inputs += [(enc_feats[0], Fraction(factor, 2)), (enc_feats[1], Fraction(factor, 4))]
    output_device = torch.device(output_device) if output_device is not None else z.device
    compute_device = _compute_device(vae)
    modules = [vae.decoder] + ([cfw] if fused else [])
    height, width = z.shape[-2:]
    if mode == "exact" and any(t < side for t, side in zip(_as_pair(tile), (height, width))):
        image = _run_exact(
            lambda runner: runner.decode(vae, z, cfw, enc_feats, w),
            modules, (height, width), tile, compute_device, park_device, progress,
        )
        return image.to(output_device)

    def decode(tile_z: torch.Tensor, *tile_feats: torch.Tensor) -> list[torch.Tensor]:
        return [decode_latent(vae, cfw, tile_z, list(tile_feats) if fused else None, w)]

    (image,) = _tiled_apply(
        decode, inputs, [Fraction(factor)], tile, overlap, halo, stats_size, modules, compute_device, output_device,
        progress,
    )
    return image
