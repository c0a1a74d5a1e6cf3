"""The one table of metrics: name -> kind, direction, definition, and the library that computes it.

pyiqa (IQA-PyTorch, pinned 0.1.16) produced StableSR's published numbers (maintainers, StableSR issue #45), so every
metric whose pyiqa implementation runs from local files is computed by pyiqa itself. Our own code (on other
libraries) remains only where pyiqa cannot be used as the published tables need it; each entry's ``backend`` says
which and why:

=============  =========  ===============================================  ==========================================
name           kind       definition                                       backend
=============  =========  ===============================================  ==========================================
``psnr``       per image  PSNR on RGB, dB (80 dB cap: MSE eps 1e-8)        pyiqa ``psnr``
``ssim``       per image  SSIM on RGB (mean of the three channels)         pyiqa ``ssimc``
``psnr_y``     per image  PSNR on Y = 0.299R+0.587G+0.114B                 pyiqa ``psnry`` (StableSR's tables)
``ssim_y``     per image  SSIM on that Y rounded to 8 bits                 pyiqa ``ssim`` (StableSR's tables)
``psnr_ycbcr`` per image  PSNR on studio-swing Y (65.481R+128.553G+        pyiqa ``psnr`` with ``color_space='ycbcr'``
                          24.966B+16)/255 (classic SR tables; ~1.3 dB
                          above psnr_y)
``ssim_ycbcr`` per image  SSIM on that Y rounded to 8 bits                 pyiqa ``ssim`` with ``color_space='ycbcr'``
``lpips_alex`` per image  LPIPS v0.1, AlexNet (lower)                      own: ``lpips`` package (see below)
``lpips_vgg``  per image  LPIPS v0.1, VGG-16 (lower)                       own: ``lpips`` package (see below)
``niqe``       per image  NIQE on the MATLAB Y channel (lower)             own: basicsr (see below)
``musiq``      per image  MUSIQ, KonIQ-10k head                            pyiqa ``musiq``
``clipiqa``    per image  CLIP-IQA (CLIP RN50, antonym prompts)            pyiqa ``clipiqa``
``maniqa``     per image  MANIQA, KonIQ-10k                                pyiqa ``maniqa`` (seeded random crops)
``fid``        set level  FID, SR set vs GT set, clean-fid resize (lower)  own: torch-fidelity + torchmetrics (below)
``fid_patch``  set level  FID over ``fid_patch_size`` patches (lower)      own: as ``fid``; pyiqa has no patch FID
=============  =========  ===============================================  ==========================================

Where and why our own code stays:

- LPIPS: same network, heads and formula as pyiqa's port, but pyiqa's ``LPIPS`` asks torchvision to download the
  ImageNet backbone while it is built and fetches its heads from the web; the ``lpips`` package ships the heads and
  lets :mod:`sr.metrics.full_reference` read the backbone from the named local file or take a stand-in.
- NIQE: pyiqa downloads its pristine-model ``.mat`` and uses the YIQ luma; basicsr ships the MATLAB pristine model
  and uses the MATLAB Y, as NIQE's reference code does.
- FID: pyiqa computes FID only between two folders with a network it downloads; we need tensor sets (eval scores
  in memory), patch-level FID, a local Inception file and a stand-in extractor for tests. The pipeline follows
  pyiqa's ``mode='clean'`` (PIL bicubic to 299 in float) except that the resized image is rounded to 8 bits
  (torch-fidelity's Inception takes uint8), at most half a grey level per pixel (see :mod:`sr.metrics.fid`).

Every metric that needs pretrained weights checks for them first and is ``"n/a (missing <file>, expected at
<path>)"`` when they are absent (:mod:`sr.metrics.weights`); nothing downloads.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from sr.metrics.fid import FID, load_inception
from sr.metrics.full_reference import LPIPS, psnr, ssim
from sr.metrics.no_reference import PyiqaNoReference, niqe, niqe_size_problem, pyiqa_unavailable
from sr.metrics.weights import inception_path, missing_weights, torchvision_backbone_path

FULL_REFERENCE = "full_reference"
NO_REFERENCE = "no_reference"
SET_LEVEL = "set_level"

Score = float | str
# full reference: (sr, hr) -> score; no reference: (sr) -> score; set level: FID (called with two uint8 image sets)
Scorer = Callable[..., Score] | FID


@dataclass
class MetricContext:
    """What the metric builders share: scoring settings, stand-in networks for tests, the loaded FID network."""

    crop_border: int
    device: torch.device
    seed: int
    fid_patch_size: int
    lpips_backbones: dict[str, nn.Module] = field(default_factory=dict)
    fid_feature_extractor: nn.Module | None = None

    def fid_extractor(self) -> nn.Module | str:
        """The stand-in, else the Inception network loaded once, else the ``"n/a (missing ...)"`` string."""
        if self.fid_feature_extractor is None:
            missing = missing_weights("fid", inception_path())
            if missing:
                return missing
            self.fid_feature_extractor = load_inception(inception_path())
        return self.fid_feature_extractor


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``build(context)`` returns its scorer, or the ``"n/a (...)"`` string when it cannot run."""

    name: str
    kind: str
    lower_is_better: bool
    definition: str
    backend: str
    build: Callable[[MetricContext], Scorer | str]


def _colour_metric(function: Callable, space: str) -> Callable[[MetricContext], Scorer]:
    def build(context: MetricContext) -> Scorer:
        return lambda sr, hr: float(function(sr, hr, context.crop_border, space).item())

    return build


