"""CFW: controllable feature wrapping in the VAE decoder (docs/method.md#cfw).

Two fusion blocks correct the decoder's features with the VAE encoder's features of the LR image::

    F_m = F_d + w * C(F_e, F_d),   C = ResBlock(2C -> C) -> RRDB x 2 -> ResBlock(C -> C)

``fusion_layer_2`` acts at H/4 (512 channels for SD, diffusers ``decoder.up_blocks[1]``) and ``fusion_layer_1`` at
H/2 (256 channels, ``decoder.up_blocks[2]``), between each block's resnets and its upsampler. The encoder features are
the outputs of ``encoder.down_blocks[1|2].resnets[-1]`` (before that level's downsample). ``w = 0`` is exactly the
plain decoder (the fusion is skipped; ``plain_decoder`` is that rule, applied by ``sr.models.autoencoder``). Both are attached with temporary hooks around one call, so the diffusers VAE
stays an unmodified ``AutoencoderKL`` whose weights load from any SD folder.
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from sr.models.memory import TemporaryHooks
from sr.models.rrdb import RRDB

# (encoder down block, decoder up block) per fusion layer, for a 4-level VAE
FUSION_SITES = {"fusion_layer_1": (1, 2), "fusion_layer_2": (2, 1)}


def fuse(decoder_feature: torch.Tensor, correction: torch.Tensor, w: float) -> torch.Tensor:
    """The CFW fusion ``F_m = F_d + w * C(F_e, F_d)`` (``correction`` = ``C(F_e, F_d)``); the untiled fusion block and
    the exact tiled VAE (``sr.models.layerwise_vae``) both fuse through it."""
    return decoder_feature + w * correction


def plain_decoder(w: float) -> bool:
    """``w == 0`` decodes with the plain SD decoder: the fusion layers are skipped, not run with zero weight."""
    return w == 0


class FusionResBlock(nn.Module):
    """``skip(x) + conv2(swish(GN(conv1(swish(GN(x))))))``; ``conv_out`` (1x1) on the skip when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return h + (x if self.conv_out is None else self.conv_out(x))


class FusionBlock(nn.Module):
    """``dec + w * ResBlock(RRDB(RRDB(ResBlock(cat[enc, dec]))))`` (the released ``Fuse_sft_block_RRDB``)."""

    def __init__(self, channels: int, growth_channels: int = 32, num_rrdb: int = 2, norm_groups: int = 32):
        super().__init__()
        self.encode_enc_1 = FusionResBlock(2 * channels, channels, norm_groups)
        self.encode_enc_2 = nn.Sequential(*(RRDB(channels, growth_channels) for _ in range(num_rrdb)))
        self.encode_enc_3 = FusionResBlock(channels, channels, norm_groups)

    def forward(self, enc_feature: torch.Tensor, dec_feature: torch.Tensor, w: float) -> torch.Tensor:
        correction = self.encode_enc_1(torch.cat([enc_feature.to(dec_feature.dtype), dec_feature], dim=1))
        correction = self.encode_enc_3(self.encode_enc_2(correction))
        return fuse(dec_feature, correction, w)


class CFW(ModelMixin, ConfigMixin):
    """The two fusion layers; ``channels = (C at H/2, C at H/4)`` = VAE ``block_out_channels[1:3]``."""

    @register_to_config
    def __init__(
        self, channels: tuple[int, int] = (256, 512), growth_channels: int = 32, num_rrdb: int = 2, norm_groups: int = 32
    ):
        super().__init__()
        self.fusion_layer_1 = FusionBlock(channels[0], growth_channels, num_rrdb, norm_groups)
        self.fusion_layer_2 = FusionBlock(channels[1], growth_channels, num_rrdb, norm_groups)


def encoder_features(vae: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the VAE encoder on ``x`` ([-1, 1]); return the posterior moments and the CFW features ``[f1, f2]``."""
    captured: dict[str, torch.Tensor] = {}

    def install():
        return [vae.encoder.down_blocks[down].resnets[-1].register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out)
        ) for name, (down, _) in FUSION_SITES.items()]

    with TemporaryHooks(install):
        moments = vae.quant_conv(vae.encoder(x)) if vae.quant_conv is not None else vae.encoder(x)
    return moments, [captured["fusion_layer_1"], captured["fusion_layer_2"]]


def decode_latent(
    vae: nn.Module, cfw: CFW | None, z: torch.Tensor, enc_features: list[torch.Tensor] | None, w: float
) -> torch.Tensor:
    """Decode an unscaled latent, fusing ``enc_features = [f1, f2]`` with strength ``w``; ``cfw`` None: the plain
    decoder (``sr.models.autoencoder.CFWAutoencoder`` passes None where ``plain_decoder(w)``). The decoder is run
    through its submodules, as ``AutoencoderKL.decode`` runs it untiled, so diffusers' own tiling flag cannot tile it
    without the features."""
    if cfw is None:
        return _plain_decode(vae, z)
    if enc_features is None:
        raise ValueError("CFW decoding with w > 0 needs the encoder features of the LR image")
    features = dict(zip(("fusion_layer_1", "fusion_layer_2"), enc_features))

    def fuse(name):
        layer = getattr(cfw, name)

        def pre_hook(_module, args):
            return (layer(features[name], args[0], w), *args[1:])

        return pre_hook

    def install():
        return [vae.decoder.up_blocks[up].upsamplers[0].register_forward_pre_hook(fuse(name))
                for name, (_, up) in FUSION_SITES.items()]

    # TemporaryHooks: a checkpointed decoder block (module.memory.gradient_checkpointing_vae) fuses in its recomputation
    with TemporaryHooks(install):
        return _plain_decode(vae, z)


def _plain_decode(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKL._decode`` without its tiling branch: ``decoder(post_quant_conv(z))``."""
    return vae.decoder(vae.post_quant_conv(z) if vae.post_quant_conv is not None else z)
