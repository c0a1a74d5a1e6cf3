"""Write the bundled sample photographs (``data/samples``: train, heldout, colour_pairs) from photos inside wheels.

    python data/make_samples.py [--dest data/samples] [--overwrite]

Nothing is downloaded; licences are in ``data/samples/LICENSE.md``. ``train`` and ``heldout`` come from
``skimage.data`` (scikit-image 0.26); ``train`` also holds nine CC-BY-4.0 / CC0 photographs from Debian's
``lomiri-wallpapers-16.04`` package (``apt-get install lomiri-wallpapers-16.04``: ``/usr/share/backgrounds``), the
strongly coloured scenes (red, orange, saturated greens and blues, paint) that scikit-image's mostly earthy photos lack;
without that package they are skipped with a note of what to install (the script then exits 1). Training photos are
resized (PIL Lanczos) so the longer side is
``TRAIN_LONG_SIDE``; held-out photos keep their native size, because the evaluation pairs
(``python -m sr.commands.testset``) take 384 px centre crops from them. Gray photos are stored gray (the loaders make
them 3-channel).

``colour_pairs/{hr,lr}`` is a second evaluation set of strongly coloured images never trained on: ``COLOUR_SIDE`` px
crops (HR) of scikit-learn 1.9.1's two sample photos, and their LR, the HR reduced
``COLOUR_SCALE`` times by PIL's bicubic resize (antialiased, as MATLAB's ``imresize``: the classic bicubic-degradation
benchmark; no degradation beyond it). scikit-learn is not a dependency of this project (the ``samples`` extra installs
it): the photos are read from its installed package folder without importing it, and without it the colour set is
skipped with a note of what to install (the script then exits 1).

The PNGs are committed: this script records where they came from and rewrites them byte for byte (the JPEG photos
decoded by Pillow's libjpeg, whose version is part of that promise).
"""

import argparse
import importlib.metadata
import importlib.util
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
# file stem -> photo in Debian's lomiri-wallpapers-16.04 (20.04.0-2), whose debian/copyright gives each licence.
# Photos only: the package's other CC-BY(-SA)-4.0 files are drawings or synthetic gradients, or CC-BY-SA.
DEBIAN_BACKGROUNDS = Path("/usr/share/backgrounds")
DEBIAN_PACKAGE = "lomiri-wallpapers-16.04"
DEBIAN_INSTALL = f"apt-get install {DEBIAN_PACKAGE}"
TRAIN_DEBIAN = {
    "mountain_autumn": "aitzgorri_by_Aitzol_Berasategi.jpg",
    "dogs_window": "friends_by_Aitzol_Berasategi.jpg",
    "forest_stream": "life_by_Aitzol_Berasategi.jpg",
    "mountain_path": "picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "fig_bowl": "Picture_0B_by_freespace.jpg",
    "paint_brushes": "Picture_1A_by_freespace.jpg",
    "dandelions": "seeding_by_Clements_Engelhardt.jpg",
    "sunset_hill": "sunset_by_Aitzol_Berasategi.jpg",
    "room_wine": "Wine_by_Jakkub_Mede.jpg",
}
HELDOUT = {"coffee": "coffee", "camera": "camera", "rocket": "rocket"}

COLOUR_SIDE = 256
COLOUR_SCALE = 4
SKLEARN_VERSION = "1.9.1"
SKLEARN_INSTALL = f"pip install scikit-learn=={SKLEARN_VERSION}"
# file stem -> (package, image, (top, left) of the COLOUR_SIDE crop); package "sklearn": a file in
# sklearn/datasets/images, "skimage": a skimage.data function. Crops chosen for saturated colour: the pagoda's red
# and green (a building), lake and trees (blue, green), the dahlia (orange, yellow), a second dahlia before teal
# leaves. Photos only: a smooth synthetic image (scikit-image's colour wheel) lets bicubic reach 54 dB and would set
# the set's mean.
COLOUR = {
    "china_pagoda": ("sklearn", "china.jpg", (120, 60)),
    "china_lake": ("sklearn", "china.jpg", (171, 384)),
    "flower_dahlia": ("sklearn", "flower.jpg", (85, 180)),
    "flower_leaves": ("sklearn", "flower.jpg", (171, 300)),
}


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
    return resized_for_training(image)


