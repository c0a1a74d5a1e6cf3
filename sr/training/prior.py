"""The tiny preset's frozen prior, trained here only because SD-2.1 weights cannot be downloaded (demo scaffolding).

The real recipe never trains this part: StableSR freezes the SD-2.1 VAE and UNet and only trains the time-aware
encoder + SFT (stage 1) and CFW (stage 2). To give the ``tiny`` preset a prior that does *something*, this module
trains, on HR crops (``batch["gt"]``, [-1, 1]), in two phases counted in generator updates:

1. ``vae_updates`` updates of the VAE with :class:`AutoencoderLoss` (L1 + LPIPS + hinge GAN + KL), as LDM trains its
   first stage, at ``vae_lr`` or, with ``vae_lr_final``, on the cosine schedule of :func:`cosine_learning_rate`; then
   the latent scale is set as LDM's ``scale_by_std``: ``scaling_factor = 1 / std(z)`` over one batch of posterior
   samples, so the diffusion sees unit-variance latents;
2. ``unet_updates`` updates of the UNet (the plain diffusers UNet: SFT is never applied here) on the SD objective
   ``|| UNet(sqrt(a_t) z + sqrt(1 - a_t) n, t, c_empty) - target ||^2``, ``target = n`` (eps) or
   ``sqrt(a_t) n - sqrt(1 - a_t) z`` (v), ``t ~ U{0..999}``.

``export(run_dir)`` (called by the exporter callback at the end of fit) writes the whole model with
``pipeline.save_pretrained(run_dir / "model")``: the ``pretrained`` folder of the stage-1 demo (``paths.prior_dir``).
"""

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from sr.pipelines import StableSRPipeline
from sr.training.losses import AutoencoderLoss, reconstruct
from sr.training.stage2 import UpdateCounter

log = logging.getLogger(__name__)

PRIOR_EXPORT_FOLDER = "model"


