"""Lightning data module: HR crops -> batched on-device degradation -> training-pair pool -> LR upsampled, [-1, 1].

Training batch flow (docs/method.md#degradations, in ``on_after_batch_transfer`` so it runs on the batch's device, as Real-ESRGAN does):

1. ``lq, gt = degradation(gt, generator)`` (``gt`` possibly USM-sharpened);
2. training-pair pool of ``pool_size`` pairs (Real-ESRGAN ``_dequeue_and_enqueue``; only full batches; it holds the
   LR-size ``lq``, which is equivalent to StableSR's pool of upsampled pairs and 16x smaller);
3. if ``upsample_lq``: ``lq`` bicubic-upsampled to the GT size (``align_corners=False``); with probability
   ``degradation.no_degradation_prob`` per batch, or when ``lq`` has a NaN, ``lq = gt`` (StableSR ``get_input``);
4. ``lq, gt = clamp(2 lq - 1, -1, 1), 2 gt - 1``.

Determinism: all randomness (degradation, pool shuffle, no-degradation coin) comes from one ``torch.Generator`` per
rank on the batch's device, seeded with ``derived_seed(seed, rank)`` (distinct streams per data-parallel rank); the
epoch's order and each item's crop come from ``(seed, epoch)``, and rank ``r`` of ``R`` takes every ``R``-th item of
that order. ``state_dict()`` holds every rank's generator state, pool and position in the epoch (gathered on rank 0),
so a resumed run continues with the identical batches on every rank.
"""

from collections.abc import Iterator, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from sr.data.datasets import HRImageDataset, PairedImageDataset
from sr.data.degradations import DegradationPipeline
from sr.utils.distributed import derived_seed, gather_to_rank_zero, own_rank_entry, rank_and_world_size


