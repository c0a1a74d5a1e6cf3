"""Image datasets: HR crops for on-the-fly degradation (training) and LR/HR pairs (validation and test).

Images are read with :func:`sr.io.read_image` and returned as float32 ``[3, H, W]`` RGB tensors in [0, 1]: gray images
are repeated to three channels, alpha is dropped, 16-bit images are divided by 65535.

Training crops (docs/method.md#training-data): an image smaller than the crop is first reflect-padded at the bottom/right (mirror without
repeating the edge, basicsr's ``cv2.BORDER_REFLECT_101``) until both sides are >= ``crop_size``, then a uniformly random
``crop_size``² window is cut, then a horizontal flip with probability 1/2 and (if ``use_rot``) a vertical flip and a
transpose with probability 1/2 each (basicsr ``augment``). The randomness of item ``i`` comes only from the
``augmentation_seed`` the sampler hands over with it, so crops do not depend on worker count or order.
"""

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sr.data.augment import colour_jitter
from sr.io import ImageReadError, list_images, read_image
from sr.utils.distributed import derived_seed


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


def pad_to_min_size(image: torch.Tensor, min_size: int) -> torch.Tensor:
    """Reflect-pad a ``[C, H, W]`` image (bottom/right, edge not repeated) until both sides are >= ``min_size``;
    repeated reflections cover images smaller than half the crop."""
    pad_h, pad_w = max(0, min_size - image.shape[-2]), max(0, min_size - image.shape[-1])
    if pad_h == 0 and pad_w == 0:
        return image
    if min(image.shape[-2:]) < 2:
        raise ValueError(f"cannot reflect-pad a {image.shape[-2]}x{image.shape[-1]} image")
    # numpy repeats the reflection when the pad exceeds the image side; torch's reflect pad refuses that case.
    return torch.from_numpy(np.pad(image.numpy(), ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect"))


def random_crop_augment(
    image: torch.Tensor, crop_size: int, rng: np.random.Generator, use_hflip: bool, use_rot: bool,
    use_colour_jitter: bool = False,
) -> torch.Tensor:
    """Pad (see :func:`pad_to_min_size`), crop a random ``crop_size``² window of a ``[C, H, W]`` image, flip/rotate
    as in basicsr ``augment``, then (``use_colour_jitter``) a random hue/saturation/brightness
    (:func:`sr.data.augment.colour_jitter`)."""
    image = pad_to_min_size(image, crop_size)
    top = int(rng.integers(0, image.shape[-2] - crop_size + 1))
    left = int(rng.integers(0, image.shape[-1] - crop_size + 1))
    image = image[:, top : top + crop_size, left : left + crop_size]
    if use_hflip and rng.uniform() < 0.5:
        image = image.flip(-1)
    if use_rot:
        if rng.uniform() < 0.5:
            image = image.flip(-2)
        if rng.uniform() < 0.5:
            image = image.transpose(-2, -1)
    if use_colour_jitter:
        image = colour_jitter(image, rng)
    return image.contiguous()


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
        use_colour_jitter: bool = False,
    ):
        if isinstance(roots, str):
            roots = [roots]
        paths = [path for root in roots for path in list_images(root, recursive=True)]
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
        self.use_colour_jitter = use_colour_jitter
        self.seed = seed
        self.bad_files: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, augmentation_seed = key if isinstance(key, tuple) else (key, self.seed)
        rng = np.random.default_rng(derived_seed(augmentation_seed, index))
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            if str(path) in self.bad_files:
                continue
            try:
                image = read_image(path).rgb
            except ImageReadError as error:
                self.bad_files.add(str(path))
                warnings.warn(f"{error}; unreadable image skipped ({len(self.bad_files)} bad so far)", stacklevel=2)
                continue
            crop = random_crop_augment(image, self.crop_size, rng, self.use_hflip, self.use_rot,
                                       self.use_colour_jitter)
            return {"gt": crop, "path": str(path)}
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
        return {"lq": read_image(self.lr_files[name]).rgb, "gt": read_image(self.hr_files[name]).rgb, "name": name}
