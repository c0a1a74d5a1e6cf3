"""Stage 2: train the CFW fusion layers of the VAE decoder (docs/method.md#stage-2).

Per batch ``{lq, gt, latent}`` (images in [-1, 1], ``latent`` the stage-1 model's *scaled* sample latent)::

    f1, f2 = E_features(lq)                       # frozen VAE encoder
    x_hat  = D_cfw(latent / s, [f1, f2], w)       # frozen VAE decoder + trainable fusion layers
    L_G    = AutoencoderLoss.generator_loss(gt, x_hat)    -> Adam(fusion layers, lr, betas)
    L_D    = AutoencoderLoss.discriminator_loss(gt, x_hat) -> Adam(discriminator, lr, betas)

Only the fusion layers and the discriminator train; the encoder, decoder and LPIPS are frozen. ``w`` is fixed (the
release's ``fusion_w: 1.0``) or drawn ``U[0, 1]`` per batch (``w_sampling="uniform"``).

Manual optimisation (two optimizers, alternating per batch as the release's ``optimizer_idx`` 0/1). Lightning's
``global_step`` counts every optimizer's steps, so the module keeps its own ``updates`` counter (generator updates,
saved with the checkpoint): ``disc_start`` and ``max_updates`` are in those units, the release's PL-1.4 ``global_step``.
Gradient accumulation (the release: batch 1 x 8) is done here, since Lightning refuses it under manual optimisation.
Checkpoints keep only the trainable tensors (plus the counter and the discriminator's BatchNorm statistics); the
exporter callback (``sr.training.callbacks.TrainableWeightsExporter``) calls ``export(run_dir)`` at the end of fit.
"""

import logging
from pathlib import Path

import torch

from sr.models.memory import apply_memory_levers, memory_levers
from sr.pipelines import StableSRPipeline
from sr.training.losses import AutoencoderLoss, Reconstruction
from sr.training.stage1 import TrainableOnlyCheckpoint

log = logging.getLogger(__name__)

CFW_EXPORT_FILE = "cfw.safetensors"
W_SAMPLING = ("fixed", "uniform")


class UpdateCounter(TrainableOnlyCheckpoint):
    """Generator-update counter and stop rule shared by the manual-optimisation modules of this package.

    The counter and the discriminator's BatchNorm statistics are checkpointed with the trainable tensors.
    """

    def __init__(self, max_updates: int | None):
        super().__init__()
        if max_updates is not None and max_updates < 1:
            raise ValueError(f"max_updates must be a positive number of updates or null, got {max_updates}")
        self.max_updates = max_updates
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def trainable_keys(self) -> set[str]:
        buffers = {name for name, _ in self.named_buffers() if "." not in name or name.startswith("loss.discriminator.")}
        return super().trainable_keys() | buffers

    @property
    def update_step(self) -> int:
        return int(self.updates)

    def count_update(self) -> None:
        self.updates += 1
        if self.max_updates is not None and self.update_step >= self.max_updates:
            self.trainer.should_stop = True

    def on_train_batch_start(self, batch, batch_idx):
        """A run resumed after its last update (a finished run continued in its own dir) stops before training."""
        if self.max_updates is not None and self.update_step >= self.max_updates:
            self.trainer.should_stop = True
            return -1  # Lightning: skip the rest of the epoch; with should_stop, fit ends
        return None


class CFWModule(UpdateCounter):
    """Trains ``model.cfw`` (and ``loss.discriminator``) on generated ``{lq, gt, latent}`` batches; ``export(run_dir)``
    writes ``run_dir/cfw.safetensors``. ``memory``: the memory levers (``sr.models.memory.MemoryLevers``)."""

    def __init__(
        self,
        model: StableSRPipeline,
        loss: AutoencoderLoss,
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.5, 0.9),
        w: float = 1.0,
        w_sampling: str = "fixed",
        accumulate_grad_batches: int = 1,
        max_updates: int | None = None,
        memory: dict | None = None,
    ):
        super().__init__(max_updates)
        if w_sampling not in W_SAMPLING:
            raise ValueError(f"w_sampling must be one of {W_SAMPLING}, got {w_sampling!r}")
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        self.automatic_optimization = False
        self.pipeline, self.model, self.loss = model, model.model, loss
        self.lr, self.betas = lr, tuple(betas)
        self.w, self.w_sampling = w, w_sampling
        self.accumulate_grad_batches = accumulate_grad_batches
        self.model.freeze_except("stage2")
        # the fusion layers are what this module trains: decoding through their initial values is intended here, so
        # the model's "never loaded or trained" warning (meant for upscaling) would only repeat every batch
        self.model.cfw_trained = True
        apply_memory_levers(self.model, memory_levers(memory))
        loss.discriminator.requires_grad_(True)

    def configure_optimizers(self):
        generator = torch.optim.Adam(self.model.parameters_of("stage2"), lr=self.lr, betas=self.betas)
        discriminator = torch.optim.Adam(self.loss.discriminator.parameters(), lr=self.lr, betas=self.betas)
        return [generator, discriminator]

    def fusion_strength(self) -> float:
        return float(torch.rand(()).item()) if self.w_sampling == "uniform" else self.w

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        optimizer_g, optimizer_d = self.optimizers()
        scale = 1.0 / self.accumulate_grad_batches
        boundary = (batch_idx + 1) % self.accumulate_grad_batches == 0
        step = self.update_step
        with torch.no_grad():
            features = self.model.autoencoder.encode(batch["lq"]).features
        w = self.fusion_strength()
        with self.toggled_optimizer(optimizer_g):
            output = self.model.decode(batch["latent"], features, w=w)
            loss_g, logs = self.loss.generator_loss(batch["gt"], Reconstruction(output), step)
            self.manual_backward(loss_g * scale)
            if boundary:
                optimizer_g.step()
                optimizer_g.zero_grad(set_to_none=True)
        # The reconstruction is reused (detached) for the discriminator: the release re-ran the identical forward.
        if self.loss.adversarial_active(step):
            with self.toggled_optimizer(optimizer_d):
                loss_d, logs_d = self.loss.discriminator_loss(batch["gt"], output, step)
                self.manual_backward(loss_d * scale)
                if boundary:
                    optimizer_d.step()
                    optimizer_d.zero_grad(set_to_none=True)
            logs.update(logs_d)
        # sync_dist: the logged values are means over the data-parallel ranks, not rank 0's alone
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=batch["gt"].shape[0],
                      sync_dist=True)
        self.log("train/w", w, batch_size=batch["gt"].shape[0])
        if boundary:
            self.count_update()
        return loss_g.detach()

    def export(self, folder: str | Path) -> Path:
        """Write the CFW fusion weights as ``<folder>/cfw.safetensors`` (``model.cfw_weights`` loads it)."""
        return self.model.save_trainable(Path(folder) / CFW_EXPORT_FILE, parts=("cfw",))

    def export_paths(self, folder: str | Path) -> list[Path]:
        return [Path(folder) / CFW_EXPORT_FILE]
