"""Training entry point shared by ``train.py`` and the tests: one generic ``train(cfg)`` for every stage.

``cfg`` is the composed ``conf/train.yaml``: ``model`` (a StableSR preset), ``module`` (the LightningModule of the
stage, built with ``model=``), ``data``, ``callbacks``, ``logger``, ``trainer``, ``paths``. The module owns its
optimizers and its exported artefacts (``module.export(run_dir)``, called by the exporter callback).

Where a run starts (:func:`resume_checkpoint`): a run dir that already holds ``checkpoints/last.ckpt`` is the same
run again (a requeued or re-submitted SLURM job, a finished run extended with a larger ``trainer.max_steps``) and
continues from it; otherwise from ``ckpt_path`` (another run's checkpoint), or from scratch.
"""

import json
import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from sr.commands.config import CONFIG_DIR, register_resolvers
from sr.commands.launch import export_for_child_ranks, ranks_started_here
from sr.commands.tracking import wandb_run_identity
from sr.io import write_bytes_atomic
from sr.training.callbacks import RunCheckpoint, use_durable_checkpoints
from sr.utils.checkpoint import CheckpointError, check_checkpoint_file
from sr.utils.provenance import command_line, git_revision

log = logging.getLogger(__name__)

CONFIG_RECORD = "config_resolved.yaml"
PROVENANCE_RECORD = "provenance.json"


def _instantiate_group(group: DictConfig | None) -> list:
    """Every ``_target_`` entry of a config group such as ``callbacks`` or ``logger`` (null entries skipped)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def record_run(cfg: DictConfig, run_dir: Path, overrides: list[str], job_num: int | None) -> dict:
    """Write the resolved config and the provenance (git revision, command, Hydra overrides, job number) into
    ``run_dir``; returns the hyperparameters to log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # the compose API (tests) leaves Hydra's own node in cfg; @hydra.main does not
    resolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    provenance = {"git_revision": git_revision(), "run_dir": str(run_dir), "command": command_line(),
                  "overrides": overrides, "job_num": job_num}
    for name, text in ((CONFIG_RECORD, OmegaConf.to_yaml(resolved)), (PROVENANCE_RECORD, json.dumps(provenance))):
        write_bytes_atomic(run_dir / name, text.encode(), overwrite=True)
    return {**resolved, "provenance": provenance}


def resume_checkpoint(callbacks: list, ckpt_path: str | None) -> str | None:
    """The checkpoint this run starts from: the run's own ``last.ckpt`` if it exists (it is the newest state of this
    run, and wins over ``ckpt_path``, which only says where the run first started), else ``ckpt_path``.

    A damaged ``last.ckpt`` (empty, cut short: written by a version that saved non-atomically, or copied badly) is
    named in a warning and the newest readable periodic checkpoint (``step*.ckpt``) of the run is used instead; with
    none, the error names the file."""
    for callback in callbacks:
        if isinstance(callback, RunCheckpoint) and callback.last_checkpoint_path.is_file():
            own = callback.last_checkpoint_path
            try:
                check_checkpoint_file(own)
            except CheckpointError as damage:
                own = newest_readable_checkpoint(own.parent, damage)
            log.info("resuming from this run's own checkpoint %s", own)
            print(f"[train] resuming from this run's own checkpoint {own}", flush=True)
            return str(own)
    return ckpt_path


def newest_readable_checkpoint(folder: Path, damage: CheckpointError) -> Path:
    """The periodic checkpoint (``step<N>.ckpt``) of ``folder`` with the highest step that reads as a checkpoint,
    after a warning naming ``damage``; ``CheckpointError`` when there is none."""
    for candidate in sorted(folder.glob("step*.ckpt"), reverse=True):  # zero-padded steps: by name = by step
        try:
            check_checkpoint_file(candidate)
        except CheckpointError:
            continue
        log.warning("%s; resuming from the newest readable periodic checkpoint %s instead", damage, candidate)
        print(f"[train] warning: {damage}; resuming from {candidate} instead", flush=True)
        return candidate
    raise CheckpointError(f"{damage}; no readable step*.ckpt beside it to resume from (move it away to start over)")


def hydra_job() -> tuple[list[str], int | None]:
    """(task overrides, job number) of the running Hydra job; ``([], None)`` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], None
    hydra = HydraConfig.get()
    return list(hydra.overrides.task), OmegaConf.select(hydra, "job.num", default=None, throw_on_missing=False)


def compose_train_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """``conf/train.yaml`` composed as ``train.py`` would (for notebooks and tests), with its run dir ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

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
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    overrides, job_num = hydra_job()
    hyperparameters = record_run(cfg, run_dir, overrides, job_num) if rank_zero_only.rank == 0 else {}
    export_for_child_ranks(run_dir, overrides)
    wandb_logger = (cfg.get("logger") or {}).get("wandb")
    if wandb_logger is not None:
        identity = wandb_run_identity(run_dir, cfg.experiment_name, overrides, job_num)
        with open_dict(cfg):
            for key, value in identity.items():
                wandb_logger[key] = wandb_logger.get(key) or value

    log.info("instantiating data <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    log.info("instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model)
    module = instantiate(cfg.module, model=model)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    use_durable_checkpoints(trainer)
    for logger in trainer.loggers:
        logger.log_hyperparams(hyperparameters)

    try:
        with ranks_started_here(trainer):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_checkpoint(callbacks, cfg.get("ckpt_path")))
    finally:
        if wandb_logger is not None:  # the next job of a sweep in this process gets its own W&B run
            import wandb

            wandb.finish()
    print(f"[train] run dir: {run_dir}")
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.last_model_path:
        print(f"[train] last checkpoint: {trainer.checkpoint_callback.last_model_path}")
    return {"run_dir": run_dir, "metrics": dict(trainer.callback_metrics), "trainer": trainer, "module": module}
