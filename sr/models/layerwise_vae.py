"""Exact tiled VAE: the diffusers ``AutoencoderKL`` encoder/decoder (and the CFW fusion blocks) run layer by layer
over whole activation maps parked in host memory, each layer's compute tiled, so accelerator memory is bounded by the
tile (plus the mid-block attention's keys and values) and the result equals the untiled pass up to float rounding.

Why layer by layer: per-tile passes of the whole network cannot be exact. Every GroupNorm normalises with statistics
of the *whole* activation map, the mid-block self-attention mixes every latent pixel with every other, and a chain of
~40 convolutions has a receptive field far wider than any affordable halo. Here each of those is handled where it
occurs:

- **Convolutions** (``k x k``, stride ``s``, top/left padding ``p``): output rows ``[a, b)`` read input rows
  ``[a s - p, (b - 1) s - p + k)``, i.e. a halo of exactly the kernel radius; rows outside the map are zeros, as the
  conv's own zero padding (and diffusers' extra ``(0, 1, 0, 1)`` pad before a stride-2 downsample) would give. The
  nearest 2x upsample before a decoder conv is applied to the fetched window (it commutes with cropping).
- **GroupNorm**: the statistics of every map are accumulated while its tiles are produced: per tile (count ``n``,
  mean ``m``, ``M2 = sum (x - m)^2``) per (sample, group), merged in float64 (Chan et al.)::

      n = n_a + n_b,   delta = m_b - m_a,   m = m_a + delta n_b / n,   M2 = M2_a + M2_b + delta^2 n_a n_b / n

  and ``var = M2 / n`` (biased, as ``F.group_norm``). The normalisation ``(x - m) / sqrt(var + eps) * gamma + beta``
  (then the activation) is applied to each window fetched by the next conv, before its zero padding.
- **Mid-block self-attention** (at 1/8 resolution): the keys and values of the whole latent are computed tile by tile
  and kept on the accelerator (``2 N C`` values for ``N`` latent pixels and ``C`` channels: 512 MiB in fp16 for the SD
  VAE's 512^2 latent of a 4096^2 image); each tile's queries attend to all of them with
  ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where available, so no ``N x N`` matrix).
- **Norm-free blocks** (the CFW fusion's RRDB chain) run as one stage with a halo equal to their receptive-field
  radius, the sum of their convolutions' radii; a window clipped at the image border meets the blocks' own zero
  padding exactly as the full pass does.

Host memory holds up to three whole maps at once (a residual block's input, hidden map and output); the largest are
the decoder's full-resolution maps (``128 x H x W`` for SD: 8 GiB each at 4096^2 in fp32, half in fp16). Each map is
read from the host about twice (statistics are gathered as tiles are written). Inference only (no autograd, dropout
off). Supported: the ``AutoencoderKL`` blocks (``DownEncoderBlock2D``, ``UpDecoderBlock2D``, ``UNetMidBlock2D`` with
or without attention, group-norm decoder) and ``sr.models.cfw.CFW``; anything else raises a clear error.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sr.models.cfw import CFW, FUSION_SITES, FusionBlock, FusionResBlock, fuse

Pointwise = Callable[[torch.Tensor], torch.Tensor]
TileSlices = tuple[slice, slice]


class GroupMoments:
    """Per-(sample, group) count, mean and ``M2`` of a map, merged tile by tile in float64 (module docstring)."""

    def __init__(self, groups: int):
        self.groups = groups
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, tile: torch.Tensor) -> None:
        grouped = tile.detach().float().reshape(tile.shape[0], self.groups, -1)
        count = grouped.shape[-1]
        var, mean = torch.var_mean(grouped, dim=-1, unbiased=False)
        mean, m2 = mean.double().cpu(), var.double().cpu() * count
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, var)`` ``[B, groups]`` float64, ``var`` biased."""
        if self.mean is None:
            raise RuntimeError("no tile was added to these group statistics")
        return self.mean, self.m2 / self.count