def _lpips(net: str) -> Callable[[MetricContext], Scorer | str]:
    def build(context: MetricContext) -> Scorer | str:
        backbone = context.lpips_backbones.get(net)
        if backbone is None:
            missing = missing_weights(f"lpips_{net}", torchvision_backbone_path(net))
            if missing:
                return missing
        model = LPIPS(net, backbone=backbone).to(context.device)
        return lambda sr, hr: float(model(sr, hr).item())

    return build


def _niqe(context: MetricContext) -> Scorer:
    def score(sr: torch.Tensor) -> Score:
        problem = niqe_size_problem(sr.shape[-2], sr.shape[-1], context.crop_border)
        return f"n/a ({problem})" if problem else niqe(sr, context.crop_border)

    return score


def _pyiqa_no_reference(metric: str) -> Callable[[MetricContext], Scorer | str]:
    def build(context: MetricContext) -> Scorer | str:
        return pyiqa_unavailable(metric) or PyiqaNoReference(metric, context.device, context.seed)

    return build


def _fid(patched: bool) -> Callable[[MetricContext], Scorer | str]:
    def build(context: MetricContext) -> Scorer | str:
        extractor = context.fid_extractor()
        if isinstance(extractor, str):
            return extractor
        return FID(extractor, device=context.device, patch_size=context.fid_patch_size if patched else None)

    return build


_LPIPS_BACKEND = "own: lpips package (heads ship with it, backbone from a local file; pyiqa's LPIPS downloads both)"
_FID_BACKEND = (
    "own: torch-fidelity Inception-v3 pool3 + torchmetrics Frechet distance, clean-fid PIL-bicubic resize to 299 "
    "rounded to uint8 (pyiqa's FID takes only folders and downloads its network)"
)
METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("psnr", FULL_REFERENCE, False, "PSNR on RGB, dB, 80 dB cap (MSE eps 1e-8)", "pyiqa psnr",
                   _colour_metric(psnr, "rgb")),
        MetricSpec("ssim", FULL_REFERENCE, False, "SSIM on RGB, 11x11 Gaussian sigma 1.5, valid filtering, "
                   "mean of the channels", "pyiqa ssimc", _colour_metric(ssim, "rgb")),
        MetricSpec("psnr_y", FULL_REFERENCE, False, "PSNR on pyiqa's Y = 0.299R+0.587G+0.114B (StableSR's tables)",
                   "pyiqa psnry", _colour_metric(psnr, "y")),
        MetricSpec("ssim_y", FULL_REFERENCE, False, "SSIM on pyiqa's Y = 0.299R+0.587G+0.114B rounded to 8 bits "
                   "(StableSR's tables)", "pyiqa ssim", _colour_metric(ssim, "y")),
        MetricSpec("psnr_ycbcr", FULL_REFERENCE, False, "PSNR on studio-swing Y = (65.481R+128.553G+24.966B+16)/255 "
                   "(classic SR tables)", "pyiqa psnr, color_space=ycbcr", _colour_metric(psnr, "ycbcr")),
        MetricSpec("ssim_ycbcr", FULL_REFERENCE, False, "SSIM on studio-swing Y rounded to 8 bits (classic SR "
                   "tables)", "pyiqa ssim, color_space=ycbcr", _colour_metric(ssim, "ycbcr")),
        MetricSpec("lpips_alex", FULL_REFERENCE, True, "LPIPS v0.1, AlexNet, inputs [0,1] mapped to [-1,1]",
                   _LPIPS_BACKEND, _lpips("alex")),
        MetricSpec("lpips_vgg", FULL_REFERENCE, True, "LPIPS v0.1, VGG-16, inputs [0,1] mapped to [-1,1]",
                   _LPIPS_BACKEND, _lpips("vgg")),
        MetricSpec("niqe", NO_REFERENCE, True, "NIQE on the MATLAB Y channel rounded to integers",
                   "own: basicsr (ships the MATLAB pristine model; pyiqa downloads its own)", _niqe),
        MetricSpec("musiq", NO_REFERENCE, False, "MUSIQ, KonIQ-10k head, full image", "pyiqa musiq",
                   _pyiqa_no_reference("musiq")),
        MetricSpec("clipiqa", NO_REFERENCE, False, "CLIP-IQA, CLIP RN50 with antonym prompt pairs", "pyiqa clipiqa",
                   _pyiqa_no_reference("clipiqa")),
        MetricSpec("maniqa", NO_REFERENCE, False, "MANIQA, KonIQ-10k, random crops seeded by the run's seed",
                   "pyiqa maniqa", _pyiqa_no_reference("maniqa")),
        MetricSpec("fid", SET_LEVEL, True, "image-level FID, SR set vs GT set", _FID_BACKEND, _fid(patched=False)),
        MetricSpec("fid_patch", SET_LEVEL, True, "FID over non-overlapping fid_patch_size patches of every image",
                   _FID_BACKEND, _fid(patched=True)),
    )
}

METRIC_NAMES = tuple(METRICS)
FULL_REFERENCE_METRICS = tuple(name for name, spec in METRICS.items() if spec.kind == FULL_REFERENCE)
PER_IMAGE_METRICS = tuple(name for name, spec in METRICS.items() if spec.kind != SET_LEVEL)
SET_LEVEL_METRICS = tuple(name for name, spec in METRICS.items() if spec.kind == SET_LEVEL)
LOWER_IS_BETTER = frozenset(name for name, spec in METRICS.items() if spec.lower_is_better)
