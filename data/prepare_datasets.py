"""Lay out the public SR data sets, downloaded by the user, in the folders the data configs expect.

    python data/prepare_datasets.py --downloads ~/Downloads/sr --dest ${STABLESR_DATA:-data/datasets} [--sets ...]

``--downloads`` holds the archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``) or already extracted folders, with their
official names; archives are extracted once into ``<dest>/_extracted/``. Images are then symlinked into:

    DF2K_OST/GT/                         DIV2K_train_HR + Flickr2K_HR + OST (training; names must not collide)
    DIV8K/train_HR/                      DIV8K training HR
    FFHQ/images1024x1024/                FFHQ-1024; meta_info/ffhq_first10000.txt lists the first 10000 sorted
    StableSR_testsets/<set>/{lq,gt}/     DIV2K_V2_val, RealSRVal_crop128, DrealSRVal_crop128 (StableSR-TestSets)

Checks: each source folder must be found, hold at least the expected number of images (where the official count
is known) and every image must decode (``PIL.Image.verify``); test sets must pair by file stem. Problems are printed
as one list and the exit status is 1.
"""

import argparse
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from sr.io import list_images, write_bytes_atomic

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
LQ_FOLDER_NAMES = ("lq", "LR", "test_LR", "input", "inputs")
GT_FOLDER_NAMES = ("gt", "HR", "test_HR", "gts")


@dataclass(frozen=True)
class Source:
    """One downloaded image folder: found by ``folder_name`` (a name or a relative path such as
    ``DIV8K/train_HR``) anywhere under the downloads/extractions."""

    folder_name: str
    min_images: int = 1


@dataclass(frozen=True)
class TrainingSet:
    sources: tuple[Source, ...]
    target: str
    meta_info: tuple[str, int] | None = None  # (file under meta_info/, number of sorted images listed)


@dataclass(frozen=True)
class PairedSet:
    folder_name: str


TRAINING_SETS = {
    "df2k_ost": TrainingSet(
        (Source("DIV2K_train_HR", 800), Source("Flickr2K_HR", 2650), Source("OST")), "DF2K_OST/GT"
    ),
    "div8k": TrainingSet((Source("DIV8K/train_HR", 1500),), "DIV8K/train_HR"),
    "ffhq": TrainingSet((Source("images1024x1024", 10000),), "FFHQ/images1024x1024", ("ffhq_first10000.txt", 10000)),
}
PAIRED_SETS = {
    "div2k_val": PairedSet("DIV2K_V2_val"),
    "realsr": PairedSet("RealSRVal_crop128"),
    "drealsr": PairedSet("DrealSRVal_crop128"),
}


def archive_stem(path: Path) -> str | None:
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def extract_archives(downloads: Path, extracted: Path, problems: list[str]) -> None:
    """Extract every archive in ``downloads`` into ``extracted/<archive stem>`` (skipped when already there)."""
    for archive in sorted(downloads.iterdir()):
        stem = archive_stem(archive)
        if stem is None or not archive.is_file() or (extracted / stem).is_dir():
            continue
        staging = extracted / f".{stem}.partial"
        try:
            if archive.name.endswith(".zip"):
                with zipfile.ZipFile(archive) as handle:
                    handle.extractall(staging)
            else:
                with tarfile.open(archive) as handle:
                    handle.extractall(staging, filter="data")
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as error:
            problems.append(f"{archive}: corrupt archive ({error})")
            continue
        staging.rename(extracted / stem)


def find_folder(roots: list[Path], name: str) -> Path | None:
    """The first folder called ``name`` (shallowest, then sorted) under any of ``roots``."""
    matches = [path for root in roots if root.is_dir() for path in root.rglob(name) if path.is_dir()]
    matches += [root / name for root in roots if (root / name).is_dir()]
    return min(matches, key=lambda path: (len(path.parts), str(path))) if matches else None


