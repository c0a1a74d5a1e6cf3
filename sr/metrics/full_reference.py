"""Full-reference metrics: PSNR and SSIM (RGB or a luma channel) through pyiqa, LPIPS through the ``lpips`` package.

Inputs are RGB tensors ``[N, 3, H, W]`` in [0, 1]; ``crop_border`` pixels are removed from every edge first.

Colour spaces (``space`` argument). The two "Y" conventions differ by a scale and an offset, which moves PSNR by
about 1.3 dB, so both exist under distinct names:

- ``"y"``: pyiqa's Y (its default ``color_space='yiq'``), which StableSR and its successors' tables use:
  ``Y = 0.299 R + 0.587 G + 0.114 B`` (BT.601 luma, full range);
- ``"ycbcr"``: MATLAB ``rgb2ycbcr`` studio-swing Y: ``Y = (65.481 R + 128.553 G + 24.966 B + 16) / 255``
  (pyiqa's ``color_space='ycbcr'``);
- ``"rgb"``: the three channels (SSIM averages them).

Formulas (pyiqa 0.1.16's ``psnr_arch`` / ``ssim_arch``, evaluated here in float64):

- ``PSNR = 10 log10(1 / (MSE + 1e-8))`` on the [0, 1] scale, so identical images give the cap of 80 dB;
- SSIM (Wang et al. 2004) on the 0-255 scale with every channel rounded to 8 bits (on a luma: the luma rounded, as
  MATLAB's ``rgb2ycbcr`` of a uint8 image), 11x11 Gaussian window (sigma 1.5), 'valid' filtering,
  ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``, negative contrast-structure terms clamped to 0, averaged over
  pixels and channels.
- LPIPS v0.1 (Zhang et al. 2018): ``d(x, y) = sum_l mean_hw( w_l . (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2 )`` with
  ``f_l`` the backbone's layer-l features (unit-normalised over channels) and ``w_l`` the learned 1x1 heads; inputs
  are mapped from [0, 1] to [-1, 1] and through lpips' ImageNet scaling layer first. No border crop.
"""

from pathlib import Path

import torch
from torch import nn

from sr.metrics.weights import torchvision_backbone_path

LPIPS_FEATURE_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
COLOUR_SPACES = ("rgb", "y", "ycbcr")
PYIQA_COLOUR_SPACES = {"y": "yiq", "ycbcr": "ycbcr"}


def psnr(sr: torch.Tensor, hr: torch.Tensor, crop_border: int, space: str) -> torch.Tensor:
    """Per-image PSNR in dB, ``[N]`` float64, on ``space`` (formula, cap and spaces in the module docstring)."""
    from pyiqa.archs.psnr_arch import PSNR

    return PSNR(crop_border=crop_border, **_pyiqa_space(space))(sr.double(), hr.double())


def ssim(sr: torch.Tensor, hr: torch.Tensor, crop_border: int, space: str) -> torch.Tensor:
    """Per-image SSIM, ``[N]`` float64, on ``space`` (window, constants and spaces in the module docstring)."""
    from pyiqa.archs.ssim_arch import SSIM

    return SSIM(crop_border=crop_border, **_pyiqa_space(space))(sr.double(), hr.double())


def _pyiqa_space(space: str) -> dict:
    """pyiqa's arguments for a colour space: ``test_y_channel`` and, for a luma, its ``color_space``."""
    if space not in COLOUR_SPACES:
        raise ValueError(f"colour space must be one of {COLOUR_SPACES}, got {space!r}")
    if space == "rgb":
        return {"test_y_channel": False}
    return {"test_y_channel": True, "color_space": PYIQA_COLOUR_SPACES[space]}


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between ``[N, 3, H, W]`` images in [0, 1]; returns ``[N]``.

    Args:
        net: ``"alex"`` or ``"vgg"``; selects the learned linear heads shipped with the ``lpips`` package.
        backbone: a stand-in feature network returning 5 feature maps with ``LPIPS_FEATURE_CHANNELS[net]`` channels.
            When None, the torchvision ImageNet backbone is read (``weights_only=True``) from
            :func:`sr.metrics.weights.torchvision_backbone_path`; a missing file raises ``FileNotFoundError``.
    """

    def __init__(self, net: str, backbone: nn.Module | None = None):
        super().__init__()
        import lpips

        if net not in LPIPS_FEATURE_CHANNELS:
            raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_FEATURE_CHANNELS)}, got {net!r}")
        # pnet_rand=True builds the backbone without asking torchvision to download it; weights are loaded below.
        self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if backbone is None:
            _load_torchvision_features(self.model.net, torchvision_backbone_path(net))
        else:
            self.model.net = backbone
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return self.model(sr, hr, normalize=True).flatten()


def _load_torchvision_features(sliced_backbone: nn.Module, weights_path: Path) -> None:
    """Copy torchvision's ``features.<i>.*`` tensors into lpips' ``slice<k>.<i>.*`` layout (strict)."""
    if not weights_path.is_file():
        raise FileNotFoundError(f"LPIPS backbone weights missing: expected {weights_path}")
    torchvision_state = torch.load(weights_path, map_location="cpu", weights_only=True)
    layer_to_slice = {
        layer_index: slice_name
        for slice_name, slice_module in sliced_backbone.named_children()
        for layer_index, _ in slice_module.named_children()
    }
    sliced_state = {}
    for key, tensor in torchvision_state.items():
        prefix, layer_index, parameter = key.split(".", 2)
        if prefix == "features" and layer_index in layer_to_slice:
            sliced_state[f"{layer_to_slice[layer_index]}.{layer_index}.{parameter}"] = tensor
    sliced_backbone.load_state_dict(sliced_state, strict=True)
