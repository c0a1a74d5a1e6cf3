"""Upscale an image or a folder into an output folder: the logic behind ``upscale.py`` (config ``conf/upscale.yaml``).

Guarantees of :func:`run`:

- **Outputs carry their settings.** The run config records the settings' components (``sr.commands.fingerprint``: model
  weights by content, sampling settings, seed); an existing output is kept and reused when it was made with the
  same settings, and reported (exit status 1) when it was made with others, naming what differs
  (``overwrite=true`` replaces it).
- **Nothing the command did not write is replaced.** An output name that is also an input of the run (``output=`` the
  input folder with ``format=input``, or with ``.png`` inputs, or a second run over a folder the first one wrote
  into) refuses the whole run before anything is written. ``overwrite=true`` only ever replaces files that an
  earlier run of this command wrote (listed in the folder's ``upscale_config*.yaml``): a same-named file of anyone
  else (``output=`` a folder of ground-truth images) refuses the whole run, naming it. An empty ``input=`` or
  ``output=`` is refused (it would mean the current directory).
- **Every entry is accounted for.** The summary counts written, skipped (output exists), failed, kept (other
  settings), left to another run and non-image entries (named: other files, folders named like images); each
  skipped or failed item gets one line naming it and the reason, a dangling symbolic link or a link loop among them
  (a failed item); the exit status is 1 if any image failed. A failure of one image (unreadable file, out of memory,
  ...) never stops the folder.
- **Runs can share a folder.** Each output is claimed before it is computed (``sr.io.try_claim``: an ``O_EXCL`` file
  naming host and pid); two runs into one folder at once divide the images, each computed once; an image another
  live run claimed or wrote meanwhile is reported as left to it (not a failure).
- **Memory guard.** Before an image is read in full, its peak memory is estimated from its output size
  (:mod:`sr.commands.memory`); an image whose estimate exceeds the available memory or ``max_memory`` is skipped with one
  line that says how much it needs and which settings lower the estimate, by how much (``sr.commands.memory.memory_levers``).
- **Provenance.** ``<output>/upscale_config.yaml`` is the resolved config and git revision of the run that wrote the
  most recent outputs, with the names it wrote; a run that writes nothing leaves the folder's config alone. The
  config of an earlier (or concurrent) run that wrote outputs is kept as ``upscale_config-<n>.yaml``, one per run.
- **Clean folders.** Temporary files and claims left by a killed run (its process gone) are removed when the next
  run starts; no other file is touched.
"""

import sys
import traceback
import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sr.commands.config import build_model
from sr.commands.fingerprint import differences, sampling_components
from sr.errors import ConfigError, describe, traceback_wanted
from sr.io import ImageReadError, holding_claim, image_size, read_image, release_claim, remove_stale_temporaries, \
    scan_images, try_claim, write_bytes_atomic, write_image
from sr.commands.memory import available_memory, estimate_upscale_peak, format_bytes, memory_levers
from sr.pipelines import SamplingSettings, StableSRPipeline, use_scheduler
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


def _run_configs(output_folder: Path) -> list[Path]:
    """The folder's run configs, oldest first: ``upscale_config-<n>.yaml`` by ``n``, then ``upscale_config.yaml``."""
    numbered = sorted(output_folder.glob(f"{RUN_CONFIG_NAME}-*.yaml"),
                      key=lambda path: int(path.stem.rsplit("-", 1)[1]) if path.stem.rsplit("-", 1)[1].isdigit() else 0)
    return [path for path in [*numbered, output_folder / f"{RUN_CONFIG_NAME}.yaml"] if path.is_file()]


def recorded_outputs(output_folder: Path) -> dict[str, dict | None]:
    """``{output name: settings components}`` of every output the folder's run configs list (the newest run that
    wrote a name wins; ``None`` for configs written before components were recorded). Its keys are the files this
    command wrote there: the only ones ``overwrite=true`` may replace."""
    producers: dict[str, dict | None] = {}
    for path in _run_configs(output_folder):
        record = OmegaConf.to_container(OmegaConf.load(path))
        components = record.get("components") if isinstance(record.get("components"), dict) else None
        producers.update({name: components for name in record.get("outputs") or []})
    return producers


