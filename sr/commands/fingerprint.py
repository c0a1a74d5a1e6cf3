"""Fingerprints: which settings produced a cached result, so that a rerun reuses only results of the same settings.

A fingerprint is the first 16 hex digits of the SHA-256 of a flat, JSON-serialisable ``components`` dict::

    generation (images):  model.name, model.architecture (hash of the preset's config, its random-init seed
                          included), model.<weights> (SHA-256 of each weights file / folder, or the hub id),
                          scheduler (its config), every sampling setting as the pipeline resolves it, under its
                          ``SamplingSettings.components`` name (num_inference_steps, w, ..., tile.size,
                          vae_tile.mode), seed, device type, reproducible (the CPU mode, sr/reproducibility.py: the
                          two differ in the last bits), test_set.lr (SHA-256 over the LR files' names and bytes)
    scores:               generation + test_set.hr + metrics, crop_border, fid_patch_size, conventions
                          + the scores fingerprint of each baseline (``baselines``)
    baseline images:      the part of generation that decides them (``BASELINE_COMPONENTS``): bicubic = scale and
                          LR set; lr_latent = model and VAE/CFW weights, scale, input_size, w, color_fix, VAE tiles,
                          device type, CPU mode, LR set (not the sampler, the seed or the stage-1 weights, which
                          it never uses)
    baseline scores:      baseline images + test_set.hr + the scoring keys and conventions, as for the run

Weights are identified by their bytes, not their path or time stamp: a retrained ``stage1.safetensors`` at the same
path is a different model. File digests are cached per process by (path, size, modification time).
``<run_dir>/fingerprint.json`` records the generation fingerprint before the first image is sampled; ``scores.json``
records both; a baseline's folder (``<run_dir>/baselines/<name>``) holds its own ``fingerprint.json``. ``upscale.py``
records the sampling components (generation without the test set) in its run config.
"""

import hashlib
import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sr.io import list_images, write_bytes_atomic
from sr.reproducibility import reproducible_active

FINGERPRINT_FILE = "fingerprint.json"
WEIGHT_KEYS = ("pretrained", "stage1_weights", "cfw_weights")
SCORING_KEYS = ("metrics", "crop_border", "fid_patch_size")
# Eval's no-diffusion baselines (StableSRPipeline.bicubic / .reconstruct), in report order, and the generation
# components that decide each one's images.
BASELINE_COMPONENTS = {
    "bicubic": ("scale", "test_set.lr"),
    "lr_latent": ("model.name", "model.architecture", "model.pretrained", "model.cfw_weights", "scale", "input_size",
                  "w", "color_fix", "vae_tile.size", "vae_tile.overlap", "vae_tile.mode", "device", "reproducible",
                  "test_set.lr"),
}
CHUNK_BYTES = 1 << 24
_digest_cache: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (cached per process by path, size and modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digest_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
        _digest_cache[key] = digest.hexdigest()
    return _digest_cache[key]


def files_digest(root: Path, files: list[Path]) -> str:
    """SHA-256 over ``(relative name, file digest)`` of ``files`` below ``root``, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def weights_identity(location) -> str | None:
    """``sha256:<digest>`` of a weights file or of every file of a model folder; a hub id as given; None if unset."""
    if location is None:
        return None
    path = Path(location)
    if path.is_file():
        return f"sha256:{file_digest(path)}"
    if path.is_dir():
        files = [entry for entry in path.rglob("*") if entry.is_file()]
        return f"sha256:{files_digest(path, files)}"
    return str(location)


def image_set_identity(folder) -> str:
    """``sha256:<digest>`` over the image files of a test-set folder (names and bytes)."""
    folder = Path(folder)
    return f"sha256:{files_digest(folder, list_images(folder))}"


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(components: dict) -> str:
    """First 16 hex digits of the SHA-256 of ``components`` as canonical JSON."""
    return hashlib.sha256(_canonical(components).encode()).hexdigest()[:16]


def sampling_components(cfg: DictConfig, model_cfg: DictConfig, settings) -> dict:
    """What decides an upscaled image besides its input (module docstring): model identity, scheduler, sampling
    settings, seed, device type, the process's CPU mode. ``model_cfg``: the model config with the ``ckpt`` aliases
    applied; ``settings``: the resolved ``SamplingSettings`` the run samples with."""
    model = OmegaConf.to_container(model_cfg, resolve=True)
    architecture = {key: value for key, value in model.items() if key not in WEIGHT_KEYS}
    return {
        "model.name": model.get("name"),
        "model.architecture": hashlib.sha256(_canonical(architecture).encode()).hexdigest()[:16],
        **{f"model.{key}": weights_identity(model.get(key)) for key in WEIGHT_KEYS},
        "scheduler": _canonical(OmegaConf.to_container(cfg.scheduler, resolve=True)),
        **settings.components(),
        "seed": cfg.seed,
        "device": str(cfg.device).split(":")[0],
        "reproducible": reproducible_active(),
    }


def generation_components(cfg: DictConfig, model_cfg: DictConfig, settings) -> dict:
    """What decides the sampled images of an eval run: :func:`sampling_components` and the LR test set."""
    return {**sampling_components(cfg, model_cfg, settings),
            "test_set.lr": image_set_identity(cfg.data.lr_dir)}


def baseline_components(name: str, generation: dict) -> dict:
    """What decides the images of baseline ``name``: its ``BASELINE_COMPONENTS`` picked from the run's
    ``generation``, so runs that differ only in what the baseline never uses share it."""
    return {"baseline": name, **{key: generation[key] for key in BASELINE_COMPONENTS[name]}}


def scoring_components(cfg: DictConfig, generation: dict, conventions: dict) -> dict:
    """``generation`` plus what decides the scores of those images: GT set, metric list and conventions."""
    scoring = {key: OmegaConf.to_container(cfg, resolve=True)[key] for key in SCORING_KEYS}
    return {**generation, "test_set.hr": image_set_identity(cfg.data.hr_dir), **scoring,
            "conventions": _canonical(conventions)}


def differences(recorded: dict, current: dict) -> list[str]:
    """``key: recorded -> current`` for every component that differs (``-`` for a missing one)."""
    keys = sorted(set(recorded) | set(current), key=lambda key: (key not in current, key))
    return [
        f"{key}: {_short(recorded.get(key, '-'))} -> {_short(current.get(key, '-'))}"
        for key in keys if recorded.get(key, "-") != current.get(key, "-")
    ]


def _short(value) -> str:
    text = str(value)
    return text[:19] + "..." if len(text) > 22 else text


def read_fingerprint(run_dir: Path) -> dict | None:
    """``{"fingerprint", "components"}`` of ``<run_dir>/fingerprint.json``, or None when absent."""
    path = Path(run_dir) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("components"), dict):
            raise ValueError("no components")
    except (ValueError, AttributeError) as problem:
        raise ValueError(f"{path}: unreadable fingerprint record ({problem}); delete it to start the run afresh") \
            from None
    return record


def write_fingerprint(run_dir: Path, components: dict) -> str:
    """Record ``components`` and their fingerprint in ``<run_dir>/fingerprint.json`` (atomically); returns it."""
    value = fingerprint(components)
    record = {"fingerprint": value, "components": components}
    write_bytes_atomic(Path(run_dir) / FINGERPRINT_FILE, json.dumps(record, indent=2).encode(), overwrite=True)
    return value