def group_normaliser(
    norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor, activation: nn.Module | None = None
) -> Pointwise:
    """``activation((x - mean) / sqrt(var + eps) * weight + bias)`` per (sample, group), computed in float32."""
    if not isinstance(norm, nn.GroupNorm):
        raise TypeError(f"exact tiled VAE supports nn.GroupNorm normalisation only, got {type(norm).__name__}")
    inverse_std = torch.rsqrt(var + norm.eps)

    def apply(x: torch.Tensor) -> torch.Tensor:
        grouped = x.float().reshape(x.shape[0], norm.num_groups, -1)
        shift = mean.to(device=x.device, dtype=torch.float32)[..., None]
        scale = inverse_std.to(device=x.device, dtype=torch.float32)[..., None]
        normalised = ((grouped - shift) * scale).reshape(x.shape)
        if norm.affine:
            broadcast = (1, -1) + (1,) * (x.ndim - 2)
            normalised = normalised * norm.weight.float().view(broadcast) + norm.bias.float().view(broadcast)
        normalised = normalised.to(x.dtype)
        return activation(normalised) if activation is not None else normalised

    return apply


@dataclass
class ActivationMap:
    """A whole activation map ``[B, C, H, W]`` parked on the host, with its group statistics once known."""

    tensor: torch.Tensor
    moments: dict[int, GroupMoments] = field(default_factory=dict)

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape


def receptive_radius(module: nn.Module) -> int:
    """Receptive-field radius of a norm-free, stride-1 conv block: the sum of its convolutions' radii (an upper
    bound for any wiring of them, exact for a chain such as the RRDB's dense convolutions)."""
    radius = 0
    for layer in module.modules():
        if isinstance(layer, (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm)) or "Attention" in type(layer).__name__:
            raise TypeError(f"{type(layer).__name__} in {type(module).__name__} needs whole-map statistics; "
                            "it cannot run as one halo-tiled stage")
        if isinstance(layer, nn.Conv2d):
            expected = tuple(d * (k - 1) // 2 for d, k in zip(layer.dilation, layer.kernel_size))
            if layer.stride != (1, 1) or layer.padding != expected or layer.padding_mode != "zeros":
                raise TypeError(f"conv {layer} is not a stride-1 'same' zero-padded conv")
            radius += max(expected)
    return radius


class LayerwiseRunner:
    """Runs VAE (and CFW) layers over host-parked maps, tile by tile on ``compute_device`` (module docstring).

    ``tile``: tile side ``(h, w)`` at the resolution of ``base_hw`` (the network input); a map of another resolution
    gets the tile scaled with it, so every tile covers the same part of the image.
    """

    #: the attention's keys/values cover the whole map and are computed once (an ablation that restricts them
    #: per query tile sets this False and overrides ``attention_context``)
    global_attention = True

    def __init__(
        self,
        compute_device: torch.device,
        park_device: torch.device,
        tile: tuple[int, int],
        base_hw: tuple[int, int],
        groups: set[int],
        progress: bool = False,
    ):
        self.compute_device = compute_device
        self.park_device = park_device
        self.tile = tile
        self.base_hw = base_hw
        self.groups = groups
        self._progress = tqdm(desc="tiled VAE (exact)", unit="layer", leave=False, disable=not progress)

    def close(self) -> None:
        self._progress.close()

    # --- tiles and windows -------------------------------------------------------------------------------------

    def blocks(self, height: int, width: int) -> Iterator[TileSlices]:
        """Row-major partition of a ``height x width`` map into tiles (no overlap: every output is exact)."""
        tile_h = max(1, round(self.tile[0] * height / self.base_hw[0]))
        tile_w = max(1, round(self.tile[1] * width / self.base_hw[1]))
        for top in range(0, height, tile_h):
            for left in range(0, width, tile_w):
                yield slice(top, min(top + tile_h, height)), slice(left, min(left + tile_w, width))

    def fetch(self, x: ActivationMap, rows: slice, cols: slice) -> torch.Tensor:
        """``x[..., rows, cols]`` on the compute device (``rows``/``cols`` inside the map)."""
        return x.tensor[..., rows, cols].to(self.compute_device)

    def window(
        self, x: ActivationMap, rows: slice, cols: slice, pointwise: Pointwise | None = None, upsample: int = 1
    ) -> torch.Tensor:
        """Rows/cols (may reach outside the map) of ``pointwise(x)`` nearest-upsampled ``upsample`` times, on the
        compute device, zero where they fall outside the map (the zero padding of the conv that reads them)."""
        height, width = x.shape[-2] * upsample, x.shape[-1] * upsample
        top, bottom = max(rows.start, 0), min(rows.stop, height)
        left, right = max(cols.start, 0), min(cols.stop, width)
        source = self.fetch(x, slice(top // upsample, -(-bottom // upsample)),
                            slice(left // upsample, -(-right // upsample)))
        if pointwise is not None:
            source = pointwise(source)
        if upsample > 1:
            source = F.interpolate(source, scale_factor=upsample, mode="nearest")
            row_offset, col_offset = top - top // upsample * upsample, left - left // upsample * upsample
            source = source[..., row_offset : row_offset + bottom - top, col_offset : col_offset + right - left]
        return F.pad(source, (left - cols.start, cols.stop - right, top - rows.start, rows.stop - bottom))

    def stage(
        self, shape: tuple[int, int, int, int], compute: Callable[[slice, slice], torch.Tensor]
    ) -> ActivationMap:
        """A new map of ``shape`` filled tile by tile with ``compute(rows, cols)``; its group statistics are
        gathered on the way."""
        tensor = None
        moments = {groups: GroupMoments(groups) for groups in self.groups if shape[1] % groups == 0}
        for rows, cols in self.blocks(*shape[-2:]):
            tile = compute(rows, cols)
            if tensor is None:
                # Pageable, not pinned: pinned blocks are rounded up to powers of two (16 GiB for an 8.6 GiB map).
                tensor = torch.empty(shape, dtype=tile.dtype, device=self.park_device)
            for accumulator in moments.values():
                accumulator.add(tile)
            tensor[..., rows, cols].copy_(tile)
        self._progress.update()
        return ActivationMap(tensor, moments)

    # --- layers ------------------------------------------------------------------------------------------------

    def normaliser(self, x: ActivationMap, norm: nn.GroupNorm, activation: nn.Module | None = None) -> Pointwise:
        """The GroupNorm ``norm`` (then ``activation``) with the whole map's statistics."""
        if not isinstance(norm, nn.GroupNorm):
            raise TypeError(f"exact tiled VAE supports nn.GroupNorm normalisation only, got {type(norm).__name__}")
        if norm.num_groups not in x.moments:
            accumulator = GroupMoments(norm.num_groups)
            for rows, cols in self.blocks(*x.shape[-2:]):
                accumulator.add(self.fetch(x, rows, cols))
            x.moments[norm.num_groups] = accumulator
        return group_normaliser(norm, *x.moments[norm.num_groups].mean_var(), activation)

    def conv_tile(
        self,
        x: ActivationMap,
        conv: nn.Conv2d,
        rows: slice,
        cols: slice,
        pointwise: Pointwise | None = None,
        upsample: int = 1,
        pad_top_left: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Output rows/cols of ``conv(zero_pad(upsample(pointwise(x))))``, reading only the window they need."""
        if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise TypeError(f"exact tiled VAE supports zero-padded, undilated convs with integer padding, got {conv}")
        (k_h, k_w), (s_h, s_w) = conv.kernel_size, conv.stride
        p_h, p_w = pad_top_left if pad_top_left is not None else conv.padding
        window = self.window(
            x,
            slice(rows.start * s_h - p_h, (rows.stop - 1) * s_h - p_h + k_h),
            slice(cols.start * s_w - p_w, (cols.stop - 1) * s_w - p_w + k_w),
            pointwise,
            upsample,
        )
        return F.conv2d(window, conv.weight, conv.bias, stride=conv.stride, groups=conv.groups)

    def conv(
        self,
        x: ActivationMap,
        conv: nn.Conv2d,
        pointwise: Pointwise | None = None,
        upsample: int = 1,
        pads: tuple[int, int, int, int] | None = None,
        epilogue: Callable[[torch.Tensor, slice, slice], torch.Tensor] | None = None,
    ) -> ActivationMap:
        """``epilogue(conv(pad(upsample(pointwise(x)))))``, ``pads = (top, bottom, left, right)`` (default: the
        conv's own padding); ``epilogue(out_tile, rows, cols)`` adds e.g. a residual."""
        (k_h, k_w), (s_h, s_w) = conv.kernel_size, conv.stride
        top, bottom, left, right = pads if pads is not None else (conv.padding[0],) * 2 + (conv.padding[1],) * 2
        height = (x.shape[-2] * upsample + top + bottom - k_h) // s_h + 1
        width = (x.shape[-1] * upsample + left + right - k_w) // s_w + 1

        def compute(rows: slice, cols: slice) -> torch.Tensor:
            out = self.conv_tile(x, conv, rows, cols, pointwise, upsample, (top, left))
            return epilogue(out, rows, cols) if epilogue is not None else out

        return self.stage((x.shape[0], conv.out_channels, height, width), compute)

    def residual_block(
        self,
        x: ActivationMap,
        norm1: nn.GroupNorm,
        conv1: nn.Conv2d,
        norm2: nn.GroupNorm,
        conv2: nn.Conv2d,
        activation: nn.Module,
        shortcut: nn.Conv2d | None,
        combine: Callable[[torch.Tensor, slice, slice], torch.Tensor],
    ) -> ActivationMap:
        """``combine(skip(x) + conv2(act(norm2(conv1(act(norm1(x)))))))`` with ``skip`` = ``shortcut`` or identity."""
        hidden = self.conv(x, conv1, self.normaliser(x, norm1, activation))

        def epilogue(out: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
            skip = self.fetch(x, rows, cols) if shortcut is None else self.conv_tile(x, shortcut, rows, cols)
            return combine(skip + out, rows, cols)

        return self.conv(hidden, conv2, self.normaliser(hidden, norm2, activation), epilogue=epilogue)

    def resnet(self, x: ActivationMap, block: nn.Module) -> ActivationMap:
        """diffusers ``ResnetBlock2D`` without time embedding or resampling: ``(skip(x) + h) / output_scale_factor``."""
        if type(block).__name__ != "ResnetBlock2D" or block.upsample is not None or block.downsample is not None:
            raise TypeError(f"exact tiled VAE supports plain ResnetBlock2D, got {type(block).__name__}")
        if block.time_emb_proj is not None or block.time_embedding_norm == "scale_shift":
            raise TypeError("exact tiled VAE supports ResnetBlock2D without time embedding")
        return self.residual_block(
            x, block.norm1, block.conv1, block.norm2, block.conv2, block.nonlinearity, block.conv_shortcut,
            lambda total, _rows, _cols: total / block.output_scale_factor,
        )

    def attention(self, x: ActivationMap, attn: nn.Module) -> ActivationMap:
        """diffusers VAE self-attention over the whole map: ``(x + to_out(SDPA(q, K, V))) / rescale_output_factor``
        with ``q, K, V`` projections of ``group_norm(x)``; ``K, V`` of all pixels stay on the compute device."""
        if attn.spatial_norm is not None or attn.group_norm is None or not attn.residual_connection:
            raise TypeError("exact tiled VAE supports group-normed residual self-attention (diffusers VAE) only")
        if attn.norm_q is not None or attn.norm_k is not None or attn.is_cross_attention:
            raise TypeError("exact tiled VAE supports plain self-attention (no q/k norms, no cross-attention)")
        normalise = self.normaliser(x, attn.group_norm)
        batch, channels = x.shape[:2]
        heads = attn.heads

        def tokens(tile: torch.Tensor) -> torch.Tensor:
            return normalise(tile).flatten(2).transpose(1, 2)

        def split_heads(projected: torch.Tensor) -> torch.Tensor:
            return projected.view(batch, -1, heads, projected.shape[-1] // heads).transpose(1, 2)

        def keys_values(rows: slice, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
            keys, values = [], []
            for key_rows, key_cols in self.attention_context(x, rows, cols):
                normalised = tokens(self.fetch(x, key_rows, key_cols))
                keys.append(attn.to_k(normalised))
                values.append(attn.to_v(normalised))
            return split_heads(torch.cat(keys, 1)), split_heads(torch.cat(values, 1))

        whole_map = keys_values(slice(0, x.shape[-2]), slice(0, x.shape[-1])) if self.global_attention else None

        def compute(rows: slice, cols: slice) -> torch.Tensor:
            key, value = whole_map if whole_map is not None else keys_values(rows, cols)
            residual = self.fetch(x, rows, cols)
            query = split_heads(attn.to_q(tokens(residual)))
            # Default scale 1/sqrt(head_dim), as diffusers' AttnProcessor2_0 calls it.
            attended = F.scaled_dot_product_attention(query, key, value)
            attended = attended.transpose(1, 2).reshape(batch, -1, heads * attended.shape[-1]).to(query.dtype)
            out = attn.to_out[0](attended).transpose(1, 2).reshape(residual.shape)
            return (out + residual) / attn.rescale_output_factor

        return self.stage((batch, channels, *x.shape[-2:]), compute)

    def attention_context(self, x: ActivationMap, rows: slice, cols: slice) -> Iterator[TileSlices]:
        """The tiles whose pixels the query tile ``rows, cols`` attends to: the whole map, tile by tile."""
        return self.blocks(*x.shape[-2:])

    def mid_block(self, x: ActivationMap, block: nn.Module) -> ActivationMap:
        """diffusers ``UNetMidBlock2D``: resnet, then (attention, resnet) pairs."""
        x = self.resnet(x, block.resnets[0])
        for attn, resnet in zip(block.attentions, block.resnets[1:]):
            if attn is not None:
                x = self.attention(x, attn)
            x = self.resnet(x, resnet)
        return x

    def local(self, x: ActivationMap, module: nn.Module) -> ActivationMap:
        """A norm-free stride-1 block, each tile run on its window with a halo of the block's receptive radius."""
        radius = receptive_radius(module)
        height, width = x.shape[-2:]

        def compute(rows: slice, cols: slice) -> torch.Tensor:
            top, left = max(rows.start - radius, 0), max(cols.start - radius, 0)
            window = self.fetch(x, slice(top, min(rows.stop + radius, height)),
                                slice(left, min(cols.stop + radius, width)))
            out = module(window)
            return out[..., rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]

        probe = module(self.fetch(x, slice(0, 1), slice(0, 1)))
        return self.stage((x.shape[0], probe.shape[1], height, width), compute)

    def downsample(self, x: ActivationMap, down: nn.Module) -> ActivationMap:
        """diffusers ``Downsample2D`` with a conv (``padding=0`` means an extra zero row/column bottom/right)."""
        if type(down).__name__ != "Downsample2D" or not down.use_conv or down.norm is not None:
            raise TypeError(f"exact tiled VAE supports conv Downsample2D only, got {down}")
        pads = (0, 1, 0, 1) if down.padding == 0 else None
        return self.conv(x, down.conv, pads=pads)

    def upsample(self, x: ActivationMap, up: nn.Module) -> ActivationMap:
        """diffusers ``Upsample2D``: nearest 2x, then a conv."""
        if type(up).__name__ != "Upsample2D" or not up.use_conv or up.use_conv_transpose or up.norm is not None:
            raise TypeError(f"exact tiled VAE supports nearest-interpolation Upsample2D with a conv only, got {up}")
        return self.conv(x, up.conv if up.name == "conv" else up.Conv2d_0, upsample=2)

    def concat(self, first: ActivationMap, second: ActivationMap) -> ActivationMap:
        """``cat([first, second], dim=1)`` (in ``second``'s dtype)."""

        def compute(rows: slice, cols: slice) -> torch.Tensor:
            tail = self.fetch(second, rows, cols)
            return torch.cat([self.fetch(first, rows, cols).to(tail.dtype), tail], dim=1)

        return self.stage((second.shape[0], first.shape[1] + second.shape[1], *second.shape[-2:]), compute)

    def fusion_res_block(self, x: ActivationMap, block: FusionResBlock, combine=None) -> ActivationMap:
        """``FusionResBlock``: ``skip(x) + h`` (then ``combine``)."""
        return self.residual_block(
            x, block.norm1, block.conv1, block.norm2, block.conv2, block.act, block.conv_out,
            combine if combine is not None else (lambda total, _rows, _cols: total),
        )

    def fusion(self, enc_feature: ActivationMap, dec: ActivationMap, block: FusionBlock, w: float) -> ActivationMap:
        """CFW ``dec + w * ResBlock(RRDBs(ResBlock(cat[enc, dec])))`` (``sr.models.cfw.fuse``)."""
        correction = self.fusion_res_block(self.concat(enc_feature, dec), block.encode_enc_1)
        correction = self.local(correction, block.encode_enc_2)
        return self.fusion_res_block(
            correction, block.encode_enc_3,
            lambda total, rows, cols: fuse(self.fetch(dec, rows, cols), total, w),
        )

    # --- networks ----------------------------------------------------------------------------------------------

    def encode(self, vae: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``sr.models.cfw.encoder_features``: (moments, [f1, f2]) as parked maps' tensors."""
        encoder = vae.encoder
        h = self.conv(ActivationMap(x), encoder.conv_in)
        level_outputs = []
        for block in encoder.down_blocks:
            if getattr(block, "attentions", None):
                raise TypeError(f"exact tiled VAE supports attention-free down blocks, got {type(block).__name__}")
            for resnet in block.resnets:
                h = self.resnet(h, resnet)
            level_outputs.append(h)
            if block.downsamplers:
                h = self.downsample(h, block.downsamplers[0])
        h = self.mid_block(h, encoder.mid_block)
        quant_conv = vae.quant_conv

        def quantise(out: torch.Tensor, _rows: slice, _cols: slice) -> torch.Tensor:
            return out if quant_conv is None else self._pointwise_conv(quant_conv, out)

        moments = self.conv(h, encoder.conv_out, self.normaliser(h, encoder.conv_norm_out, encoder.conv_act),
                            epilogue=quantise)
        features = [level_outputs[down].tensor for down, _ in FUSION_SITES.values()]
        return moments.tensor, features

    def decode(
        self, vae: nn.Module, z: torch.Tensor, cfw: CFW | None, enc_features: list[torch.Tensor] | None, w: float
    ) -> torch.Tensor:
        """``sr.models.cfw.decode_latent`` (``cfw`` None: the plain decoder)."""
        decoder = vae.decoder
        post_quant_conv = vae.post_quant_conv
        h = self.conv(
            ActivationMap(z), decoder.conv_in,
            None if post_quant_conv is None else (lambda tile: self._pointwise_conv(post_quant_conv, tile)),
        )
        h = self.mid_block(h, decoder.mid_block)
        fusions = {}
        if cfw is not None:
            if enc_features is None:
                raise ValueError("CFW decoding with w > 0 needs the encoder features of the LR image")
            fusions = {up: (getattr(cfw, name), ActivationMap(feature))
                       for (name, (_, up)), feature in zip(FUSION_SITES.items(), enc_features)}
        for index, block in enumerate(decoder.up_blocks):
            if getattr(block, "attentions", None):
                raise TypeError(f"exact tiled VAE supports attention-free up blocks, got {type(block).__name__}")
            for resnet in block.resnets:
                h = self.resnet(h, resnet)
            if block.upsamplers:
                if index in fusions:
                    fusion_block, feature = fusions[index]
                    h = self.fusion(feature, h, fusion_block, w)
                h = self.upsample(h, block.upsamplers[0])
        image = self.conv(h, decoder.conv_out, self.normaliser(h, decoder.conv_norm_out, decoder.conv_act))
        return image.tensor

    @staticmethod
    def _pointwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0):
            raise TypeError(f"expected a 1x1 conv, got {conv}")
        return conv(x)
