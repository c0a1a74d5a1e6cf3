"""Settings checked once, right after the config is composed, before any model is built or image read.

Each ``validate_*`` function raises :class:`sr.errors.ConfigError` whose one-line message lists every problem found
(``key=value: what is expected``), so a typo costs seconds, not a whole sampling run. The entry points call:

- :func:`validate_upscale`, :func:`validate_eval` — the sampling keys (checked by ``sr.sampling.settings``, the one
  place that decides their valid values, over the model preset's as the pipeline resolves them) and the rest of each
  command's keys: device availability, writable output folders, existing inputs;
- :func:`validate_train` — the keys of a training run a user sets by hand, readable checkpoints.
"""

import os
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path

import torch
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from sr.errors import ConfigError
from sr.sampling.settings import resolved_settings

MEMORY_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_UNSET = object()


def setting(settings, key: str, default=_UNSET):
    """``settings[key]`` for a dotted ``key`` of a dict or DictConfig; ``default`` when absent.

    An unset mandatory value (``???``) or a broken interpolation raises ``ConfigError`` naming the key.
    """
    value = settings
    for part in key.split("."):
        try:
            if isinstance(value, DictConfig):
                if part not in value:
                    raise KeyError(part)
                value = value[part]
            elif isinstance(value, Mapping):
                value = value[part]
            else:
                raise KeyError(part)
        except KeyError:
            if default is _UNSET:
                raise ConfigError(f"{key} is not set") from None
            return default
        except MissingMandatoryValue:
            raise ConfigError(f"{key} is not set (add {key}=<value> to the command)") from None
        except InterpolationResolutionError as error:
            raise ConfigError(f"{key}: {str(error).splitlines()[0]}") from None
    return value


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


class _Problems:
    """Collects ``key=value: expectation`` lines; :meth:`raise_if_any` joins them into one ``ConfigError``."""

    def __init__(self, settings):
        self.settings = settings
        self.lines: list[str] = []

    def add(self, key: str, value, expected: str) -> None:
        self.lines.append(f"{key}={value!r}: {expected}")

    def get(self, key: str, default=_UNSET):
        try:
            return setting(self.settings, key, default)
        except ConfigError as error:
            self.lines.append(str(error))
            return _UNSET

    def number(self, key: str, low: float | None = None, high: float | None = None, low_open: bool = False,
               integer: bool = False, optional: bool = False, default=_UNSET):
        value = self.get(key, default)
        if value is _UNSET or (optional and value is None):
            return value
        kind = "an integer" if integer else "a number"
        if not (_is_int(value) if integer else _is_number(value)):
            self.add(key, value, f"must be {kind}" + (" or null" if optional else ""))
            return _UNSET
        if low is not None and (value <= low if low_open else value < low) or high is not None and value > high:
            bounds = f"{'>' if low_open else '>='} {low}" if high is None else f"in [{low}, {high}]"
            self.add(key, value, f"must be {kind} {bounds}")
            return _UNSET
        return value

    def choice(self, key: str, choices: tuple[str, ...], default=_UNSET):
        value = self.get(key, default)
        if value is not _UNSET and value not in choices:
            self.add(key, value, f"must be one of {', '.join(choices)}")
            return _UNSET
        return value

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError("; ".join(self.lines))


def _sampling_problems(problems: _Problems, cfg) -> None:
    """The run config's sampling keys, resolved over its model preset's as the pipeline will
    (``sr.sampling.settings``, which decides what is valid)."""
    try:
        resolved_settings(cfg)
    except ConfigError as error:
        problems.lines.append(str(error))


def device_problem(device, allow_auto: bool = False) -> str | None:
    """Why ``device`` cannot be used here (unknown name, no CUDA GPU, GPU index out of range, ``auto`` where the
    command does not resolve it: only ``eval.py`` does, ``sr.commands.launch.job_device``), or None."""
    if device == "auto":
        return None if allow_auto else f"device={device!r}: not a device here; expected cpu, cuda or cuda:N"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        return f"device={device!r}: not a device; expected cpu, cuda or cuda:N"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return f"device={device!r}: no CUDA GPU is available on this machine (use device=cpu)"
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            return f"device={device!r}: only {torch.cuda.device_count()} CUDA GPU(s) here"
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        return f"device={device!r}: MPS is not available on this machine (use device=cpu)"
    elif parsed.type not in ("cpu", "cuda", "mps"):
        return f"device={device!r}: unsupported device type {parsed.type!r}; expected cpu or cuda"
    return None


