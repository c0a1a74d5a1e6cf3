"""LPIPS as a training loss (gradients flow to the input), sharing ``sr.metrics.LPIPS``'s backbone handling.

``d(x, y) = sum_l mean_hw( w_l . (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2 )`` (LPIPS v0.1, VGG-16 features ``f_l`` and the
learned linear heads ``w_l`` shipped inside the ``lpips`` package); inputs in [-1, 1].

``backbone="vgg"`` reads torchvision's ImageNet VGG-16 (``vgg16-397923af.pth``) from ``$TORCH_HOME/hub/checkpoints``;
nothing is downloaded. ``backbone="stand_in"`` replaces it by :class:`StandInVGGFeatures`, a seeded random-init
VGG-like net with LPIPS-VGG's five feature widths: it only lets the plumbing run (tests, the offline tiny demo).
A loss built on it is NOT a perceptual loss; every run that uses it says so in its log.
"""

import logging

import torch
from torch import nn

from sr.metrics.full_reference import LPIPS, LPIPS_FEATURE_CHANNELS
from sr.metrics.weights import torchvision_backbone_path

log = logging.getLogger(__name__)

PERCEPTUAL_BACKBONES = ("vgg", "stand_in")


class StandInVGGFeatures(nn.Module):
    """Five ``conv3x3 -> ReLU`` stages with LPIPS-VGG's widths 64-128-256-512-512, at 1, 1/4, 1/8, 1/16, 1/32 of the
    input size (VGG-16: 1 .. 1/16 with 2-3 convs each).

    Fixed random weights from ``seed`` (frozen); one conv per stage and the early 4x pooling make it about 20x
    cheaper than VGG-16, so the CPU demo stays fast. Inputs need a side of at least 32 pixels.
    """

    def __init__(self, seed: int = 0, channels: tuple[int, ...] = LPIPS_FEATURE_CHANNELS["vgg"]):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        widths = (3, *channels)
        self.stages = nn.ModuleList()
        for index, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            # He-normal keeps feature magnitudes stable through the ReLU stack (default init shrinks them).
            with torch.no_grad():
                conv.weight.normal_(0.0, (2.0 / (9 * c_in)) ** 0.5, generator=generator)
                conv.bias.zero_()
            pool = [nn.MaxPool2d(4 if index == 1 else 2)] if index > 0 else []
            self.stages.append(nn.Sequential(*pool, conv, nn.ReLU()))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class PerceptualLoss(nn.Module):
    """Per-sample LPIPS-VGG distance ``[N]`` between images in [-1, 1], differentiable w.r.t. both inputs."""

    def __init__(self, backbone: str = "vgg", stand_in_seed: int = 0):
        super().__init__()
        if backbone not in PERCEPTUAL_BACKBONES:
            raise ValueError(f"perceptual backbone must be one of {PERCEPTUAL_BACKBONES}, got {backbone!r}")
        self.backbone = backbone
        if backbone == "stand_in":
            log.warning(
                "perceptual loss uses a STAND-IN backbone (seeded random VGG-like net, not ImageNet VGG-16): "
                "the 'LPIPS' term is plumbing only, not a perceptual loss"
            )
            metric = LPIPS("vgg", backbone=StandInVGGFeatures(stand_in_seed))
        else:
            weights = torchvision_backbone_path("vgg")
            if not weights.is_file():
                raise FileNotFoundError(
                    f"{weights}: LPIPS-VGG backbone missing; copy torchvision's vgg16-397923af.pth there "
                    "(nothing is downloaded), or set perceptual=stand_in for a plumbing-only run"
                )
            metric = LPIPS("vgg")
        # The metric wraps forward in no_grad; the inner lpips network is what a loss needs.
        self.lpips = metric.model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lpips(x, y, normalize=False).flatten()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        # Frozen feature network: stays in eval mode whatever the enclosing module does.
        return super().train(False)
