"""Image datasets: HR crops for on-the-fly degradation (training) and LR/HR pairs (validation and test).

Images are read with OpenCV and returned as float32 RGB tensors in [0, 1]: gray images are repeated to three channels,
alpha is dropped, 16-bit images are divided by 65535.

Training crops (spec 5.3): an image smaller than the crop is first reflect-padded at the bottom/right (mirror without
repeating the edge, basicsr's ``cv2.BORDER_REFLECT_101``) until both sides are >= ``crop_size``, then a uniformly random
``crop_size``² window is cut, then a horizontal flip with probability 1/2 and (if ``use_rot``) a vertical flip and a
transpose with probability 1/2 each (basicsr ``augment``). The randomness of item ``i`` comes only from the
``augmentation_seed`` the sampler hands over with it, so crops do not depend on worker count or order.
"""

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | Path) -> np.ndarray | None:
    """RGB float32 HxWx3 array in [0, 1], or ``None`` when the file cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return None
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image.astype(np.float32) / scale


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 array -> contiguous [3, H, W] float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def write_image_atomic(path: str | Path, image: torch.Tensor, overwrite: bool = False) -> Path:
    """Write a [3, H, W] tensor in [0, 1] as an 8-bit image (rounded), via a temp file + ``os.replace``.

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode this file type")
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(encoded.tobytes())
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; images are meant to be shared
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def list_images(folder: str | Path) -> list[Path]:
    """All image files under ``folder`` (recursive), sorted; raises if the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_meta_info(meta_info: str | Path) -> list[Path]:
    """Image paths listed in a meta-info file (first token of each non-empty line; relative paths are relative to
    the meta-info file's folder)."""
    meta_info = Path(meta_info)
    if not meta_info.is_file():
        raise FileNotFoundError(f"{meta_info}: meta-info file does not exist")
    paths = []
    for line in meta_info.read_text().splitlines():
        if line.strip():
            path = Path(line.split()[0])
            paths.append(path if path.is_absolute() else meta_info.parent / path)
    return paths


def pad_to_min_size(image: np.ndarray, min_size: int) -> np.ndarray:
    """Reflect-pad (bottom/right, edge not repeated) until both sides are >= ``min_size``; repeated reflections
    cover images smaller than half the crop."""
    pad_h, pad_w = max(0, min_size - image.shape[0]), max(0, min_size - image.shape[1])
    if pad_h == 0 and pad_w == 0:
        return image
    if min(image.shape[:2]) < 2:
        raise ValueError(f"cannot reflect-pad a {image.shape[0]}x{image.shape[1]} image")
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


def random_crop_augment(
    image: np.ndarray, crop_size: int, rng: np.random.Generator, use_hflip: bool, use_rot: bool
) -> np.ndarray:
    """Pad (see :func:`pad_to_min_size`), crop a random ``crop_size``² window, flip/rotate as in basicsr ``augment``."""
    image = pad_to_min_size(image, crop_size)
    top = int(rng.integers(0, image.shape[0] - crop_size + 1))
    left = int(rng.integers(0, image.shape[1] - crop_size + 1))
    image = image[top : top + crop_size, left : left + crop_size]
    if use_hflip and rng.uniform() < 0.5:
        image = image[:, ::-1]
    if use_rot:
        if rng.uniform() < 0.5:
            image = image[::-1, :]
        if rng.uniform() < 0.5:
            image = image.transpose(1, 0, 2)
    return image


class HRImageDataset(Dataset):
    """HR images from one or several folders (recursive) and/or a meta-info list, as random training crops.

    Items: ``{"gt": [3, crop_size, crop_size] in [0, 1], "path": str}``. Keys are either an index or
    ``(index, augmentation_seed)`` (see :class:`sr.data.datamodule.EpochSeededSampler`); a plain index uses
    ``augmentation_seed = seed``. Files smaller than ``min_file_bytes`` are left out when listing (StableSR skips
    < 100 KB). An unreadable image is skipped with a warning naming it and recorded in ``bad_files`` (per process);
    the next readable image is returned instead.
    """

    def __init__(
        self,
        roots: Sequence[str] = (),
        crop_size: int = 512,
        meta_info: str | None = None,
        use_hflip: bool = True,
        use_rot: bool = False,
        min_file_bytes: int = 0,
        seed: int = 0,
    ):
        if isinstance(roots, str):
            roots = [roots]
        paths = [path for root in roots for path in list_images(root)]
        if meta_info is not None:
            paths += read_meta_info(meta_info)
        self.paths = [path for path in paths if min_file_bytes == 0 or path.stat().st_size >= min_file_bytes]
        if not self.paths:
            raise ValueError(f"no training images found in {list(roots)} / meta_info={meta_info}")
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.crop_size = crop_size
        self.use_hflip = use_hflip
        self.use_rot = use_rot
        self.seed = seed
        self.bad_files: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, augmentation_seed = key if isinstance(key, tuple) else (key, self.seed)
        rng = np.random.default_rng([augmentation_seed, index])
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            image = None if str(path) in self.bad_files else read_image(path)
            if image is not None:
                crop = random_crop_augment(image, self.crop_size, rng, self.use_hflip, self.use_rot)
                return {"gt": image_to_tensor(crop), "path": str(path)}
            if str(path) not in self.bad_files:
                self.bad_files.add(str(path))
                warnings.warn(f"{path}: unreadable image skipped ({len(self.bad_files)} bad so far)", stacklevel=2)
        raise RuntimeError(f"none of the {len(self.paths)} training images can be read")


class PairedImageDataset(Dataset):
    """LR/HR pairs matched by file stem: items ``{"lq": [3, h, w], "gt": [3, H, W], "name": stem}`` in [0, 1]."""

    def __init__(self, lr_dir: str, hr_dir: str):
        lr_files = {path.stem: path for path in list_images(lr_dir)}
        hr_files = {path.stem: path for path in list_images(hr_dir)}
        lr_only, hr_only = sorted(set(lr_files) - set(hr_files)), sorted(set(hr_files) - set(lr_files))
        if lr_only or hr_only:
            raise ValueError(
                f"{lr_dir} / {hr_dir}: unmatched images (by file stem): LR only {lr_only}, HR only {hr_only}"
            )
        if not lr_files:
            raise ValueError(f"{lr_dir} / {hr_dir}: no image pairs found")
        self.names = sorted(lr_files)
        self.lr_files, self.hr_files = lr_files, hr_files

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        images = {}
        for key, path in (("lq", self.lr_files[name]), ("gt", self.hr_files[name])):
            image = read_image(path)
            if image is None:
                raise ValueError(f"{path}: unreadable image in paired set")
            images[key] = image_to_tensor(image)
        return {**images, "name": name}