def writable_folder_problem(key: str, folder) -> str | None:
    """Why ``folder`` cannot be created or written (a file in the way, a read-only parent), or None."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        return f"{key}={folder}: is a file, not a folder"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}={folder}: {existing} is a file, so the folder cannot be created"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{key}={folder}: {existing} is not writable (read-only)"
    return None


def parse_memory(value) -> int | None:
    """Bytes of a memory size: null, an integer number of bytes, or a string such as ``"12GB"`` / ``"512 MB"``
    (binary units: 1 GB = 1024^3 bytes). Raises ``ConfigError`` for anything else."""
    if value is None:
        return None
    if _is_int(value) and value > 0:
        return int(value)
    if isinstance(value, str):
        text = value.strip().upper().replace("IB", "B")
        number = text.rstrip("KMGTB ")
        unit = text[len(number):].strip()
        try:
            amount = float(number)
        except ValueError:
            amount = -1.0
        if unit in MEMORY_UNITS and amount > 0:
            return int(amount * MEMORY_UNITS[unit])
    raise ConfigError(f"max_memory={value!r}: must be null, a number of bytes or a size such as 12GB")


def validate_upscale(cfg) -> None:
    """The keys of ``conf/upscale.yaml``: sampling, input present, output folder writable, device, limits."""
    problems = _Problems(cfg)
    _sampling_problems(problems, cfg)
    source = problems.get("input")
    if isinstance(source, str) and not Path(source).exists():
        problems.lines.append(f"input={source}: no such file or folder")
    output = problems.get("output")
    if isinstance(output, str) and (problem := writable_folder_problem("output", output)):
        problems.lines.append(problem)
    problems.choice("format", ("png", "input"))
    problems.number("max_pixels", low=1, integer=True)
    problems.number("seed", integer=True)
    try:
        parse_memory(setting(cfg, "max_memory", None))
    except ConfigError as error:
        problems.lines.append(str(error))
    if problem := device_problem(problems.get("device")):
        problems.lines.append(problem)
    problems.raise_if_any()


def validate_eval(cfg) -> None:
    """The keys of ``conf/eval.yaml``: sampling, seed, test-set folders, run dir writable, device, baselines."""
    from sr.commands.fingerprint import BASELINE_COMPONENTS  # the eval cache: a command's module, not the pipeline's

    problems = _Problems(cfg)
    _sampling_problems(problems, cfg)
    problems.number("seed", integer=True)
    problems.number("crop_border", low=0, integer=True)
    baselines = problems.get("baselines", [])
    names = list(baselines) if isinstance(baselines, Sequence) and not isinstance(baselines, str) else None
    if baselines is not _UNSET and (names is None or any(name not in BASELINE_COMPONENTS for name in names)
                                    or len(set(names)) != len(names)):
        problems.add("baselines", names if names is not None else baselines,
                     f"must be a list of distinct names from {list(BASELINE_COMPONENTS)} ([] for none)")
    for key in ("data.lr_dir", "data.hr_dir"):
        folder = problems.get(key, None)
        if isinstance(folder, str) and not Path(folder).is_dir():
            problems.lines.append(f"{key}={folder}: no such folder (the test set's {key[5:7].upper()} images)")
    if problem := device_problem(problems.get("device"), allow_auto=True):
        problems.lines.append(problem)
    run_dir = problems.get("run_dir", None)
    if isinstance(run_dir, str) and (problem := writable_folder_problem("run_dir", run_dir)):
        problems.lines.append(problem)
    problems.raise_if_any()


def validate_train(cfg) -> None:
    """The keys of ``conf/train.yaml`` a user sets by hand: ``seed``, the learning rates (numbers > 0), ``ckpt_path``
    (a readable checkpoint), the tiny prior (``paths.prior_dir``) when the model starts from it, a GPU accelerator that
    exists, a writable output folder. Other missing ``model.pretrained`` folders: ``sr.pipelines.build``."""
    from sr.utils.checkpoint import CheckpointError, check_checkpoint_file

    problems = _Problems(cfg)
    problems.number("seed", integer=True, optional=True, default=None)
    # the learning rates of conf/module/*.yaml
    for key in ("module.lr", "module.vae_lr", "module.vae_lr_final", "module.unet_lr"):
        if problems.get(key, None) not in (None, _UNSET):
            problems.number(key, low=0, low_open=True)
    ckpt_path = problems.get("ckpt_path", None)
    if ckpt_path is not None and ckpt_path is not _UNSET:
        try:
            check_checkpoint_file(ckpt_path)
        except CheckpointError as error:
            problems.lines.append(f"ckpt_path={error}")
    pretrained, prior_dir = problems.get("model.pretrained", None), problems.get("paths.prior_dir", None)
    if isinstance(pretrained, str) and pretrained == prior_dir and not Path(pretrained).exists():
        problems.lines.append(
            f"model.pretrained={pretrained}: no prior at {pretrained}; make it with `python train.py "
            f"experiment=prior_tiny hydra.run.dir={Path(pretrained).parent}` (or `make release-train`)")
    accelerator = problems.get("trainer.accelerator", "cpu")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        problems.lines.append(f"trainer.accelerator={accelerator}: no CUDA GPU is available here (use trainer=cpu)")
    output_dir = problems.get("paths.output_dir", None)
    if isinstance(output_dir, str) and (problem := writable_folder_problem("paths.output_dir", output_dir)):
        problems.lines.append(problem)
    problems.raise_if_any()