def random_crop(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """One random ``size x size`` window shared by the batch (global torch RNG, seeded by Lightning); None = as is."""
    height, width = images.shape[-2:]
    if size is None or (size >= height and size >= width):
        return images
    if size > height or size > width:
        raise ValueError(f"crop size {size} exceeds the image size {height}x{width}")
    top = int(torch.randint(0, height - size + 1, ()))
    left = int(torch.randint(0, width - size + 1, ()))
    return images[..., top : top + size, left : left + size]


def cosine_learning_rate(step: int, total: int, start: float, final: float) -> float:
    """The learning rate of update ``step`` (0-based) of ``total`` on a half cosine from ``start`` to ``final``:
    ``lr = final + (start - final) * (1 + cos(pi * step / total)) / 2`` (``start`` at step 0, ``final`` at ``total``).
    A function of the update count alone, so a resumed run continues the schedule where it stopped."""
    if total <= 0 or not 0 <= step <= total:
        raise ValueError(f"need 0 <= step <= total with total > 0, got step {step} of {total}")
    return final + (start - final) * (1 + math.cos(math.pi * step / total)) / 2


class PriorModule(UpdateCounter):
    """Phase 1 trains the pipeline's ``vae`` (+ discriminator), phase 2 its ``unet``; stops by itself after
    ``vae_updates + unet_updates`` updates; ``export(run_dir)`` writes ``run_dir/model``."""

    def __init__(
        self,
        model: StableSRPipeline,
        loss: AutoencoderLoss,
        vae_updates: int,
        unet_updates: int,
        vae_lr: float = 1e-3,
        unet_lr: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.9),
        vae_crop_size: int | None = None,
        vae_lr_final: float | None = None,
    ):
        if vae_updates < 0 or unet_updates < 0 or vae_updates + unet_updates == 0:
            raise ValueError(f"need vae_updates, unet_updates >= 0 with a positive sum, got {vae_updates}, {unet_updates}")
        super().__init__(vae_updates + unet_updates)
        self.automatic_optimization = False
        self.pipeline, self.model, self.loss = model, model.model, loss
        self.vae_updates, self.unet_updates = vae_updates, unet_updates
        self.vae_lr, self.unet_lr, self.betas = vae_lr, unet_lr, tuple(betas)
        self.vae_crop_size = vae_crop_size
        self.vae_lr_final = vae_lr_final
        # 0 until phase 2 sets it; a buffer so that a resumed run keeps the scale it trained the UNet with.
        self.register_buffer("latent_scale", torch.zeros(()))
        self.model.freeze_except(None)
        self.model.vae.requires_grad_(True)
        self.model.unet.requires_grad_(True)

    def configure_optimizers(self):
        vae = torch.optim.Adam(self.model.vae.parameters(), lr=self.vae_lr, betas=self.betas)
        discriminator = torch.optim.Adam(self.loss.discriminator.parameters(), lr=self.vae_lr, betas=self.betas)
        unet = torch.optim.AdamW(self.model.unet.parameters(), lr=self.unet_lr)
        return [vae, discriminator, unet]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.update_step < self.vae_updates:
            loss = self._vae_step(random_crop(batch["gt"], self.vae_crop_size))
        else:
            loss = self._unet_step(batch["gt"])
        self.count_update()
        return loss

    def _vae_step(self, gt: torch.Tensor) -> torch.Tensor:
        optimizer_vae, optimizer_d, _ = self.optimizers()
        step = self.update_step
        if self.vae_lr_final is not None:
            for group in optimizer_vae.optimizer.param_groups:
                group["lr"] = cosine_learning_rate(step, self.vae_updates, self.vae_lr, self.vae_lr_final)
        with self.toggled_optimizer(optimizer_vae):
            reconstruction = reconstruct(self.model.vae, gt)
            loss_g, logs = self.loss.generator_loss(gt, reconstruction, step)
            optimizer_vae.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            optimizer_vae.step()
        if self.loss.adversarial_active(step):
            with self.toggled_optimizer(optimizer_d):
                loss_d, logs_d = self.loss.discriminator_loss(gt, reconstruction.image, step)
                optimizer_d.zero_grad(set_to_none=True)
                self.manual_backward(loss_d)
                optimizer_d.step()
            logs.update(logs_d)
        self.log_dict({f"prior_vae/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=gt.shape[0],
                      sync_dist=True)
        return loss_g.detach()

    def _unet_step(self, gt: torch.Tensor) -> torch.Tensor:
        _, _, optimizer_unet = self.optimizers()
        model = self.model
        with torch.no_grad():
            latent = model.vae.encode(gt).latent_dist.sample()
            if self.latent_scale == 0:
                self.latent_scale.fill_(1.0 / latent.float().std().item())
                log.info("latent scaling factor set to %.5f (1 / std of the VAE latents)", float(self.latent_scale))
            self._apply_latent_scale()
            latent = latent * model.scaling_factor
        noise = torch.randn_like(latent)
        timesteps = torch.randint(0, model.scheduler.config.num_train_timesteps, (latent.shape[0],),
                                  device=latent.device)
        noisy = model.scheduler.add_noise(latent, noise, timesteps)
        if model.prediction_type == "v_prediction":
            target = model.scheduler.get_velocity(latent, noise, timesteps)
        else:
            target = noise
        context = model.prompt_embeds.to(noisy.dtype).expand(noisy.shape[0], -1, -1)
        with self.toggled_optimizer(optimizer_unet):
            prediction = model.unet(noisy, timesteps, encoder_hidden_states=context).sample
            loss = F.mse_loss(prediction.float(), target.float())
            optimizer_unet.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer_unet.step()
        self.log("prior_unet/mse", loss.detach(), prog_bar=True, batch_size=gt.shape[0], sync_dist=True)
        return loss.detach()

    def _apply_latent_scale(self) -> None:
        self.model.vae.register_to_config(scaling_factor=float(self.latent_scale))

    def export(self, folder: str | Path) -> Path:
        """Write the trained pipeline as ``<folder>/model`` (``StableSRPipeline.from_pretrained``,
        ``model.pretrained``).

        The exporter callback has already refused an existing folder unless told to overwrite."""
        if self.latent_scale > 0:
            self._apply_latent_scale()
        path = self.pipeline.save_pretrained(Path(folder) / PRIOR_EXPORT_FOLDER)
        log.info("tiny prior written to %s (demo scaffolding: the real recipe uses frozen SD-2.1)", path)
        return path

    def export_paths(self, folder: str | Path) -> list[Path]:
        return [Path(folder) / PRIOR_EXPORT_FOLDER]
