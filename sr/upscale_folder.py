"""Upscale an image or a folder into an output folder: the logic behind ``upscale.py`` (config ``conf/upscale.yaml``).

Guarantees of :func:`run`:

- **Outputs carry their settings.** The run config records the settings' components (``sr.fingerprint``: model
  weights by content, sampling settings, seed); an existing output is kept and reused when it was made with the
  same settings, and reported (exit status 1) when it was made with others, naming what differs
  (``overwrite=true`` replaces it).
- **Inputs are never destroyed.** An output name that is also an input of the run (``output=`` the input folder with
  ``format=input``, or with ``.png`` inputs, or a second run over a folder the first one wrote into) refuses the whole
  run before anything is written; ``overwrite=true`` only ever replaces earlier *outputs*.
- **Every file is accounted for.** The summary counts written, skipped (output exists), failed and non-image files
  (named); each skipped or failed file gets one line naming it and the reason; the exit status is 1 if any image
  failed. A failure of one image (unreadable file, out of memory, ...) never stops the folder.
- **Memory guard.** Before an image is read in full, its peak memory is estimated from its output size
  (:mod:`sr.memory`); an image whose estimate exceeds the available memory or ``max_memory`` is skipped with one
  line that says how much it needs.
- **Provenance.** ``<output>/upscale_config.yaml`` is the resolved config and git revision of the run that wrote the
  most recent outputs, with the names it wrote; a run that writes nothing leaves the folder's config alone. The
  config of an earlier run that wrote outputs is kept as ``upscale_config-<n>.yaml``.
- **Clean folders.** Temporary files left by a killed write are removed when the next run starts.
"""

import sys
import traceback
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sr.errors import ConfigError, describe, traceback_wanted
from sr.fingerprint import differences, sampling_components
from sr.io import ImageReadError, image_size, read_image, remove_stale_temporaries, scan_images, write_bytes_atomic, \
    write_image
from sr.memory import available_memory, estimate_upscale_peak, format_bytes
from sr.pipelines import SamplingSettings, StableSRPipeline, sampling_arguments, use_scheduler
from sr.utils.provenance import git_revision
from sr.validation import parse_memory, validate_upscale

RUN_CONFIG_NAME = "upscale_config"
OUTPUT_FORMATS = ("png", "input")
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")


def output_path(source: Path, output_folder: Path, output_format: str) -> Path:
    """``<output_folder>/<source stem>.png`` (``png``) or ``<output_folder>/<source name>`` (``input``)."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; expected one of {OUTPUT_FORMATS}")
    return output_folder / (source.stem + ".png" if output_format == "png" else source.name)


def plan_outputs(sources: list[Path], output_folder: Path, output_format: str) -> dict[Path, Path]:
    """``{source: destination}``; raises ``ConfigError`` when a destination is one of the run's input files."""
    plan = {source: output_path(source, output_folder, output_format) for source in sources}
    inputs = {source.resolve() for source in sources}
    clashes = [source.name for source, destination in plan.items() if destination.resolve() in inputs]
    if clashes:
        more = " ..." if len(clashes) > 3 else ""
        raise ConfigError(
            f"output={output_folder}: writing there would replace input files of this run "
            f"({', '.join(clashes[:3])}{more}); choose an output folder outside the input"
        )
    return plan


def recorded_outputs(output_folder: Path) -> dict[str, dict]:
    """``{output name: settings components}`` from the folder's run configs (the newest run that wrote a name wins;
    configs written before components were recorded are skipped)."""
    numbered = sorted(output_folder.glob(f"{RUN_CONFIG_NAME}-*.yaml"),
                      key=lambda path: int(path.stem.rsplit("-", 1)[1]) if path.stem.rsplit("-", 1)[1].isdigit() else 0)
    producers: dict[str, dict] = {}
    for path in [*numbered, output_folder / f"{RUN_CONFIG_NAME}.yaml"]:
        if not path.is_file():
            continue
        record = OmegaConf.to_container(OmegaConf.load(path))
        if isinstance(record.get("components"), dict):
            producers.update({name: record["components"] for name in record.get("outputs") or []})
    return producers


def save_run_config(cfg: DictConfig, output_folder: Path, written: list[str], components: dict) -> Path:
    """Write this run's resolved config, git revision and written outputs to ``upscale_config.yaml`` (atomically).

    The file is named after the run that produced the folder's latest outputs: an earlier run's file (one that
    lists other outputs) is first moved to the next free ``upscale_config-<n>.yaml``.
    """
    path = output_folder / f"{RUN_CONFIG_NAME}.yaml"
    record = OmegaConf.to_container(cfg, resolve=True)
    record["git_revision"] = git_revision()
    record["components"] = components
    record["outputs"] = list(written)
    previous = OmegaConf.load(path).get("outputs") if path.exists() else []
    if previous is None or not set(previous) <= set(written):
        number = 1
        while (kept := output_folder / f"{RUN_CONFIG_NAME}-{number}.yaml").exists():
            number += 1
        path.replace(kept)
    return write_bytes_atomic(path, OmegaConf.to_yaml(OmegaConf.create(record)).encode(), overwrite=True)


