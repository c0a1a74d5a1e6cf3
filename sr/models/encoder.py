"""The time-aware encoder (docs/method.md#time-aware-encoder): the encoder half of an openai-style UNet over the clean LR latent.

It is conditioned on the same (original, 0-999) timestep as the diffusion UNet and returns one feature map per UNet
resolution, each with ``out_channels`` channels, keyed by its spatial **width** (the SFT layers look features up by
width, docs/method.md#sft). Parameter names equal the released checkpoint's ``structcond_stage_model.*`` names with that
prefix stripped, so loading a converted checkpoint is a plain ``load_state_dict``.
"""

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.utils.checkpoint import checkpoint


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t * f_i) | sin(t * f_i)]`` with ``f_i = max_period^(-i / (dim/2))``, i < dim/2."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 whatever the input and parameter dtypes (keeps fp16/bf16 runs stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class TimestepSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ResBlock(nn.Module):
    """``skip(x) + out_layers(in_layers(x) + emb_layers(emb))``; ``out_layers`` ends in a zero-initialised conv."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float, norm_groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(norm_groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(norm_groups, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Full spatial self-attention with the openai "legacy" head layout (heads split before q/k/v).

    ``qkv`` (a 1x1 Conv1d) gives ``[B, heads * 3 * d, T]``; each head's slice is ``[q | k | v]`` of ``d`` channels;
    ``out = x + proj_out(softmax(q^T k / sqrt(d)) v)``.
    """

    def __init__(self, channels: int, num_heads: int, norm_groups: int, gradient_checkpointing: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.gradient_checkpointing = gradient_checkpointing
        self.use_sdpa = True  # the memory lever ``attention`` (sr.models.memory): False runs ``classic_attention``
        self.norm = GroupNorm32(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        tokens = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(tokens))
        head_dim = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * head_dim, -1).transpose(1, 2).split(head_dim, dim=2)
        h = F.scaled_dot_product_attention(q, k, v) if self.use_sdpa else classic_attention(q, k, v)
        h = h.transpose(1, 2).reshape(b, c, -1)
        return (tokens + self.proj_out(h)).reshape(b, c, *spatial)


def classic_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` with the attention matrix materialised (what SDPA computes without it)."""
    weights = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
    return weights @ v


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (parameter name ``op`` as in the released model)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class TimeAwareEncoder(ModelMixin, ConfigMixin):
    """Timestep-conditioned encoder of the LR latent, returning ``{width: feature[B, out_channels, h, width]}``.

    One feature per level of ``channel_mult``: the input of each downsampling step, then the middle block's output,
    each passed through its own ``fea_tran`` ResBlock to ``out_channels``. For the SD-2.1 configuration and a 64x64
    latent the widths are 64, 32, 16 and 8, the resolutions of the UNet's 22 modulated ResBlocks.

    ``gradient_checkpointing`` (config, as released) checkpoints the attention blocks; ``checkpoint_blocks`` (the
    training lever ``module.memory.gradient_checkpointing_encoder``, not part of the architecture) checkpoints every
    block, so that only block inputs are kept for the backward pass.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        model_channels: int = 256,
        out_channels: int = 256,
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (4, 2, 1),
        channel_mult: tuple[int, ...] = (1, 1, 2, 2),
        num_heads: int = 4,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        gradient_checkpointing: bool = True,
    ):
        super().__init__()
        emb_channels = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads, norm_num_groups, gradient_checkpointing)

        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        feature_channels = []
        ch = model_channels
        downsample_factor = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, emb_channels, mult * model_channels, dropout, norm_num_groups)]
                ch = mult * model_channels
                if downsample_factor in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepSequential(*layers))
            if level != len(channel_mult) - 1:
                feature_channels.append(ch)
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                downsample_factor *= 2
        self.middle_block = TimestepSequential(
            ResBlock(ch, emb_channels, ch, dropout, norm_num_groups),
            attention(ch),
            ResBlock(ch, emb_channels, ch, dropout, norm_num_groups),
        )
        feature_channels.append(ch)
        self.fea_tran = nn.ModuleList(
            ResBlock(c, emb_channels, out_channels, dropout, norm_num_groups) for c in feature_channels
        )
        self.checkpoint_blocks = False

    def forward(self, z_lr: torch.Tensor, timesteps: torch.Tensor) -> dict[int, torch.Tensor]:
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(z_lr.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(z_lr.dtype))
        collected = []
        h = z_lr
        for block in self.input_blocks:
            if isinstance(block[0], Downsample):
                collected.append(h)
            h = self._run(block, h, emb)
        collected.append(self._run(self.middle_block, h, emb))
        return {feature.shape[-1]: self._run(tran, feature, emb) for feature, tran in zip(collected, self.fea_tran)}

    def _run(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_blocks and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)
