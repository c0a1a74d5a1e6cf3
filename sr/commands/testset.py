"""Build a fixed synthetic LR/HR test set from an HR folder (how StableSR's DIV2K-Val was made: 512 crops,
``realesrgan`` degradation, LR 128).

    python -m sr.commands.testset hr_dir=data/samples/heldout out_dir=data/samples/heldout_pairs crop=384 \
        [degradation=realesrgan degradation.scale=4 crop_mode=center seed=0 overwrite=true]

Per image (sorted by name): reflect-pad to >= crop if needed, a centre or seeded random ``crop``² window (the HR),
degraded alone (batch of one, so per-batch choices vary across images) with a generator seeded from
``(seed, image stem)``; the LR is stored as 8-bit PNG (rounded). The HR is the plain crop (not USM-sharpened). Gray
images become 3-channel. Files are written atomically; existing ones are kept unless ``overwrite=true``.
"""

import zlib
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from sr.commands.config import CONFIG_DIR
from sr.data.datasets import pad_to_min_size
from sr.errors import ConfigError, one_line_errors
from sr.io import list_images, read_image, write_image

CROP_MODES = ("center", "random")


def item_seed(seed: int, stem: str) -> int:
    """Per-image seed from the global seed and the file stem (stable when other files are added)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(stem.encode())]).generate_state(1)[0])


def crop_image(image: torch.Tensor, crop: int, mode: str, rng: np.random.Generator) -> torch.Tensor:
    """A centre or random ``crop``² window of a ``[C, H, W]`` image, reflect-padded first if it is smaller."""
    image = pad_to_min_size(image, crop)
    if mode == "center":
        top, left = (image.shape[-2] - crop) // 2, (image.shape[-1] - crop) // 2
    else:
        top = int(rng.integers(0, image.shape[-2] - crop + 1))
        left = int(rng.integers(0, image.shape[-1] - crop + 1))
    return image[:, top : top + crop, left : left + crop].contiguous()


def make_test_pairs(cfg: DictConfig) -> tuple[int, int]:
    """Write ``<out_dir>/{lr,hr}/<stem>.png`` for every image of ``hr_dir``; returns (written, kept) counts."""
    if cfg.crop_mode not in CROP_MODES:
        raise ConfigError(f"crop_mode={cfg.crop_mode!r}: must be one of {CROP_MODES}")
    pipeline = instantiate(cfg.degradation)
    out_dir = Path(cfg.out_dir)
    written = kept = 0
    for path in tqdm(list_images(cfg.hr_dir), desc="test pairs"):
        lr_path, hr_path = out_dir / "lr" / f"{path.stem}.png", out_dir / "hr" / f"{path.stem}.png"
        if lr_path.exists() and hr_path.exists() and not cfg.overwrite:
            kept += 1
            continue
        image = read_image(path).rgb
        seed = item_seed(cfg.seed, path.stem)
        hr = crop_image(image, cfg.crop, cfg.crop_mode, np.random.default_rng(seed))
        lq, _ = pipeline(hr[None], torch.Generator().manual_seed(seed))
        write_image(hr_path, hr, overwrite=True)
        write_image(lr_path, lq[0], overwrite=True)
        written += 1
    return written, kept


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="testset")
def main(cfg: DictConfig) -> None:
    with one_line_errors("sr.commands.testset", cfg.get("debug", False)):
        written, kept = make_test_pairs(cfg)
    print(f"{written} pairs written, {kept} kept, in {cfg.out_dir}")


if __name__ == "__main__":
    main()