class EpochSeededSampler(DistributedSampler):
    """Shuffled indices from ``(seed, epoch)``, each paired with that epoch's augmentation seed; rank ``rank`` of
    ``world_size`` gets items ``rank, rank + world_size, ...`` of the first ``world_size * (length // world_size)``.

    Yields ``(index, augmentation_seed)``; ``set_epoch`` is called by Lightning at every epoch start;
    ``skip_next(epoch, n)`` drops the first ``n`` items of this rank's next pass if it is over ``epoch`` (mid-epoch
    resume). It is a ``DistributedSampler`` so that Lightning does not wrap it in its own rank split, whose
    re-sharding after a skip would hand the ranks other items than an uninterrupted run.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if length < world_size:
            raise ValueError(f"{length} training images cannot be split over {world_size} ranks")
        super().__init__(range(length), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=True)
        self.length = length
        self._skip = (0, 0)

    def skip_next(self, epoch: int, count: int) -> None:
        self._skip = (epoch, count)

    def augmentation_seed(self) -> int:
        return derived_seed(self.seed, self.epoch)

    def order(self) -> list[int]:
        """The index order of the current epoch."""
        if not self.shuffle:
            return list(range(self.length))
        generator = torch.Generator().manual_seed(self.augmentation_seed())
        return torch.randperm(self.length, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        (skip_epoch, skip), self._skip = self._skip, (0, 0)
        skip = skip if skip_epoch == self.epoch else 0
        augmentation_seed = self.augmentation_seed()
        shard = self.order()[self.rank : self.num_samples * self.num_replicas : self.num_replicas]
        return iter([(index, augmentation_seed) for index in shard[skip:]])

    def __len__(self) -> int:
        return self.num_samples


class TrainingPairPool:
    """Real-ESRGAN's training-pair pool: the first ``size / B`` batches fill it and pass through; afterwards each
    batch is stored in place of ``B`` pairs taken from the shuffled pool, which are returned instead."""

    def __init__(self, size: int, batch_size: int):
        if size % batch_size != 0:
            raise ValueError(f"pool_size {size} must be divisible by batch_size {batch_size}")
        self.size = size
        self.batch_size = batch_size
        self.lq: torch.Tensor | None = None
        self.gt: torch.Tensor | None = None
        self.filled = 0

    def __call__(self, lq: torch.Tensor, gt: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        batch = lq.shape[0]
        if self.size == 0 or batch != self.batch_size:
            return lq, gt
        if self.lq is None:
            self.lq = lq.new_zeros((self.size, *lq.shape[1:]))
            self.gt = gt.new_zeros((self.size, *gt.shape[1:]))
        elif self.lq.device != lq.device:  # restored from a checkpoint on the CPU
            self.lq, self.gt = self.lq.to(lq.device), self.gt.to(gt.device)
        if self.filled < self.size:
            self.lq[self.filled : self.filled + batch] = lq
            self.gt[self.filled : self.filled + batch] = gt
            self.filled += batch
            return lq, gt
        order = torch.randperm(self.size, generator=generator, device=generator.device).to(self.lq.device)
        self.lq, self.gt = self.lq[order], self.gt[order]
        lq_out, gt_out = self.lq[:batch].clone(), self.gt[:batch].clone()
        self.lq[:batch], self.gt[:batch] = lq, gt
        return lq_out, gt_out

    def state_dict(self) -> dict:
        return {
            "lq": None if self.lq is None else self.lq.cpu(),
            "gt": None if self.gt is None else self.gt.cpu(),
            "filled": self.filled,
        }

    def load_state_dict(self, state: dict) -> None:
        self.lq, self.gt, self.filled = state["lq"], state["gt"], state["filled"]


class SRDataModule(L.LightningDataModule):
    """Training on HR crops degraded on the fly; validation on LR/HR pairs (items of ``PairedImageDataset``)."""

    def __init__(
        self,
        train_dirs: Sequence[str],
        crop_size: int,
        batch_size: int,
        degradation: DegradationPipeline,
        meta_info: str | None = None,
        num_workers: int = 0,
        pool_size: int = 180,
        seed: int = 23,
        val_lr_dir: str | None = None,
        val_hr_dir: str | None = None,
        upsample_lq: bool = True,
        use_hflip: bool = True,
        use_rot: bool = False,
        min_file_bytes: int = 0,
        val_batch_size: int = 1,
        use_colour_jitter: bool = False,
    ):
        super().__init__()
        self.train_dirs = [train_dirs] if isinstance(train_dirs, str) else list(train_dirs)
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.degradation = degradation
        self.meta_info = meta_info
        self.num_workers = num_workers
        self.seed = seed
        self.val_lr_dir, self.val_hr_dir = val_lr_dir, val_hr_dir
        self.upsample_lq = upsample_lq
        self.use_hflip, self.use_rot, self.use_colour_jitter = use_hflip, use_rot, use_colour_jitter
        self.min_file_bytes = min_file_bytes
        self.val_batch_size = val_batch_size
        self.pool = TrainingPairPool(pool_size, batch_size)
        self.train_dataset: HRImageDataset | None = None
        self.val_dataset: PairedImageDataset | None = None
        self.sampler: EpochSeededSampler | None = None
        self._rank = 0
        self._generator: torch.Generator | None = None
        self._pending_generator_state: torch.Tensor | None = None
        self._epoch_position = (0, 0)  # (epoch, training batches consumed in it)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = HRImageDataset(
                self.train_dirs, self.crop_size, self.meta_info, self.use_hflip, self.use_rot, self.min_file_bytes,
                self.seed, self.use_colour_jitter,
            )
            self._rank, world_size = rank_and_world_size()
            self.sampler = EpochSeededSampler(len(self.train_dataset), self.seed, rank=self._rank,
                                              world_size=world_size)
        if self.val_dataset is None and self.val_lr_dir is not None and self.val_hr_dir is not None:
            self.val_dataset = PairedImageDataset(self.val_lr_dir, self.val_hr_dir)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        epoch, consumed = self._epoch_position
        self.sampler.skip_next(epoch, consumed * self.batch_size)
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        if self.val_dataset is None:
            raise ValueError("SRDataModule: no validation pairs configured (val_lr_dir / val_hr_dir)")
        return DataLoader(self.val_dataset, batch_size=self.val_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def generator_for(self, device: torch.device) -> torch.Generator:
        """This rank's degradation generator, created on ``device`` at first use (seeded with
        ``derived_seed(seed, rank)``, or restored from a checkpoint)."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(derived_seed(self.seed, self._rank))
            if self._pending_generator_state is not None:
                self._generator.set_state(self._pending_generator_state)
                self._pending_generator_state = None
        return self._generator

    @torch.no_grad()
    def degrade_batch(self, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        """GT batch in [0, 1] -> training batch ``{"lq", "gt"}`` in [-1, 1] (steps 1-4 of the module docstring)."""
        generator = self.generator_for(gt.device)
        lq, gt = self.degradation(gt, generator)
        lq, gt = self.pool(lq, gt, generator)
        if self.upsample_lq:
            lq = F.interpolate(lq, size=gt.shape[-2:], mode="bicubic", align_corners=False)
            no_degradation = torch.rand(1, generator=generator, device=generator.device).item()
            if no_degradation < self.degradation.no_degradation_prob or torch.isnan(lq).any():
                lq = gt
        return {"lq": torch.clamp(lq * 2 - 1, -1, 1), "gt": gt * 2 - 1}

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if "lq" in batch:  # validation/test pairs pass through unchanged
            return batch
        epoch, consumed = self._epoch_position
        self._epoch_position = (self.sampler.epoch, consumed + 1 if self.sampler.epoch == epoch else 1)
        return self.degrade_batch(batch["gt"])

    def state_dict(self) -> dict:
        """``{"ranks": [state of rank 0, ...]}`` on rank 0 (a collective under DDP; other ranks get ``None``)."""
        generator_state = self._generator.get_state() if self._generator is not None else self._pending_generator_state
        own = {"generator_state": generator_state, "pool": self.pool.state_dict(),
               "epoch_position": self._epoch_position}
        return {"ranks": gather_to_rank_zero(own)}

    def load_state_dict(self, state_dict: dict) -> None:
        own = own_rank_entry(state_dict["ranks"], "data-pipeline state")
        self._generator = None
        self._pending_generator_state = own["generator_state"]
        self.pool.load_state_dict(own["pool"])
        self._epoch_position = tuple(own["epoch_position"])
