"""Where the Hydra configs live, where a project's runs and data live, the OmegaConf resolvers, and how a command
builds its model from a preset (:func:`build_model`): the one place that decides these.

The config tree ships inside the package (``sr/conf``; the checkout's top-level ``conf`` is a link to it), so an
installed ``sr`` composes its configs outside the checkout too. ``paths.root_dir`` is ``${oc.env:PROJECT_ROOT}``,
as in the lightning-hydra-template: :func:`register_resolvers`, which every entry point calls before composing,
sets ``$PROJECT_ROOT`` from :func:`find_project_root` unless the user set it. Importing a module sets and registers
nothing.
"""

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sr.commands import launch
from sr.commands.launch import run_stamp

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
# Model folders shipped inside the package (``${released:<name>}`` in a model preset): the released tiny StableSR.
RELEASED_DIR = Path(__file__).resolve().parents[1] / "released"
PROJECT_ROOT_ENV = "PROJECT_ROOT"
# The trained model the commands default to (conf/upscale.yaml, conf/eval.yaml, the web demo), shipped in the package.
RELEASED_MODEL = "stablesr_tiny"


def find_project_root() -> Path:
    """``$PROJECT_ROOT`` if set; else the checkout holding this ``sr`` package (a folder with ``pyproject.toml``
    beside ``sr/``); else, for an installed ``sr``, the current directory. ``runs/`` and ``data/`` live below it."""
    if os.environ.get(PROJECT_ROOT_ENV):
        return Path(os.environ[PROJECT_ROOT_ENV])
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout
    return Path.cwd()


def wandb_default_mode() -> str:
    """``$WANDB_MODE`` if set, else ``online`` with credentials (``WANDB_API_KEY`` or a netrc entry), else ``offline``.

    Offline runs are written under ``<save_dir>/wandb/offline-run-*`` and can be uploaded later with ``wandb sync``.
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    logged_in = netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    return "online" if logged_in else "offline"


def register_resolvers() -> None:
    """What the YAML files' interpolations need (idempotent): ``$PROJECT_ROOT`` for ``${oc.env:PROJECT_ROOT}``
    (found once, see :func:`find_project_root`), ``${wandb_mode:}``, ``${run_stamp:<log dir>,<parent>}`` (the claimed
    time stamp of a run dir, the same on every rank: ``sr.commands.launch``) and the SLURM job sizes of
    ``conf/hydra/launcher/slurm.yaml`` (``sr.commands.launch``) and ``${released:<name>}``, the folder of a model
    shipped in the package (:data:`RELEASED_DIR`); and the sampling settings' schema as Hydra configs
    (``sr.sampling.settings.register_configs``: the ``sampling`` group, the presets' ``sampling`` blocks).

    ``run_stamp`` is cached like Hydra's ``now``: one value per process, copied into every job of a sweep.
    """
    os.environ[PROJECT_ROOT_ENV] = str(find_project_root())
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    for name, function in (("slurm_tasks_per_node", launch.tasks_per_node),
                           ("slurm_gpus_per_node", launch.gpus_per_node), ("slurm_mem_gb", launch.mem_gb_per_node)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
    if not OmegaConf.has_resolver("released"):
        OmegaConf.register_new_resolver("released", lambda name: str(RELEASED_DIR / name))
    if not OmegaConf.has_resolver("wandb_mode"):
        OmegaConf.register_new_resolver("wandb_mode", wandb_default_mode)
    # imported here: it loads torch, and only commands that compose configs need it
    from sr.sampling.settings import register_configs

    register_configs()


def compose(config_name: str, overrides: list[str] | None = None, return_hydra_config: bool = False):
    """``<config_name>.yaml`` composed from ``CONFIG_DIR`` with ``overrides``, as the entry points would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides or []), return_hydra_config=return_hydra_config)


def random_weights_warning(model_cfg: DictConfig) -> str | None:
    """The warning for a model preset without trained weights, or None. A preset whose ``pretrained`` is null (``tiny``,
    kept for tests and training from scratch) builds its UNet and VAE with random weights: its outputs are noise."""
    if model_cfg.get("pretrained") is not None:
        return None
    return (f"warning: model={model_cfg.get('name')} has random weights (model.pretrained is null): the output is "
            f"noise; use model={RELEASED_MODEL} (the released tiny model) or a trained model")


def build_model(model_cfg: DictConfig):
    """The ``StableSRPipeline`` a command samples with (``upscale.py``, ``eval.py``, the web demo): the preset
    ``model_cfg`` instantiated, after :func:`random_weights_warning` (if any) is printed as one line on stderr."""
    from hydra.utils import instantiate  # here: it imports the models (torch)

    if warning := random_weights_warning(model_cfg):
        print(warning, file=sys.stderr)
    return instantiate(model_cfg)