def foreign_files_refusal(plan: dict[Path, Path], written_here: set[str], output_folder: Path) -> str | None:
    """Why ``overwrite=true`` must not run: destinations that exist but are no earlier output of this command."""
    foreign = [destination.name for destination in plan.values()
               if (destination.exists() or destination.is_symlink()) and destination.name not in written_here]
    if not foreign:
        return None
    more = " ..." if len(foreign) > 3 else ""
    return (f"output={output_folder}: overwrite=true would replace {len(foreign)} file(s) this command did not write "
            f"({', '.join(foreign[:3])}{more}; not listed in {RUN_CONFIG_NAME}*.yaml); choose another output folder")


def save_run_config(cfg: DictConfig, output_folder: Path, written: list[str], components: dict, run_id: str) -> Path:
    """Write this run's resolved config, git revision, run id and written outputs to ``upscale_config.yaml``
    (atomically, holding the file's claim: runs writing into one folder at once take turns).

    The file is named after the run that produced the folder's latest outputs: another run's file (one that lists
    outputs this run did not write) is first moved to that run's ``upscale_config-<n>.yaml`` (the next free ``n``
    the first time), so each run keeps one record.
    """
    path = output_folder / f"{RUN_CONFIG_NAME}.yaml"
    record = OmegaConf.to_container(cfg, resolve=True)
    record["git_revision"] = git_revision()
    record["run_id"] = run_id
    record["components"] = components
    record["outputs"] = list(written)
    with holding_claim(path):
        kept = {}  # run id -> its numbered config (configs written before run ids were recorded have none)
        for numbered in _run_configs(output_folder):
            if numbered != path and (numbered_run := OmegaConf.load(numbered).get("run_id")) is not None:
                kept[numbered_run] = numbered
        if path.exists():
            current = OmegaConf.load(path)
            previous = current.get("outputs")
            if current.get("run_id") != run_id and (previous is None or not set(previous) <= set(written)):
                number = 1
                while (free := output_folder / f"{RUN_CONFIG_NAME}-{number}.yaml").exists():
                    number += 1
                path.replace(kept.get(current.get("run_id"), free))
        written_path = write_bytes_atomic(path, OmegaConf.to_yaml(OmegaConf.create(record)).encode(), overwrite=True)
        if run_id in kept:
            kept[run_id].unlink()
    return written_path


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
    levers = ", ".join(f"{override} (about {format_bytes(lowered.total)})"
                       for override, lowered in memory_levers(pipe, settings, height, width))
    return (f"{source}: needs about {format_bytes(estimate.total)} to upscale {width}x{height} to "
            f"{estimate.output_width}x{estimate.output_height}, more than the {format_bytes(budget)} {which}; "
            f"skipped ({'lower it with ' + levers if levers else 'no sampling setting lowers the estimate'})")


def kept_output(source: Path, destination: Path, overwrite: bool, existing_at_start: set[Path],
                producers: dict[str, dict | None], components: dict) -> str | None:
    """Why the claimed ``destination`` is not written, as its summary category (``elsewhere``: another run wrote it
    since this one started; ``other_settings``: an earlier output of other settings; ``skipped``: it exists), with
    its one line printed; None when it is to be written."""
    if not destination.exists():
        return None
    if destination not in existing_at_start:
        print(f"{source}: {destination.name} was written by another run meanwhile; left to it", file=sys.stderr)
        return "elsewhere"
    if overwrite:
        return None
    recorded = producers.get(destination.name)
    if recorded is not None and recorded != components:
        changes = "; ".join(differences(recorded, components))
        print(f"{source}: {destination} was made with other settings ({changes}); overwrite=true to replace it; "
              "skipped", file=sys.stderr)
        return "other_settings"
    print(f"{source}: {destination} exists (overwrite=true to replace it); skipped", file=sys.stderr)
    return "skipped"


def upscale_or_report(upscale, pipe: StableSRPipeline, settings, source: Path, destination: Path, cfg: DictConfig,
                      limit: int | None) -> bool:
    """Upscale ``source`` into ``destination`` (:func:`upscale_file`); whether it was written. A failure (memory
    guard, unreadable image, out of memory, any other error) is one line naming the file, never an exception."""
    try:
        if problem := memory_problem(pipe, settings, source, limit, cfg.max_pixels, cfg.device):
            print(problem, file=sys.stderr)
            return False
        upscale_file(upscale, source, destination, cfg.seed, cfg.max_pixels, cfg.overwrite)
    except ImageReadError as error:
        print(str(error), file=sys.stderr)
        return False
    except Exception as error:  # noqa: BLE001 - out of memory or any other failure of one image: report, go on
        if traceback_wanted(cfg.get("debug", False)):
            traceback.print_exc()
        print(f"{source}: {describe(error)}", file=sys.stderr)
        return False
    return True


