"""Training entry point shared by ``train.py`` and the tests: one generic ``train(cfg)`` for every stage.

``cfg`` is the composed ``conf/train.yaml``: ``model`` (a StableSR preset), ``module`` (the LightningModule of the
stage, built with ``model=``), ``data``, ``callbacks``, ``logger``, ``trainer``, ``paths``. The module owns its
optimizers and its exported artefacts (``module.export(run_dir)``, called by the exporter callback).
"""

import json
import logging
import os
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sr.config import CONFIG_DIR, register_resolvers
from sr.io import write_bytes_atomic
from sr.utils.provenance import git_revision

log = logging.getLogger(__name__)

CONFIG_RECORD = "config_resolved.yaml"
PROVENANCE_RECORD = "provenance.json"


def _instantiate_group(group: DictConfig | None) -> list:
    """Every ``_target_`` entry of a config group such as ``callbacks`` or ``logger`` (null entries skipped)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def record_run(cfg: DictConfig, run_dir: Path) -> dict:
    """Write the resolved config and the git revision into ``run_dir``; returns the hyperparameters to log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # the compose API (tests) leaves Hydra's own node in cfg; @hydra.main does not
    resolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    provenance = {"git_revision": git_revision(), "run_dir": str(run_dir)}
    for name, text in ((CONFIG_RECORD, OmegaConf.to_yaml(resolved)), (PROVENANCE_RECORD, json.dumps(provenance))):
        write_bytes_atomic(run_dir / name, text.encode(), overwrite=True)
    return {**resolved, "provenance": provenance}


def compose_train_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """``conf/train.yaml`` composed as ``train.py`` would (for notebooks and tests), with its run dir ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register_resolvers()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def train(cfg: DictConfig) -> dict:
    """Build data, model, module, callbacks, loggers and trainer from ``cfg`` and fit (resuming from ``ckpt_path``).

    Returns ``{"run_dir", "metrics", "trainer", "module"}``.
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    hyperparameters = record_run(cfg, run_dir)

    log.info("instantiating data <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    log.info("instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model)
    module = instantiate(cfg.module, model=model)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(hyperparameters)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    print(f"[train] run dir: {run_dir}")
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.last_model_path:
        print(f"[train] last checkpoint: {trainer.checkpoint_callback.last_model_path}")
    return {"run_dir": run_dir, "metrics": dict(trainer.callback_metrics), "trainer": trainer, "module": module}
