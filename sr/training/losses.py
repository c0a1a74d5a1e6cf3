"""The autoencoder loss shared by the tiny prior's VAE training and CFW training (docs/method.md#stage-2).

Generator side (``AutoencoderLoss.generator_loss``)::

    rec  = pixel_weight * |x - x_hat| + perceptual_weight * LPIPS(x, x_hat)
    nll  = mean(rec)
    L_G  = nll + disc_weight * [step >= disc_start] * (-mean D(x_hat))
           + kl_weight * KL(q(z|x) || N(0, I))                                   (AutoencoderKL)
           + codebook_weight * (||sg[z_e] - z_q||^2 + beta ||sg[z_q] - z_e||^2)  (VQModel)

Discriminator side (hinge, ``discriminator_loss``)::

    L_D  = [step >= disc_start] * 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))

Choices against the released code (``LPIPSWithDiscriminator``):

- ``nll = mean(rec)``: the release computes ``mean(rec / exp(logvar) + logvar) / B`` with ``logvar`` frozen at 0,
  i.e. ``mean(rec) / B``. With the released batch of 1 both are equal; for B > 1 the extra ``/B`` only makes the
  reconstruction weight depend on the batch size, so it is not reproduced (docs/method.md#quirk-8). ``logvar`` is omitted.
- The generator's adversarial weight is the constant ``disc_weight`` (0.025). The release computes an adaptive weight
  ``|grad nll| / |grad g|`` w.r.t. the decoder's last layer, but that layer is frozen in CFW training, so
  ``autograd.grad`` raised and the except-branch always used the constant 0.025 (docs/method.md#stage-2, docs/method.md#quirk-7).
- KL per sample is summed over latent elements and averaged over the batch (LDM's ``sum(kl) / B``).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, VQModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from sr.training.perceptual import PerceptualLoss


class NLayerDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming): conv4 s2 + LReLU, ``n_layers`` x [conv4 (s2, last s1) + BN + LReLU], conv4 s1 -> 1.

    Widths ``ndf * min(2^i, 8)``; init ``N(0, 0.02)`` for convs, ``N(1, 0.02)`` / 0 for BatchNorm weight / bias.
    """

    def __init__(self, input_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for index in range(1, n_layers + 1):
            new_width = ndf * min(2**index, 8)
            stride = 2 if index < n_layers else 1
            layers += [
                nn.Conv2d(width, new_width, 4, stride, 1, bias=False),
                nn.BatchNorm2d(new_width),
                nn.LeakyReLU(0.2, True),
            ]
            width = new_width
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def kl_to_standard_normal(posterior: DiagonalGaussianDistribution) -> torch.Tensor:
    """``mean_b sum_{c,h,w} 0.5 (mu^2 + sigma^2 - 1 - log sigma^2)``."""
    return posterior.kl().mean()


def codebook_loss(z_e: torch.Tensor, z_q: torch.Tensor, beta: float) -> torch.Tensor:
    """VQ-VAE ``||sg[z_e] - z_q||^2 + beta ||sg[z_q] - z_e||^2`` (means over elements): codebook + commitment."""
    return F.mse_loss(z_q, z_e.detach()) + beta * F.mse_loss(z_e, z_q.detach())


@dataclass
class Reconstruction:
    """An autoencoder pass: the output image and whichever latent regulariser applies."""

    image: torch.Tensor
    posterior: DiagonalGaussianDistribution | None = None
    quantized: tuple[torch.Tensor, torch.Tensor] | None = None  # (z_e, z_q), z_q carrying the codebook gradient


def reconstruct(autoencoder: nn.Module, image: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction:
    """Encode and decode ``image`` ([-1, 1]) with a diffusers ``AutoencoderKL`` (posterior sample) or ``VQModel``
    (nearest codebook entry, straight-through gradient to the encoder)."""
    if isinstance(autoencoder, AutoencoderKL):
        posterior = autoencoder.encode(image).latent_dist
        decoded = autoencoder.decode(posterior.sample(generator=generator)).sample
        return Reconstruction(decoded, posterior=posterior)
    if isinstance(autoencoder, VQModel):
        z_e = autoencoder.encode(image).latents
        _, _, (_, _, indices) = autoencoder.quantize(z_e)
        batch, channels, height, width = z_e.shape
        z_q = autoencoder.quantize.get_codebook_entry(indices.reshape(-1), (batch, height, width, channels))
        straight_through = z_e + (z_q - z_e).detach()
        decoded = autoencoder.decode(straight_through, force_not_quantize=True).sample
        return Reconstruction(decoded, quantized=(z_e, z_q))
    raise TypeError(f"reconstruct supports diffusers AutoencoderKL and VQModel, got {type(autoencoder).__name__}")


class AutoencoderLoss(nn.Module):
    """L1 + LPIPS + hinge PatchGAN (+ KL or VQ codebook terms); formulas and release differences in the module doc.

    ``perceptual`` is ``"vgg"`` (LPIPS-VGG, needs the torchvision weight file) or ``"stand_in"`` (plumbing only).
    """

    def __init__(
        self,
        pixel_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        disc_weight: float = 0.025,
        disc_start: int = 501,
        kl_weight: float = 0.0,
        codebook_weight: float = 1.0,
        codebook_beta: float = 0.25,
        disc_num_layers: int = 3,
        disc_channels: int = 64,
        perceptual: str = "vgg",
        stand_in_seed: int = 0,
    ):
        super().__init__()
        self.pixel_weight = pixel_weight
        self.perceptual_weight = perceptual_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.kl_weight = kl_weight
        self.codebook_weight = codebook_weight
        self.codebook_beta = codebook_beta
        self.perceptual = PerceptualLoss(perceptual, stand_in_seed) if perceptual_weight > 0 else None
        self.discriminator = NLayerDiscriminator(3, disc_channels, disc_num_layers)

    def adversarial_active(self, step: int) -> bool:
        """Whether the GAN terms are on at ``step`` (the release's ``disc_factor``: 0 before ``disc_start``)."""
        return step >= self.disc_start

    def generator_loss(
        self, target: torch.Tensor, reconstruction: Reconstruction, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L_G`` for a reconstruction of ``target`` (both [-1, 1]); returns the loss and its detached terms."""
        image = reconstruction.image
        nll = self.pixel_weight * (target - image).abs().mean()
        logs = {"l1": (target - image).abs().mean().detach()}
        if self.perceptual is not None:
            perceptual = self.perceptual(target, image).mean()
            nll = nll + self.perceptual_weight * perceptual
            logs["lpips"] = perceptual.detach()
        loss = nll
        logs["nll"] = nll.detach()
        if reconstruction.posterior is not None and self.kl_weight > 0:
            kl = kl_to_standard_normal(reconstruction.posterior)
            loss = loss + self.kl_weight * kl
            logs["kl"] = kl.detach()
        if reconstruction.quantized is not None:
            codebook = codebook_loss(*reconstruction.quantized, beta=self.codebook_beta)
            loss = loss + self.codebook_weight * codebook
            logs["codebook"] = codebook.detach()
        if self.adversarial_active(step):
            generator_adversarial = -self.discriminator(image).mean()
            loss = loss + self.disc_weight * generator_adversarial
            logs["g_adv"] = generator_adversarial.detach()
        logs["loss_g"] = loss.detach()
        return loss, logs

    def discriminator_loss(
        self, target: torch.Tensor, reconstruction: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hinge ``L_D`` (zero before ``disc_start``); ``reconstruction`` is detached here."""
        if not self.adversarial_active(step):
            zero = target.new_zeros(())
            return zero, {"loss_d": zero}
        logits_real = self.discriminator(target.detach())
        logits_fake = self.discriminator(reconstruction.detach())
        loss = hinge_discriminator_loss(logits_real, logits_fake)
        return loss, {
            "loss_d": loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