def check_named_paths(cfg: DictConfig) -> None:
    """``ConfigError`` for an empty ``input=`` or ``output=``: an empty path would mean the current directory."""
    for key, what in (("input", "an image or a folder"), ("output", "the output folder (output=. for this folder)")):
        value = cfg.get(key)
        if value is None or not str(value).strip():
            raise ConfigError(f"{key}={'' if value is None else value}: empty; name {what}")


def bind_upscale(cfg: DictConfig, pipe: StableSRPipeline) -> tuple[StableSRPipeline, SamplingSettings, partial]:
    """How a run config samples: ``pipe`` on ``cfg.device`` with ``cfg.scheduler``, the resolved sampling settings,
    and ``upscale(image, generator=...)``, the pipeline call with them bound (:func:`upscale_file`)."""
    pipe = use_scheduler(pipe.to(cfg.device), instantiate(cfg.scheduler))
    pipe.set_progress_bar_config(disable=not cfg.progress, leave=False)
    settings = pipe.sampling_settings(cfg)
    return pipe, settings, partial(pipe, output_type="pt", **settings.arguments())


def run(cfg: DictConfig, pipe: StableSRPipeline | None = None) -> int:
    """Upscale ``cfg.input`` into ``cfg.output``; returns the exit code (0, or 1 if any image failed).

    ``pipe``: an already built ``StableSRPipeline`` (tests, notebooks); otherwise ``build_model(cfg.model)``. Raises
    ``ConfigError`` (one line) for settings that cannot work, before anything is built or written.
    """
    check_named_paths(cfg)
    validate_upscale(cfg)
    listing = scan_images(cfg.input)
    output_folder = Path(cfg.output)
    plan = plan_outputs(listing.images, output_folder, cfg.format)
    limit = parse_memory(cfg.get("max_memory"))
    if output_folder.is_dir():
        with holding_claim(output_folder / f"{RUN_CONFIG_NAME}.yaml"):
            producers = recorded_outputs(output_folder)
    else:
        producers = {}
    if cfg.overwrite and (refusal := foreign_files_refusal(plan, set(producers), output_folder)):
        raise ConfigError(refusal)
    # an output that appears later was written by another run into this folder (claims keep this one off it)
    existing_at_start = {destination for destination in plan.values() if destination.exists()}
    output_folder.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(output_folder):
        print(f"upscale: removed {stale.name}, left by an interrupted run", file=sys.stderr)
    pipe, resolved, upscale = bind_upscale(cfg, build_model(cfg.model) if pipe is None else pipe)
    components = sampling_components(cfg, cfg.model, resolved)
    run_id = uuid.uuid4().hex

    written: list[str] = []
    counts = Counter()  # summary categories other than "written"
    for link, problem in listing.broken.items():
        print(f"{link}: {problem}; skipped", file=sys.stderr)
        counts["failed"] += 1
    claimed: dict[Path, Path] = {}
    for source, destination in tqdm(plan.items(), desc="images", disable=not cfg.progress):
        if destination in claimed:
            print(f"{source}: output name {destination.name} already taken by {claimed[destination].name}; skipped",
                  file=sys.stderr)
            counts["failed"] += 1
            continue
        claimed[destination] = source
        if holder := try_claim(destination):
            print(f"{source}: {destination.name} is being written by another run ({holder}); left to it",
                  file=sys.stderr)
            counts["elsewhere"] += 1
            continue
        try:
            if reason := kept_output(source, destination, cfg.overwrite, existing_at_start, producers, components):
                counts[reason] += 1
            elif upscale_or_report(upscale, pipe, resolved, source, destination, cfg, limit):
                written.append(destination.name)
                save_run_config(cfg, output_folder, written, components, run_id)
            else:
                counts["failed"] += 1
        finally:
            release_claim(destination)
    others = [path.name + ("/" if path.is_dir() else "") for path in listing.others]
    named = f" ({', '.join(others[:5])}{' ...' if len(others) > 5 else ''})" if others else ""
    print(f"upscale: {len(written)} written, {counts['skipped']} skipped (output exists), {counts['failed']} failed, "
          f"{counts['other_settings']} kept (made with other settings), of "
          f"{len(listing.images) + len(listing.broken)} images in {cfg.input} -> {output_folder}; "
          f"{counts['elsewhere']} left to another run writing there; {len(others)} other entries not read{named}")
    return 1 if counts["failed"] or counts["other_settings"] else 0
