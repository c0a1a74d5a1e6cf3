"""Build a fixed synthetic LR/HR test set from an HR folder (how StableSR's DIV2K-Val was made: 512 crops,
``realesrgan`` degradation, LR 128).

    python data/make_synthetic_testset.py --hr-dir data/samples/heldout --out-dir data/samples/heldout_pairs \
        --crop 128 --crop-mode center --degradation conf/degradation/realesrgan.yaml --scale 4 --seed 0

Per image (sorted by name): reflect-pad to >= crop if needed, a centre or seeded random ``crop``² window (the HR),
degraded alone (batch of one, so per-batch choices vary across images) with a generator seeded from
``(seed, image stem)``; the LR is stored as 8-bit PNG (rounded). The HR is the plain crop (not USM-sharpened). Gray
images become 3-channel. Files are written atomically; existing ones are kept unless ``--overwrite``.
"""

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm import tqdm

from sr.data.datasets import pad_to_min_size
from sr.io import ImageReadError, list_images, read_image, write_image


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hr-dir", required=True)
    parser.add_argument("--out-dir", required=True, help="writes <out-dir>/lr and <out-dir>/hr")
    parser.add_argument("--degradation", default="conf/degradation/realesrgan.yaml")
    parser.add_argument("--scale", type=float, default=4)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--crop-mode", choices=("center", "random"), default="center")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    config = OmegaConf.load(args.degradation)
    config.scale = args.scale
    pipeline = instantiate(config)
    out_dir = Path(args.out_dir)
    written = kept = 0
    for path in tqdm(list_images(args.hr_dir), desc="test pairs"):
        lr_path, hr_path = out_dir / "lr" / f"{path.stem}.png", out_dir / "hr" / f"{path.stem}.png"
        if lr_path.exists() and hr_path.exists() and not args.overwrite:
            kept += 1
            continue
        try:
            image = read_image(path).rgb
        except ImageReadError as error:
            print(error, file=sys.stderr)
            return 1
        seed = item_seed(args.seed, path.stem)
        hr = crop_image(image, args.crop, args.crop_mode, np.random.default_rng(seed))
        lq, _ = pipeline(hr[None], torch.Generator().manual_seed(seed))
        write_image(hr_path, hr, overwrite=True)
        write_image(lr_path, lq[0], overwrite=True)
        written += 1
    print(f"{written} pairs written, {kept} kept, in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