def resized_for_training(image: np.ndarray) -> np.ndarray:
    """``image`` resized (PIL Lanczos) so that its longer side is ``TRAIN_LONG_SIDE``."""
    height, width = image.shape[:2]
    scale = TRAIN_LONG_SIDE / max(height, width)
    size = (round(width * scale), round(height * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def missing_debian_photos() -> list[Path]:
    """The ``TRAIN_DEBIAN`` photos that are not on disk (all of them when the Debian package is not installed)."""
    return [DEBIAN_BACKGROUNDS / name for name in TRAIN_DEBIAN.values() if not (DEBIAN_BACKGROUNDS / name).is_file()]


def debian_photos() -> dict[str, np.ndarray] | None:
    """``train/<stem>.png`` -> image for every ``TRAIN_DEBIAN`` photo; None (with a one-line note on stderr) when the
    Debian package that holds them is not installed."""
    if missing := missing_debian_photos():
        print(f"make_samples: {len(missing)} training photos skipped ({missing[0]} missing): "
              f"{DEBIAN_INSTALL}", file=sys.stderr)
        return None
    photos = {}
    for stem, name in TRAIN_DEBIAN.items():
        with Image.open(DEBIAN_BACKGROUNDS / name) as photo:
            photos[f"train/{stem}.png"] = resized_for_training(np.asarray(photo.convert("RGB")))
    return photos


def sklearn_images() -> Path | None:
    """scikit-learn's sample photo folder (``sklearn/datasets/images``), found without importing scikit-learn; None
    when it is not installed."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "datasets" / "images"


def colour_pair(package: str, image: str, corner: tuple[int, int],
                images: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) of one colour-set entry: the ``COLOUR_SIDE`` px crop at ``corner`` of the photo, and that crop resized
    to ``COLOUR_SIDE / COLOUR_SCALE`` px by PIL's bicubic."""
    if package == "sklearn":
        with Image.open(images / image) as photo:
            array = np.asarray(photo.convert("RGB"))
    else:
        array = getattr(skimage.data, image)()
    top, left = corner
    hr = array[top : top + COLOUR_SIDE, left : left + COLOUR_SIDE]
    if hr.shape[:2] != (COLOUR_SIDE, COLOUR_SIDE):
        raise ValueError(f"{package} {image}: the {COLOUR_SIDE} px crop at {corner} leaves the {array.shape[1]}x"
                         f"{array.shape[0]} photo")
    side = COLOUR_SIDE // COLOUR_SCALE
    return hr, np.asarray(Image.fromarray(hr).resize((side, side), Image.BICUBIC))


def colour_photos() -> dict[str, np.ndarray] | None:
    """``colour_pairs/{hr,lr}/<stem>.png`` -> image for every ``COLOUR`` entry; None (with a one-line note on
    stderr) when scikit-learn, which holds most of the photos, is not installed."""
    images = sklearn_images()
    if images is None:
        print(f"make_samples: colour_pairs skipped: its photos ship with scikit-learn, "
              f"{SKLEARN_INSTALL}", file=sys.stderr)
        return None
    if importlib.metadata.version("scikit-learn") != SKLEARN_VERSION:
        print(f"make_samples: warning: scikit-learn {importlib.metadata.version('scikit-learn')}, the bundled "
              f"colour_pairs came from {SKLEARN_VERSION}", file=sys.stderr)
    photos = {}
    for stem, spec in COLOUR.items():
        hr, lr = colour_pair(*spec, images)
        photos |= {f"colour_pairs/hr/{stem}.png": hr, f"colour_pairs/lr/{stem}.png": lr}
    return photos


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
    debian = debian_photos()
    photos |= debian or {}
    colour = colour_photos()
    photos |= colour or {}
    for relative, array in photos.items():
        path = args.dest / relative
        if path.exists() and not args.overwrite:
            print(f"kept {path} (exists; --overwrite replaces it)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, png_bytes(array), overwrite=True)
        print(f"wrote {path} {array.shape[1]}x{array.shape[0]}")
    return 0 if colour is not None and debian is not None else 1


if __name__ == "__main__":
    sys.exit(main())
