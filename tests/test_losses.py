"""The shared autoencoder loss: discriminator, hinge, KL, VQ codebook terms, LPIPS plumbing and disc_start gating."""

import pytest
import torch
from diffusers import AutoencoderKL, VQModel

from sr.metrics.weights import torchvision_backbone_path
from sr.training.losses import (
    AutoencoderLoss,
    NLayerDiscriminator,
    Reconstruction,
    codebook_loss,
    hinge_discriminator_loss,
    reconstruct,
)
from sr.training.perceptual import PerceptualLoss

TINY_BLOCKS = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
               "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}


@pytest.fixture(scope="module")
def loss() -> AutoencoderLoss:
    return AutoencoderLoss(perceptual="stand_in", disc_start=3, kl_weight=0.5, codebook_weight=2.0, disc_channels=8)


def test_discriminator_matches_the_released_patchgan():
    discriminator = NLayerDiscriminator(3, 64, 3)
    assert sum(p.numel() for p in discriminator.parameters()) == 2_765_633  # docs/method.md#components, loss.discriminator.*
    assert discriminator(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    batch_norms = [m for m in discriminator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(batch_norms) == 3
    weights = torch.cat([m.weight.detach() for m in batch_norms])
    assert abs(weights.mean().item() - 1.0) < 0.01 and 0.015 < weights.std().item() < 0.025


def test_hinge_loss_value():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # relu(1 - real) = [0, 0.5], relu(1 + fake) = [0, 1.5]
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.75))


def test_codebook_loss_value_and_gradients():
    z_e = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    z_q = torch.tensor([1.5, 1.0, 3.0, 5.0], requires_grad=True)
    beta = 0.25
    value = codebook_loss(z_e, z_q, beta)
    squared = ((z_e - z_q) ** 2).mean().item()
    assert value.item() == pytest.approx((1 + beta) * squared)
    value.backward()
    difference = (z_q - z_e).detach()
    assert torch.allclose(z_q.grad, 2 * difference / 4)  # codebook term moves the code to the encoder output
    assert torch.allclose(z_e.grad, -beta * 2 * difference / 4)  # commitment term, weight beta


def test_stand_in_perceptual_runs_and_is_differentiable(loss):
    perceptual = loss.perceptual
    assert perceptual.backbone == "stand_in"
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_()
    assert torch.allclose(perceptual(x, x), torch.zeros(2), atol=1e-6)
    distance = perceptual(x, y)
    assert distance.shape == (2,) and (distance > 0).all()
    distance.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in perceptual.parameters())


def test_real_lpips_without_the_backbone_file_names_the_file_and_place():
    expected = torchvision_backbone_path("vgg")
    assert not expected.exists()  # conftest points TORCH_HOME at an empty temporary folder
    with pytest.raises(FileNotFoundError) as error:
        PerceptualLoss("vgg")
    message = str(error.value)
    assert "vgg16-397923af.pth" in message and str(expected) in message and "stand_in" in message
    with pytest.raises(ValueError, match="perceptual backbone"):
        PerceptualLoss("alex")


def test_generator_loss_adds_kl_for_autoencoder_kl(loss):
    vae = AutoencoderKL(**TINY_BLOCKS)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    reconstruction = reconstruct(vae, image, torch.Generator().manual_seed(0))
    total, logs = loss.generator_loss(image, reconstruction, step=0)
    posterior = reconstruction.posterior
    kl = (0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar)).sum(dim=(1, 2, 3)).mean()
    nll = (image - reconstruction.image).abs().mean() + loss.perceptual(image, reconstruction.image).mean()
    assert logs["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert total.item() == pytest.approx((nll + 0.5 * kl).item(), rel=1e-5)
    assert "codebook" not in logs and "g_adv" not in logs  # step 0 < disc_start 3


def test_generator_loss_adds_codebook_terms_for_vq_model(loss):
    vq = VQModel(**TINY_BLOCKS, latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    reconstruction = reconstruct(vq, image)
    z_e, z_q = reconstruction.quantized
    distances = torch.cdist(z_e.permute(0, 2, 3, 1).reshape(-1, 3), vq.quantize.embedding.weight)
    nearest = vq.quantize.embedding.weight[distances.argmin(1)].reshape(2, 16, 16, 3).permute(0, 3, 1, 2)
    assert torch.allclose(z_q, nearest)
    total, logs = loss.generator_loss(image, reconstruction, step=0)
    expected = 1.25 * ((z_e - z_q) ** 2).mean()
    assert logs["codebook"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert "kl" not in logs
    total.backward()
    assert vq.quantize.embedding.weight.grad.abs().sum() > 0  # codebook term
    assert vq.encoder.conv_in.weight.grad.abs().sum() > 0  # commitment + straight-through reconstruction


def test_adversarial_terms_start_at_disc_start(loss):
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    fake = image.flip(-1)
    _, before = loss.generator_loss(image, Reconstruction(fake), step=2)
    d_before, _ = loss.discriminator_loss(image, fake, step=2)
    assert "g_adv" not in before and d_before.item() == 0.0
    total, after = loss.generator_loss(image, Reconstruction(fake), step=3)
    d_after, _ = loss.discriminator_loss(image, fake, step=3)
    g_adv = -loss.discriminator(fake).mean()
    assert after["g_adv"].item() == pytest.approx(g_adv.item(), rel=1e-5)
    assert total.item() == pytest.approx((after["nll"] + 0.025 * g_adv).item(), rel=1e-5)
    expected_d = hinge_discriminator_loss(loss.discriminator(image), loss.discriminator(fake))
    assert d_after.item() == pytest.approx(expected_d.item(), rel=1e-5)


def test_discriminator_and_generator_adversarial_losses_move_in_opposite_directions():
    torch.manual_seed(0)
    loss = AutoencoderLoss(perceptual_weight=0.0, disc_start=0, disc_channels=16)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    fake = torch.nn.Parameter(real.flip(-2).clone())  # stands in for the generator's output
    optimizer_d = torch.optim.Adam(loss.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.9))
    optimizer_g = torch.optim.Adam([fake], lr=5e-2, betas=(0.5, 0.9))

    def losses() -> tuple[float, float]:
        with torch.no_grad():
            d, _ = loss.discriminator_loss(real, fake, step=0)
            _, logs = loss.generator_loss(real, Reconstruction(fake), step=0)
        return d.item(), logs["g_adv"].item()

    d_start, g_start = losses()
    for _ in range(5):  # discriminator updates: L_D falls, the generator's adversarial loss rises
        optimizer_d.zero_grad()
        loss.discriminator_loss(real, fake, step=0)[0].backward()
        optimizer_d.step()
    d_after_d, g_after_d = losses()
    assert d_after_d < d_start and g_after_d > g_start
    loss.discriminator.requires_grad_(False)
    for _ in range(5):  # generator updates against the fixed discriminator: the reverse
        optimizer_g.zero_grad()
        (-loss.discriminator(fake).mean()).backward()
        optimizer_g.step()
    d_after_g, g_after_g = losses()
    assert g_after_g < g_after_d and d_after_g > d_after_d
