"""The sampling settings: one typed schema, one vocabulary, validated in one place.

``SamplingSettings`` (with its two tile groups, ``TileSettings`` and ``VaeTileSettings``) is every setting of a
``StableSRPipeline`` call. Its field names are the call's keywords and every other name of the same setting::

    pipe(image, num_inference_steps=10, w=0.5, tile={"size": 32, "overlap": 16})     # the call
    python upscale.py ... num_inference_steps=10 w=0.5 tile.size=32 tile.overlap=16  # the command line
    sampling: {num_inference_steps: 10, tile: {overlap: 16}}                          # a preset, model_index.json
    {"num_inference_steps": 10, "tile.size": 32, ...}                                # fingerprints, report columns

Layers, later wins: the field defaults below (the released any-size recipe, docs/method.md#script-defaults) < a pipeline's ``sampling``
config (its model preset's block) < a run config's keys or the call's keywords. :func:`register_configs` makes the
schema the Hydra config of the presets' ``sampling:`` blocks (``/sampling_settings``, the field defaults) and of the
``sampling`` config group (``sampling/default``: every key ``${model.sampling.<key>}``), so a new field reaches the
command line, the presets, the fingerprint and the report with no other file touched. The Hydra nodes are untyped on
purpose: a wrong value (``w=abc``) then reaches :meth:`SamplingSettings.__post_init__`, which names every bad key in
one line, instead of OmegaConf's multi-line merge error.
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from numbers import Integral, Real
from typing import get_args

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from sr.errors import ConfigError
from sr.models.tiled_vae import DEFAULT_MODE as DEFAULT_VAE_TILE_MODE
from sr.models.tiled_vae import TILED_VAE_MODES
from sr.ops.color import ColorFixMethod
from sr.ops.tiling import TILE_WEIGHTINGS
from sr.sampling.aggregation import START_MODES
from sr.sampling.respacing import RESPACINGS

COLOR_FIXES = get_args(ColorFixMethod)
LATENT_TILE_MULTIPLE = 8     # the SD UNet downsamples latents 8x: a tile side must be a multiple of 8
VAE_FACTOR = 8               # pixels per latent pixel
PIXEL_TILE_MULTIPLE = 64     # VAE tiles: whole latents that are themselves multiples of 8
# Names of earlier versions (saved model_index.json files, old presets), mapped once when a pipeline config is read.
LEGACY_NAMES = {"steps": "num_inference_steps", "tile_size": "tile.size", "tile_overlap": "tile.overlap",
                "tile_weighting": "tile.weighting", "tile_batch_size": "tile.batch_size",
                "vae_tile_size": "vae_tile.size", "vae_tile_overlap": "vae_tile.overlap",
                "vae_tile_mode": "vae_tile.mode"}


@dataclass(frozen=True)
class TileSettings:
    """Latent tiles of progressive aggregation. ``size`` None: the pipeline's ``latent_tile``; ``overlap`` None: half
    the tile; ``weighting`` ``centred`` (ours) or ``official`` (the released code's y-centre, sr.ops.tiling);
    ``batch_size``: tiles per UNet call (no effect on the result)."""

    size: int | None = None
    overlap: int | None = None
    weighting: str = "centred"
    batch_size: int = 4


@dataclass(frozen=True)
class VaeTileSettings:
    """Pixel tiles of the VAE encode / decode, used above one tile. ``mode`` ``exact`` (equals the untiled VAE up to
    float rounding) or ``estimate`` (approximate per-tile passes, sr.models.tiled_vae)."""

    size: int = 1024
    overlap: int = 128
    mode: str = DEFAULT_VAE_TILE_MODE


@dataclass(frozen=True)
class SamplingSettings:
    """Every sampling setting of one call (module docstring); constructing one validates it.

    ``num_inference_steps``: denoising steps; ``w``: CFW fusion strength in [0, 1] (0 = plain SD decoder);
    ``color_fix``: ``adain``, ``wavelet`` or ``none``; ``scale``: output = ``round(h * scale) x round(w * scale)``;
    ``input_size``: sample at >= ``input_size`` px on the short side, then resize back (None or 0: off); ``start``:
    ``lr`` (the LR latent noised to t=999) or ``noise``; ``respacing``: ``scheduler`` (its ``timestep_spacing``) or
    ``official`` (the released code's timesteps, sr.sampling.respacing). The ``stablesr_official*`` presets choose
    ``official`` respacing and tile weighting. ``sample_posterior``: encode the LR with a sample of the VAE posterior
    (the released code) or, false, with its mode (a deterministic encoding).
    """

    num_inference_steps: int = 200
    w: float = 0.5
    color_fix: str = "adain"
    scale: float = 4.0
    input_size: int | None = None
    start: str = "lr"
    respacing: str = "scheduler"
    tile: TileSettings = field(default_factory=TileSettings)
    vae_tile: VaeTileSettings = field(default_factory=VaeTileSettings)
    sample_posterior: bool = True

    def __post_init__(self):
        """Refuse unusable values with one ``ConfigError`` (a ``ValueError``) naming each key; store numbers as their
        field's type (``w=1`` -> ``1.0``)."""
        for name, group in (("tile", TileSettings), ("vae_tile", VaeTileSettings)):
            if isinstance(getattr(self, name), Mapping):
                object.__setattr__(self, name, group(**getattr(self, name)))
        problems = []
        for key, value in _flat(self).items():
            if problem := _problem(key, value):
                problems.append(f"{key}={value!r}: {problem}")
        # overlap < tile, once both are valid on their own
        for group, size_name in (("tile", "the tile size"), ("vae_tile", "vae_tile.size")):
            size, overlap = getattr(self, group).size, getattr(self, group).overlap
            if (size is not None and overlap is not None and not _problem(f"{group}.size", size)
                    and not _problem(f"{group}.overlap", overlap) and overlap >= size):
                problems.append(f"{group}.overlap={overlap!r}: must be smaller than {size_name} ({size})")
        if problems:
            raise ConfigError("; ".join(problems))
        object.__setattr__(self, "w", float(self.w))
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def resolve(cls, latent_tile: int, *layers: Mapping | None, **overrides) -> "SamplingSettings":
        """Field defaults < each of ``layers`` (nested mappings: a preset block, a run config's keys; every key
        given is taken, None included) < ``overrides`` (call keywords, ``tile=`` a mapping or ``TileSettings``; None
        = unset). Then ``tile.size`` None -> ``latent_tile``, ``tile.overlap`` None -> half the tile, ``input_size``
        None -> 0 (off), so the result has no unset value. Unknown names raise ``ConfigError``."""
        merged = asdict(cls())
        for layer in (*layers, _unset_dropped(overrides)):
            _merge(merged, _plain(layer or {}), "")
        try:
            tile = TileSettings(**merged.pop("tile"))
            vae_tile = VaeTileSettings(**merged.pop("vae_tile"))
        except TypeError:
            raise ConfigError("tile / vae_tile must be groups of settings") from None
        settings = cls(**merged, tile=tile, vae_tile=vae_tile)
        size = settings.tile.size if settings.tile.size is not None else latent_tile
        overlap = settings.tile.overlap if settings.tile.overlap is not None else size // 2
        return replace(settings, input_size=settings.input_size or 0,
                       tile=replace(settings.tile, size=size, overlap=overlap))

    @classmethod
    def of_run_config(cls, cfg) -> dict:
        """The setting keys of a run config (``upscale.py`` / ``eval.py``: the ``sampling`` group), resolved, as a
        layer for :meth:`resolve`; an unset (``???``) or unresolvable key raises ``ConfigError`` naming it."""
        layer = {}
        for name in (item.name for item in fields(cls)):
            if name in cfg:
                layer[name] = _resolved(cfg, name)
        return layer

    def arguments(self) -> dict:
        """The ``StableSRPipeline.__call__`` keywords that sample with exactly these settings."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def components(self) -> dict:
        """Every setting under its dotted name (``tile.size``): fingerprints and report columns."""
        return _flat(self)


def resolved_settings(cfg) -> SamplingSettings:
    """The settings a run config samples with, resolved as its pipeline would (without building the model): the
    model preset's ``sampling`` block under the run config's setting keys (``StableSRPipeline.sampling_settings``).
    Also ``sr.pipelines.resolved_settings``."""
    return SamplingSettings.resolve(cfg.model.latent_tile, legacy_names_mapped(cfg.model.get("sampling")),
                                    SamplingSettings.of_run_config(cfg))


def register_configs() -> None:
    """The schema as Hydra configs (module docstring): ``sampling_settings`` (a preset's ``sampling`` block:
    ``defaults: [/sampling_settings@sampling]``) and the ``sampling`` group's ``default`` (package ``_global_``: every
    key ``${model.sampling.<key>}``). Idempotent."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    defaults = asdict(SamplingSettings())
    store.store(name="sampling_settings", node=defaults)
    store.store(group="sampling", name="default", package="_global_",
                node=_interpolations(defaults, "model.sampling"))


def legacy_names_mapped(sampling: Mapping | None) -> dict:
    """A stored ``sampling`` block (a pipeline's config, a preset) with earlier versions' names (``steps``,
    ``tile_size``, ``vae_tile_mode``, ...) under today's nested names."""
    block = _plain(sampling or {})
    for old, new in LEGACY_NAMES.items():
        if old in block:
            value = block.pop(old)
            group, _, name = new.partition(".")
            if name:
                block.setdefault(group, {})[name] = value
            else:
                block[group] = value
    return block


def _interpolations(node: dict, prefix: str) -> dict:
    return {key: _interpolations(value, f"{prefix}.{key}") if isinstance(value, dict) else f"${{{prefix}.{key}}}"
            for key, value in node.items()}


def _plain(layer) -> dict:
    """A mapping (DictConfig, dataclass groups included) as nested plain dicts."""
    if isinstance(layer, DictConfig):
        layer = OmegaConf.to_container(layer, resolve=True)
    return {key: asdict(value) if isinstance(value, (TileSettings, VaeTileSettings))
            else _plain(value) if isinstance(value, Mapping) else value for key, value in dict(layer).items()}


def _unset_dropped(overrides: dict) -> dict:
    """Call keywords without the None (unset) ones, nested groups included."""
    kept = {}
    for key, value in _plain(overrides).items():
        if isinstance(value, dict):
            value = {name: item for name, item in value.items() if item is not None}
        if value is not None:
            kept[key] = value
    return kept


def _merge(target: dict, layer: dict, prefix: str) -> None:
    for key, value in layer.items():
        if key not in target:
            known = ", ".join(prefix + name for name in target)
            raise ConfigError(f"{prefix}{key}: unknown sampling setting; known: {known}")
        if isinstance(target[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}={value!r}: must be a group of settings ({', '.join(target[key])})")
            _merge(target[key], value, f"{prefix}{key}.")
        else:
            target[key] = value


def _resolved(cfg, key: str):
    try:
        value = cfg[key]
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    except MissingMandatoryValue:
        raise ConfigError(f"{key} is not set (add {key}=<value> to the command)") from None
    except InterpolationResolutionError as error:
        raise ConfigError(f"{key}: {str(error).splitlines()[0]}") from None


def _flat(settings: SamplingSettings) -> dict:
    flat = {}
    for key, value in asdict(settings).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _integer(value, low: int, optional: bool = False, multiple: int = 1, unit: str = "") -> str | None:
    if value is None and optional:
        return None
    if not _is_int(value):
        return "must be an integer" + (" or null" if optional else "")
    if multiple > 1 and low > 0 and (value < low or value % multiple):
        return f"must be a positive multiple of {multiple}{unit}"
    if value < low:
        return f"must be an integer >= {low}"
    if value % multiple:
        return f"must be a multiple of {multiple}{unit}"
    return None


def _number(value, low: float, high: float | None = None, low_open: bool = False) -> str | None:
    if not _is_number(value):
        return "must be a number"
    if math.isnan(value) or math.isinf(value):
        return "must be a finite number"
    if (value <= low if low_open else value < low) or (high is not None and value > high):
        return f"must be a number {'>' if low_open else '>='} {low}" if high is None else \
            f"must be a number in [{low}, {high}]"
    return None


def _choice(value, choices) -> str | None:
    return None if value in choices else f"must be one of {', '.join(choices)}"


# The valid values of each setting, by its dotted name.
_CHECKS = {
    "num_inference_steps": lambda v: _integer(v, 1),
    "w": lambda v: _number(v, 0, 1),
    "color_fix": lambda v: _choice(v, COLOR_FIXES),
    "scale": lambda v: _number(v, 0, low_open=True),
    "input_size": lambda v: _integer(v, 0, optional=True),
    "start": lambda v: _choice(v, START_MODES),
    "respacing": lambda v: _choice(v, RESPACINGS),
    "tile.size": lambda v: _integer(v, 1, optional=True, multiple=LATENT_TILE_MULTIPLE, unit=" (latent pixels)"),
    "tile.overlap": lambda v: _integer(v, 0, optional=True),
    "tile.weighting": lambda v: _choice(v, TILE_WEIGHTINGS),
    "tile.batch_size": lambda v: _integer(v, 1),
    "vae_tile.size": lambda v: _integer(v, 1, multiple=PIXEL_TILE_MULTIPLE, unit=" px"),
    "vae_tile.overlap": lambda v: _integer(v, 0, multiple=VAE_FACTOR, unit=" px"),
    "vae_tile.mode": lambda v: _choice(v, TILED_VAE_MODES),
    "sample_posterior": lambda v: None if isinstance(v, bool) else "must be true or false",
}


def _problem(key: str, value) -> str | None:
    """What is wrong with ``value`` for setting ``key`` (None: nothing). Every setting has its check."""
    return _CHECKS[key](value)
