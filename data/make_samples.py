"""Write the bundled sample photographs (``data/samples/train`` and ``data/samples/heldout``) from scikit-image.

    python data/make_samples.py [--dest data/samples] [--overwrite]

Every photo comes from ``skimage.data`` (scikit-image 0.26 ships them in the wheel: nothing is downloaded); licences
are in ``data/samples/LICENSE.md``. Training photos are resized (PIL Lanczos) so the longer side is
``TRAIN_LONG_SIDE``; held-out photos keep their native size, because the evaluation pairs
(``python -m sr.commands.testset``) take 384 px centre crops from them. Gray photos are stored gray (the loaders make
them 3-channel). The PNGs are committed: this script records where they came from and rewrites them byte for byte.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import skimage
import skimage.data
from PIL import Image

from sr.io import write_bytes_atomic

TRAIN_LONG_SIDE = 384

# file stem -> (skimage.data function, optional (top, left, side) crop of the original before resizing)
TRAIN = {
    "astronaut": ("astronaut", None),
    "chelsea": ("chelsea", None),
    "hubble": ("hubble_deep_field", (200, 200, 512)),
    "immunohistochemistry": ("immunohistochemistry", None),
    "retina": ("retina", None),
    "brick": ("brick", None),
    "grass": ("grass", None),
    "gravel": ("gravel", None),
    "moon": ("moon", None),
    "coins": ("coins", None),
    "clock": ("clock", None),
    "page": ("page", None),
    "cell": ("cell", None),
}
HELDOUT = {"coffee": "coffee", "camera": "camera", "rocket": "rocket"}


def png_bytes(array: np.ndarray) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


def train_photo(function: str, crop: tuple[int, int, int] | None) -> np.ndarray:
    image = getattr(skimage.data, function)()
    if crop is not None:
        top, left, side = crop
        image = image[top : top + side, left : left + side]
    height, width = image.shape[:2]
    scale = TRAIN_LONG_SIDE / max(height, width)
    size = (round(width * scale), round(height * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent / "samples")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    if skimage.__version__.split(".")[:2] != ["0", "26"]:
        print(f"make_samples: warning: scikit-image {skimage.__version__}, the bundled files came from 0.26",
              file=sys.stderr)
    photos = {f"train/{stem}.png": train_photo(*spec) for stem, spec in TRAIN.items()}
    photos |= {f"heldout/{stem}.png": getattr(skimage.data, function)() for stem, function in HELDOUT.items()}
    for relative, array in photos.items():
        path = args.dest / relative
        if path.exists() and not args.overwrite:
            print(f"kept {path} (exists; --overwrite replaces it)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, png_bytes(array), overwrite=True)
        print(f"wrote {path} {array.shape[1]}x{array.shape[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
