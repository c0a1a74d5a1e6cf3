"""``CFWAutoencoder``: the SD VAE and the CFW fusion layers as one component with a ``forward`` (docs/method.md#cfw).

    encoding = autoencoder.encode(x)                       # posterior of E(x) + CFW encoder features [f1, f2]
    image    = autoencoder.decode(z, encoding.features, w)  # decoder with F_m = F_d + w * C(F_e, F_d)

It is the one place that decides how the pair runs: ``w == 0`` (``sr.models.cfw.plain_decoder``) or no fusion
layers decode with the plain decoder, anything else fuses through ``sr.models.cfw.fuse``; and tiling
(``enable_tiling`` / ``disable_tiling``, on by default): a call that passes a VAE tile runs the tiled encode/decode of
``sr.models.tiled_vae`` (``exact``: equal to the untiled pass up to float rounding, CFW included), a single pass when
one tile covers the image or tiling is off. Latents here are VAE-space (``z = E(x)``, as ``AutoencoderKL``);
``sr.models.stablesr.StableSR`` scales them to diffusion space.

The pair is stored as two pipeline components (``vae/``: a plain diffusers ``AutoencoderKL`` that loads from any SD
folder, ``cfw/``: the fusion layers), so this class is a module over those two objects, built by the pipeline and
never saved itself (a ``ModelMixin`` here would write a third copy of the weights). diffusers' own
``AutoencoderKL.enable_tiling`` tiles the plain decoder, which cannot carry the full-size CFW features: it is refused
with a message naming ``pipe.enable_vae_tiling()``.
"""

from dataclasses import dataclass

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from sr.models.cfw import CFW, decode_latent, encoder_features, plain_decoder
from sr.models.tiled_vae import DEFAULT_MODE, TiledVAEMode, tiled_decode, tiled_encode

Tile = int | tuple[int, int]


@dataclass
class CFWEncoding:
    """``latent_dist``: the posterior of ``E(x)`` (VAE space); ``features``: CFW encoder features ``[f1 at H/2, f2 at
    H/4]``, what ``decode`` fuses."""

    latent_dist: DiagonalGaussianDistribution
    features: list[torch.Tensor]


class CFWAutoencoder(nn.Module):
    """The SD VAE with CFW fusion (module docstring); ``cfw`` None: a model without fusion layers."""

    def __init__(self, vae: nn.Module, cfw: CFW | None = None, use_tiling: bool = True):
        super().__init__()
        self.vae, self.cfw = vae, cfw
        self.use_tiling = use_tiling

    def enable_tiling(self) -> None:
        """Encode/decode tile by tile when a call's VAE tile is smaller than the image (the default)."""
        self.use_tiling = True

    def disable_tiling(self) -> None:
        """Encode/decode every image in one pass, whatever tile a call passes."""
        self.use_tiling = False

    def fuses(self, w: float) -> bool:
        """Whether decoding at strength ``w`` runs the fusion layers (module docstring)."""
        return self.cfw is not None and not plain_decoder(w)

    def encode(self, x: torch.Tensor, tile: Tile | None = None, overlap: Tile = 0, mode: TiledVAEMode = DEFAULT_MODE,
               progress: bool = False) -> CFWEncoding:
        """``x [B, 3, H, W]`` in [-1, 1] -> posterior and CFW features; ``tile``/``overlap`` in pixels."""
        self._check_vae_tiling()
        if self._tiled(tile):
            moments, features = tiled_encode(self.vae, x, tile=tile, overlap=overlap, progress=progress, mode=mode)
        else:
            moments, features = encoder_features(self.vae, x)
        return CFWEncoding(DiagonalGaussianDistribution(moments), features)

    def decode(self, z: torch.Tensor, features: list[torch.Tensor] | None = None, w: float = 0.0,
               tile: int | None = None, overlap: int = 0, mode: TiledVAEMode = DEFAULT_MODE,
               progress: bool = False) -> torch.Tensor:
        """VAE-space latent -> image in about [-1, 1], fusing ``features`` with strength ``w`` (``fuses``);
        ``tile``/``overlap`` in latent pixels."""
        self._check_vae_tiling()
        cfw = self.cfw if self.fuses(w) else None
        if self._tiled(tile):
            return tiled_decode(self.vae, z, features, w, tile=tile, overlap=overlap, cfw=cfw, progress=progress,
                                mode=mode)
        return decode_latent(self.vae, cfw, z, features, w)

    def forward(self, x: torch.Tensor, w: float = 0.0, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruct ``x``: encode, then decode the posterior mode (or a sample) fused with ``x``'s own features."""
        encoding = self.encode(x)
        posterior = encoding.latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, encoding.features, w)

    def _tiled(self, tile) -> bool:
        return self.use_tiling and tile is not None

    def _check_vae_tiling(self) -> None:
        if getattr(self.vae, "use_tiling", False):
            raise ValueError("vae.enable_tiling() (diffusers' tiling) cannot carry the CFW features; call "
                             "vae.disable_tiling() and use pipe.enable_vae_tiling(), the exact tiled VAE with CFW")
