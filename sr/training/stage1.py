"""Stage 1 of StableSR (docs/method.md#stage-1): train the time-aware encoder + SFT layers against the frozen SD UNet.

Objective (docs/method.md#stage-1-objective), per training batch of ``lq`` (LR bicubic-upsampled to GT size) and ``gt``, both in [-1, 1]::

    z    = sf * E(lq).sample(),   z_gt = sf * E(gt).sample()          (frozen VAE, posterior samples)
    t    ~ U{0, ..., T-1} per sample,   n ~ N(0, I)
    x_t  = sqrt(abar_t) z_gt + sqrt(1 - abar_t) n                      (scheduler.add_noise)
    loss = mean((UNet(x_t, t, c_empty, SFT(encoder(z, t))) - target)^2)
    target = n (eps-prediction)  |  sqrt(abar_t) n - sqrt(1 - abar_t) z_gt (v-prediction, scheduler.get_velocity)

Randomness is counter-based: every training batch draws from a fresh ``torch.Generator`` seeded with
``derived_seed(seed, rank, batch_index)``, so a resumed run replays the same noise, timesteps and posterior samples
without carrying generator state, and DDP ranks never share noise.
"""

import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from omegaconf import OmegaConf

from sr.metrics.full_reference import psnr, ssim
from sr.models.memory import apply_memory_levers, memory_levers
from sr.pipelines import StableSRPipeline
from sr.training.callbacks import log_image
from sr.utils.distributed import derived_seed, gather_to_rank_zero, own_rank_entry

STAGE1_WEIGHTS_FILE = "stage1.safetensors"


def diffusion_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet must predict: ``noise`` (epsilon) or ``v = sqrt(abar_t) n - sqrt(1 - abar_t) z`` (v_prediction)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected 'epsilon' or 'v_prediction'")