def verify_images(paths: list[Path], problems: list[str], desc: str) -> None:
    for path in tqdm(paths, desc=f"checking {desc}", leave=False):
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as error:  # PIL raises many types for broken files
            problems.append(f"{path}: corrupt image ({type(error).__name__})")


def link_images(images: list[Path], target: Path, problems: list[str]) -> None:
    """Symlink ``images`` into ``target`` by file name; a different file under an existing name is a problem."""
    target.mkdir(parents=True, exist_ok=True)
    for image in images:
        link = target / image.name
        if link.is_symlink() or link.exists():
            if link.resolve() != image.resolve():
                problems.append(f"{link}: name collision with {image}")
            continue
        link.symlink_to(image.resolve())


def prepare_training_set(name: str, spec: TrainingSet, roots: list[Path], dest: Path, problems: list[str]) -> None:
    images = []
    for source in spec.sources:
        folder = find_folder(roots, source.folder_name)
        if folder is None:
            problems.append(f"{name}: folder {source.folder_name!r} not found in the downloads")
            continue
        found = list_images(folder, recursive=True)
        if len(found) < source.min_images:
            problems.append(f"{folder}: {len(found)} images, expected at least {source.min_images}")
        verify_images(found, problems, source.folder_name)
        images += found
    link_images(images, dest / spec.target, problems)
    if spec.meta_info is not None:
        file_name, count = spec.meta_info
        listed = list_images(dest / spec.target)[:count]
        lines = [str(Path("..") / spec.target / path.name) for path in listed]
        # The list is derived from the links just made, so re-running rewrites it.
        write_bytes_atomic(dest / "meta_info" / file_name, ("\n".join(lines) + "\n").encode(), overwrite=True)


def prepare_paired_set(name: str, spec: PairedSet, roots: list[Path], dest: Path, problems: list[str]) -> None:
    folder = find_folder(roots, spec.folder_name)
    if folder is None:
        problems.append(f"{name}: folder {spec.folder_name!r} not found in the downloads")
        return
    sides = {}
    for side, candidates in (("lq", LQ_FOLDER_NAMES), ("gt", GT_FOLDER_NAMES)):
        sub = next((folder / c for c in candidates if (folder / c).is_dir()), None)
        if sub is None:
            problems.append(f"{folder}: no {side} subfolder (one of {list(candidates)})")
            return
        sides[side] = list_images(sub, recursive=True)
        verify_images(sides[side], problems, f"{spec.folder_name}/{side}")
    lq_stems, gt_stems = {p.stem for p in sides["lq"]}, {p.stem for p in sides["gt"]}
    if lq_stems != gt_stems or not lq_stems:
        problems.append(
            f"{folder}: unpaired images: lq only {sorted(lq_stems - gt_stems)}, gt only {sorted(gt_stems - lq_stems)}"
        )
    for side, images in sides.items():
        link_images(images, dest / "StableSR_testsets" / spec.folder_name / side, problems)


def main(argv: list[str] | None = None) -> int:
    all_sets = [*TRAINING_SETS, *PAIRED_SETS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--downloads", required=True, type=Path)
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--sets", nargs="+", choices=all_sets, default=all_sets)
    args = parser.parse_args(argv)
    if not args.downloads.is_dir():
        print(f"{args.downloads}: downloads folder does not exist", file=sys.stderr)
        return 1
    problems: list[str] = []
    extracted = args.dest / "_extracted"
    extracted.mkdir(parents=True, exist_ok=True)
    extract_archives(args.downloads, extracted, problems)
    roots = [args.downloads, extracted]
    for name in args.sets:
        if name in TRAINING_SETS:
            prepare_training_set(name, TRAINING_SETS[name], roots, args.dest, problems)
        else:
            prepare_paired_set(name, PAIRED_SETS[name], roots, args.dest, problems)
    if problems:
        print(f"{len(problems)} problem(s):", *(f"  - {p}" for p in problems), sep="\n", file=sys.stderr)
        return 1
    print(f"prepared {', '.join(args.sets)} in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
