"""Where each metric's pretrained weights must lie, and the report string when they do not.

Nothing here (or anywhere in ``sr.metrics``) downloads: every loader calls :func:`missing_weights` first and, when a
file is absent, the metric is reported as ``"n/a (missing <file>, expected at <location>)"`` with a warning that also
names the folder on this machine. ``<location>`` is written below ``$TORCH_HOME`` / ``$HF_HOME`` (as in the list
below), not as this machine's absolute path, so scores and reports read the same everywhere. The paths are the exact
ones the owning libraries look up, so dropping the file there is enough:

- torchvision backbones (LPIPS):    ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``
  (the LPIPS linear heads ship inside the ``lpips`` package);
- torch-fidelity Inception (FID):   ``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``;
- pyiqa MUSIQ (KonIQ):              ``$TORCH_HOME/hub/pyiqa/musiq_koniq_ckpt-e95806b9.pth``;
- pyiqa CLIP-IQA (OpenAI CLIP RN50): ``$TORCH_HOME/hub/clip/RN50.pt``;
- pyiqa MANIQA (KonIQ):             ``$TORCH_HOME/hub/pyiqa/ckpt_koniq10k.pt`` plus the timm ViT-B/8 backbone in the
  Hugging Face cache, ``$HF_HOME/hub/models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k/snapshots/<rev>/
  model.safetensors``.

``$TORCH_HOME`` defaults to ``~/.cache/torch`` (``torch.hub.get_dir()`` is ``$TORCH_HOME/hub``).
"""

import warnings
from pathlib import Path

import torch

TORCHVISION_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
PYIQA_FILES = {
    "musiq": ("pyiqa", "musiq_koniq_ckpt-e95806b9.pth"),
    "clipiqa": ("clip", "RN50.pt"),
    "maniqa": ("pyiqa", "ckpt_koniq10k.pt"),
}
MANIQA_BACKBONE_REPO = "timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"
MANIQA_BACKBONE_FILE = "model.safetensors"


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``: ``$TORCH_HOME/hub``, read at call time so a changed ``TORCH_HOME`` is honoured."""
    return Path(torch.hub.get_dir())


def checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where torchvision and torch-fidelity cache their weights."""
    return torch_hub_dir() / "checkpoints"


def torchvision_backbone_path(net: str) -> Path:
    """The ImageNet weights torchvision would fetch for the LPIPS backbone ``net`` (``alex`` or ``vgg``)."""
    if net not in TORCHVISION_BACKBONE_FILES:
        raise ValueError(f"LPIPS backbone must be one of {sorted(TORCHVISION_BACKBONE_FILES)}, got {net!r}")
    return checkpoints_dir() / TORCHVISION_BACKBONE_FILES[net]


def inception_path() -> Path:
    """The FID Inception-v3 weights torch-fidelity would fetch (TF 2015-12-05 graph, converted)."""
    return checkpoints_dir() / INCEPTION_FILE


def pyiqa_weight_path(metric: str) -> Path:
    """The file pyiqa loads for ``metric`` (one of ``musiq``, ``clipiqa``, ``maniqa``)."""
    if metric not in PYIQA_FILES:
        raise ValueError(f"no pyiqa weight file known for {metric!r}; known: {sorted(PYIQA_FILES)}")
    subdir, file_name = PYIQA_FILES[metric]
    return torch_hub_dir() / subdir / file_name


def maniqa_backbone_path() -> Path | None:
    """The cached timm ViT-B/8 that MANIQA builds before loading its own weights, or None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(MANIQA_BACKBONE_REPO, MANIQA_BACKBONE_FILE)
    return Path(cached) if isinstance(cached, str) else None


def maniqa_backbone_expected_path() -> Path:
    """Where the Hugging Face cache keeps the MANIQA backbone (``<rev>`` is the snapshot's commit hash)."""
    from huggingface_hub import constants

    repo_folder = "models--" + MANIQA_BACKBONE_REPO.replace("/", "--")
    return Path(constants.HF_HUB_CACHE) / repo_folder / "snapshots" / "<rev>" / MANIQA_BACKBONE_FILE


def portable_location(path: Path) -> str:
    """``path`` written below ``$TORCH_HOME/hub`` or ``$HF_HOME/hub`` when it lies there (as the module docstring
    lists the files), else as it is."""
    from huggingface_hub import constants

    for variable, folder in (("$TORCH_HOME/hub", torch_hub_dir()), ("$HF_HOME/hub", Path(constants.HF_HUB_CACHE))):
        if path.is_relative_to(folder):
            return f"{variable}/{path.relative_to(folder).as_posix()}"
    return str(path)


def not_available(metric: str, reason: str, here: Path | None = None) -> str:
    """The value reported for a metric that cannot be computed: ``"n/a (<reason>)"``, with a warning (which also
    names ``here``, the expected file's path on this machine)."""
    message = f"n/a ({reason})"
    warnings.warn(f"{metric}: {message}" + (f" (here: {here})" if here is not None else ""), stacklevel=2)
    return message


def missing_weights(metric: str, path: Path) -> str | None:
    """None when ``path`` exists, else ``"n/a (missing <file>, expected at <portable location>)"`` (and a
    warning)."""
    if path.is_file():
        return None
    return not_available(metric, f"missing {path.name}, expected at {portable_location(path)}", here=path)