def global_rng_state() -> dict:
    """torch (CPU and every CUDA device), numpy and python global RNG states, as types ``weights_only`` loads."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng_state(state: dict) -> None:
    """Inverse of :func:`global_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rgb(image: torch.Tensor) -> torch.Tensor:
    """Grey ``[B, 1, H, W]`` repeated to three channels, so metrics and grids treat every image alike."""
    return image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image


class TrainableOnlyCheckpoint(L.LightningModule):
    """Checkpoints hold only tensors with ``requires_grad`` (plus optimizer/loop state) and every rank's global RNG
    states (``global_rng_states``: one entry per rank, each rank restores its own).

    The frozen SD UNet and VAE come from the model preset, never from a training checkpoint; a checkpoint that
    lacks a trainable tensor, or names a tensor the module does not have, is refused with the missing names.
    """

    def trainable_keys(self) -> set[str]:
        return {name for name, parameter in self.named_parameters() if parameter.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["global_rng_states"] = gather_to_rank_zero(global_rng_state())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "global_rng_states" in checkpoint:
            restore_global_rng_state(own_rank_entry(checkpoint["global_rng_states"], "global RNG states"))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        known = set(super().state_dict().keys())
        unexpected = sorted(set(state_dict) - known)
        missing = sorted(self.trainable_keys() - set(state_dict))
        if strict and (unexpected or missing):
            raise KeyError(
                f"checkpoint does not match {type(self).__name__}: {len(missing)} trainable tensors missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unknown (e.g. {unexpected[:3]})"
            )
        return super().load_state_dict(state_dict, strict=False, assign=assign)


class Stage1Module(TrainableOnlyCheckpoint):
    """LightningModule for stage 1: AdamW on the time-aware encoder + SFT adapter only, constant learning rate.

    ``model`` is the ``StableSRPipeline``; ``self.model`` its ``StableSR`` operations over the same modules (what
    Lightning moves, freezes and checkpoints). Validation upscales the datamodule's native-LR validation images with
    the current weights through the pipeline itself, with ``validation`` as its sampling arguments (unset ones: the
    pipeline's defaults) and a fixed ``val_seed``; it logs PSNR/SSIM on the Y channel (``sr.metrics.full_reference``)
    and LR | SR | HR grids for the first ``val_logged_batches`` batches.
    ``memory``: the memory levers (``sr.models.memory.MemoryLevers``; ``module.memory`` in the configs).
    """

    def __init__(
        self,
        model: StableSRPipeline,
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        seed: int = 23,
        validation: dict | None = None,
        val_seed: int = 0,
        val_logged_batches: int = 2,
        memory: dict | None = None,
    ):
        super().__init__()
        betas = tuple(float(beta) for beta in betas)  # plain floats: checkpoints must load with weights_only=True
        levers = memory_levers(memory)
        memory = levers.as_dict()  # a plain dict in the checkpoint's hyperparameters
        # plain containers: the nested tile groups must not reach the checkpoint as DictConfigs (weights_only=True)
        validation = OmegaConf.to_container(OmegaConf.create(dict(validation or {})), resolve=True)
        # resolved (and refused when bad) now, not at the first validation
        self.validation_settings = model.sampling_settings(**validation)
        self.save_hyperparameters(ignore=["model"])
        self.pipeline = model
        self.pipeline.set_progress_bar_config(disable=True)
        self.model = model.model
        self.model.freeze_except("stage1")
        apply_memory_levers(self.model, levers)
        self.seed = seed

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.model.parameters_of("stage1"), lr=self.hparams.lr, betas=tuple(self.hparams.betas),
            eps=self.hparams.eps, weight_decay=self.hparams.weight_decay,
        )

    def batch_generator(self, batch_index: int) -> torch.Generator:
        """CPU generator of one training batch (CPU so the numbers do not depend on the accelerator)."""
        return torch.Generator().manual_seed(derived_seed(self.seed, self.global_rank, batch_index))

    def stage1_loss(self, lq: torch.Tensor, gt: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The docs/method.md#stage-1-objective objective (module docstring) for one batch; all randomness from ``generator``."""
        model = self.model
        with torch.no_grad():
            z_lr, _ = model.encode(lq, generator=generator)
            z_gt, _ = model.encode(gt, generator=generator)
        num_timesteps = model.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_timesteps, (gt.shape[0],), generator=generator).to(self.device)
        noise = torch.randn(z_gt.shape, generator=generator).to(device=self.device, dtype=z_gt.dtype)
        x_t = model.scheduler.add_noise(z_gt, noise, timesteps)
        prediction = model.predict(x_t, timesteps, z_lr)
        target = diffusion_target(model.scheduler, z_gt, noise, timesteps)
        return F.mse_loss(prediction.float(), target.float())

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        # the global count of batches (not the per-epoch index) so every batch of a run gets its own seed
        generator = self.batch_generator(self.trainer.fit_loop.total_batch_idx)
        loss = self.stage1_loss(batch["lq"], batch["gt"], generator)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["gt"].shape[0], sync_dist=True)  # mean of ranks
        return loss

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_index: int) -> None:
        """Upscale each native-LR image (one pipeline call each: sizes may differ), score and log grids."""
        names = batch.get("name") or [f"{batch_index}_{row}" for row in range(batch["lq"].shape[0])]
        for row, name in enumerate(names):
            lq, gt = _rgb(batch["lq"][row : row + 1]), _rgb(batch["gt"][row : row + 1]).float()
            generator = torch.Generator().manual_seed(self.hparams.val_seed)
            sr = self.pipeline(lq, generator=generator, output_type="pt",
                               **self.validation_settings.arguments()).images.float()
            if sr.shape != gt.shape:
                raise ValueError(f"validation image {name}: SR {tuple(sr.shape)} and GT {tuple(gt.shape)} differ in size")
            self.log("val/psnr_y", psnr(sr, gt, 0, "y").mean(), batch_size=1, sync_dist=True)
            self.log("val/ssim_y", ssim(sr, gt, 0, "y").mean(), batch_size=1, sync_dist=True)
            if batch_index < self.hparams.val_logged_batches and self.trainer.is_global_zero:
                lr_up = F.interpolate(lq.float(), size=gt.shape[-2:], mode="nearest")
                grid = torch.cat([lr_up[0], sr[0], gt[0]], dim=-1).cpu()
                log_image(self.trainer, f"val/{Path(str(name)).stem}", grid, self.global_step)

    # ------------------------------------------------------------------ artefacts
    def export(self, folder: str | Path) -> Path:
        """Write the trained encoder + SFT weights as ``<folder>/stage1.safetensors``."""
        return self.model.save_trainable(Path(folder) / STAGE1_WEIGHTS_FILE, ("encoder", "sft"))

    def export_paths(self, folder: str | Path) -> list[Path]:
        return [Path(folder) / STAGE1_WEIGHTS_FILE]