def upscale_file(upscale, source: Path, destination: Path, seed: int, max_pixels: int, overwrite: bool) -> Path:
    """Read ``source``, upscale it with one call ``upscale(image, generator=...)`` (a ``StableSRPipeline`` with its
    settings bound, ``output_type="pt"``; alpha with bicubic), write ``destination``; raises ``ImageReadError`` etc."""
    loaded = read_image(source, max_pixels=max_pixels)
    generator = torch.Generator().manual_seed(seed)
    image = upscale(loaded.image, generator=generator).images[0]
    alpha = None
    if loaded.alpha is not None:
        alpha = F.interpolate(loaded.alpha[None], size=image.shape[-2:], mode="bicubic", align_corners=False)
        alpha = alpha.clamp(0, 1)[0]
    # 16-bit is kept where the format stores it (OpenCV cannot write 16-bit grey with alpha).
    sixteen_bit = (loaded.bit_depth == 16 and destination.suffix.lower() in SIXTEEN_BIT_SUFFIXES
                   and not (image.shape[0] == 1 and alpha is not None))
    return write_image(destination, image, alpha=alpha, bit_depth=16 if sixteen_bit else 8, overwrite=overwrite)


def memory_problem(pipe: StableSRPipeline, settings, source: Path, limit: int | None, max_pixels: int,
                   device) -> str | None:
    """Why ``source`` must be skipped for memory (its estimated peak exceeds what is available), or None;
    ``settings``: the call's resolved ``SamplingSettings``."""
    height, width = image_size(source, max_pixels)
    estimate = estimate_upscale_peak(pipe, settings, height, width)
    available = available_memory(device)
    budget = available if limit is None else min(limit, available)
    if estimate.total <= budget:
        return None
    which = "max_memory" if limit is not None and limit <= available else f"available on {device}"
    return (f"{source}: needs about {format_bytes(estimate.total)} to upscale {width}x{height} to "
            f"{estimate.output_width}x{estimate.output_height}, more than the {format_bytes(budget)} {which}; "
            "skipped (lower scale or vae_tile.size)")


def bind_upscale(cfg: DictConfig, pipe: StableSRPipeline) -> tuple[StableSRPipeline, SamplingSettings, partial]:
    """How a run config samples: ``pipe`` on ``cfg.device`` with ``cfg.scheduler``, the resolved sampling settings,
    and ``upscale(image, generator=...)``, the pipeline call with them bound (:func:`upscale_file`)."""
    pipe = use_scheduler(pipe.to(cfg.device), instantiate(cfg.scheduler))
    pipe.set_progress_bar_config(disable=not cfg.progress, leave=False)
    settings = sampling_arguments(cfg)
    return pipe, pipe.sampling_settings(**settings), partial(pipe, output_type="pt", **settings)


def run(cfg: DictConfig, pipe: StableSRPipeline | None = None) -> int:
    """Upscale ``cfg.input`` into ``cfg.output``; returns the exit code (0, or 1 if any image failed).

    ``pipe``: an already built ``StableSRPipeline`` (tests, notebooks); otherwise ``instantiate(cfg.model)``. Raises
    ``ConfigError`` (one line) for settings that cannot work, before anything is built or written.
    """
    validate_upscale(cfg)
    listing = scan_images(cfg.input)
    output_folder = Path(cfg.output)
    plan = plan_outputs(listing.images, output_folder, cfg.format)
    limit = parse_memory(cfg.get("max_memory"))
    output_folder.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(output_folder):
        print(f"upscale: removed {stale.name}, left by an interrupted write", file=sys.stderr)
    pipe, resolved, upscale = bind_upscale(cfg, instantiate(cfg.model) if pipe is None else pipe)
    components = sampling_components(cfg, cfg.model, resolved.tile_size, resolved.tile_overlap)
    producers = recorded_outputs(output_folder)

    written: list[str] = []
    skipped, other_settings, failed = 0, 0, 0
    claimed: dict[Path, Path] = {}
    for source, destination in tqdm(plan.items(), desc="images", disable=not cfg.progress):
        if destination in claimed:
            print(f"{source}: output name {destination.name} already taken by {claimed[destination].name}; skipped",
                  file=sys.stderr)
            failed += 1
            continue
        claimed[destination] = source
        if destination.exists() and not cfg.overwrite:
            recorded = producers.get(destination.name)
            if recorded is not None and recorded != components:
                changes = "; ".join(differences(recorded, components))
                print(f"{source}: {destination} was made with other settings ({changes}); overwrite=true to "
                      "replace it; skipped", file=sys.stderr)
                other_settings += 1
            else:
                print(f"{source}: {destination} exists (overwrite=true to replace it); skipped", file=sys.stderr)
                skipped += 1
            continue
        try:
            if problem := memory_problem(pipe, resolved, source, limit, cfg.max_pixels, cfg.device):
                print(problem, file=sys.stderr)
                failed += 1
                continue
            upscale_file(upscale, source, destination, cfg.seed, cfg.max_pixels, cfg.overwrite)
        except ImageReadError as error:
            print(str(error), file=sys.stderr)
            failed += 1
            continue
        except Exception as error:  # noqa: BLE001 - out of memory or any other failure of one image: report, go on
            if traceback_wanted(cfg.get("debug", False)):
                traceback.print_exc()
            print(f"{source}: {describe(error)}", file=sys.stderr)
            failed += 1
            continue
        written.append(destination.name)
        save_run_config(cfg, output_folder, written, components)
    others = listing.others
    named = f" ({', '.join(path.name for path in others[:5])}{' ...' if len(others) > 5 else ''})" if others else ""
    print(f"upscale: {len(written)} written, {skipped} skipped (output exists), {failed} failed, "
          f"{other_settings} kept (made with other settings), of {len(listing.images)} images in {cfg.input} -> "
          f"{output_folder}; {len(others)} other files not read{named}")
    return 1 if failed or other_settings else 0
