"""Upscale an image or a folder of images with a StableSR model (config: conf/upscale.yaml).

    python upscale.py input=<image or folder> output=<folder> model=tiny scale=4 steps=200 w=0.5 color_fix=adain \
        tile.size=64 tile.overlap=32 tile.batch_size=4 seed=42 scheduler=ddpm [overwrite=true] [format=input]

Inputs: PNG, JPEG, WebP, TIFF, BMP (8/16-bit, grey, RGBA) through ``sr.io``. Grey comes back grey; alpha is
upscaled separately with bicubic interpolation and put back. Outputs keep the input's name: ``format=png`` (default)
writes ``<stem>.png`` (16-bit input -> 16-bit PNG; PNG stores every mode losslessly), ``format=input`` keeps the
input's suffix. Existing outputs are skipped unless ``overwrite=true``; every write is atomic.

A file that cannot be used (not an image, truncated, larger than ``max_pixels``) gets one line on stderr and is
skipped; the run ends with a summary line and exit code 1 if any image failed. Every image is sampled with its own
``torch.Generator().manual_seed(seed)``, so the same seed and settings give the same output bit for bit (on CPU),
whatever else is in the folder. The resolved config and git revision go to ``<output>/upscale_config.yaml``.
"""

import sys
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sr.config import CONFIG_DIR
from sr.io import ImageReadError, list_images, read_image, write_bytes_atomic, write_image
from sr.sampling import Upscaler, build_upscaler
from sr.utils.provenance import git_revision

REPO_ROOT = Path(__file__).resolve().parent
RUN_CONFIG_NAME = "upscale_config"
OUTPUT_FORMATS = ("png", "input")
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")


def output_path(source: Path, output_folder: Path, output_format: str) -> Path:
    """``<output_folder>/<source stem>.png`` (``png``) or ``<output_folder>/<source name>`` (``input``)."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; expected one of {OUTPUT_FORMATS}")
    return output_folder / (source.stem + ".png" if output_format == "png" else source.name)


def save_run_config(cfg: DictConfig, output_folder: Path, overwrite: bool) -> Path:
    """Write the resolved config + git revision atomically; a previous run's file is kept unless ``overwrite``
    (then the next free ``upscale_config-<n>.yaml`` is used)."""
    path = output_folder / f"{RUN_CONFIG_NAME}.yaml"
    number = 1
    while path.exists() and not overwrite:
        path = output_folder / f"{RUN_CONFIG_NAME}-{number}.yaml"
        number += 1
    record = OmegaConf.to_container(cfg, resolve=True)
    record["git_revision"] = git_revision()
    return write_bytes_atomic(path, OmegaConf.to_yaml(OmegaConf.create(record)).encode(), overwrite=True)


def upscale_file(upscaler: Upscaler, source: Path, destination: Path, seed: int, max_pixels: int,
                 overwrite: bool) -> Path:
    """Read ``source``, upscale it (alpha with bicubic), write ``destination``; raises ``ImageReadError`` etc."""
    loaded = read_image(source, max_pixels=max_pixels)
    generator = torch.Generator().manual_seed(seed)
    image = upscaler(loaded.image[None], generator)[0]
    alpha = None
    if loaded.alpha is not None:
        alpha = F.interpolate(loaded.alpha[None], size=image.shape[-2:], mode="bicubic", align_corners=False)
        alpha = alpha.clamp(0, 1)[0]
    # 16-bit is kept where the format stores it (OpenCV cannot write 16-bit grey with alpha).
    sixteen_bit = (loaded.bit_depth == 16 and destination.suffix.lower() in SIXTEEN_BIT_SUFFIXES
                   and not (image.shape[0] == 1 and alpha is not None))
    return write_image(destination, image, alpha=alpha, bit_depth=16 if sixteen_bit else 8, overwrite=overwrite)


def run(cfg: DictConfig, model=None) -> int:
    """Upscale ``cfg.input`` into ``cfg.output``; returns the exit code (0, or 1 if any image failed).

    ``model``: an already built ``StableSR`` (tests, notebooks); otherwise ``instantiate(cfg.model)``.
    """
    try:
        sources = list_images(cfg.input)
    except (ImageReadError, FileNotFoundError) as error:
        print(f"upscale: {error}", file=sys.stderr)
        return 1
    if cfg.format not in OUTPUT_FORMATS:
        print(f"upscale: format={cfg.format!r} is not one of {OUTPUT_FORMATS}", file=sys.stderr)
        return 1
    output_folder = Path(cfg.output)
    output_folder.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, output_folder, cfg.overwrite)
    if model is None:
        model = instantiate(cfg.model)
    model = model.to(cfg.device).eval()
    upscaler = build_upscaler(model, cfg)

    written, skipped, failed = 0, 0, 0
    claimed: dict[Path, Path] = {}
    for source in tqdm(sources, desc="images", disable=not cfg.progress):
        destination = output_path(source, output_folder, cfg.format)
        if destination in claimed:
            print(f"{source}: output name {destination.name} already taken by {claimed[destination].name}; skipped",
                  file=sys.stderr)
            failed += 1
            continue
        claimed[destination] = source
        if destination.exists() and not cfg.overwrite:
            print(f"{source}: {destination} exists (overwrite=true to replace it); skipped", file=sys.stderr)
            skipped += 1
            continue
        try:
            upscale_file(upscaler, source, destination, cfg.seed, cfg.max_pixels, cfg.overwrite)
            written += 1
        except ImageReadError as error:
            print(str(error), file=sys.stderr)
            failed += 1
        except (OSError, ValueError) as error:
            print(f"{source}: {str(error).splitlines()[0]}", file=sys.stderr)
            failed += 1
    print(f"upscale: {written} written, {skipped} skipped (output exists), {failed} failed, of {len(sources)} "
          f"images in {cfg.input} -> {output_folder}")
    return 1 if failed else 0


@hydra.main(config_path=str(CONFIG_DIR), config_name="upscale", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
