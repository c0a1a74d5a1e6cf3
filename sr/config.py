"""Where the Hydra configs live and the OmegaConf resolvers they use: the one place that decides both.

The config tree ships inside the package (``sr/conf``; the checkout's top-level ``conf`` is a link to it), so an
installed ``sr`` composes its configs outside the checkout too. ``register_resolvers()`` is called by every entry
point before composing; importing a module never registers anything.
"""

import os
from pathlib import Path

from omegaconf import OmegaConf

from sr import launcher
from sr.utils.launch import run_stamp
from sr.utils.provenance import PROJECT_ROOT

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


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
    """``${project_root:}`` (the checkout holding ``sr/``), ``${wandb_mode:}`` and ``${run_stamp:<log dir>}`` (the
    time stamp of a run dir, the same on every rank: ``sr.utils.launch``) and the SLURM job sizes of
    ``conf/hydra/launcher/slurm.yaml`` (``sr.launcher``) for the YAML files (idempotent).

    ``run_stamp`` is cached like Hydra's ``now``: one value per process, copied into every job of a sweep.
    """
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    for name, function in (("slurm_tasks_per_node", launcher.tasks_per_node),
                           ("slurm_gpus_per_node", launcher.gpus_per_node), ("slurm_mem_gb", launcher.mem_gb_per_node)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("wandb_mode"):
        OmegaConf.register_new_resolver("wandb_mode", wandb_default_mode)


def compose(config_name: str, overrides: list[str] | None = None, return_hydra_config: bool = False):
    """``<config_name>.yaml`` composed from ``CONFIG_DIR`` with ``overrides``, as the entry points would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides or []), return_hydra_config=return_hydra_config)
