"""Generate CFW training data with the finetuned stage-1 model (docs/method.md#cfw-data): ``python -m sr.commands.cfw_generate [overrides]``.

Per sample id ``i`` (``i = 0 .. num_samples-1``, this shard's ids are ``i % num_shards == shard``)::

    gt        = crop_size crop (+ hflip) of image i mod N from source_dirs        (seed: sample_seed(seed, i))
    lq, gt    = degradation(gt)                                                 (sharpened GT when the config says so)
    lq_up     = clamp(bicubic(lq, gt size), 0, 1)  (= gt with p no_degradation_prob)  -> inputs/<id>.png ; gt -> gts/
    latent    = x_0 of StableSRPipeline(lq_up, scale=1, output_type="latent"): z_lr = s * E(2 lq_up - 1).sample(),
                x_T = sqrt(a_999) z_lr + sqrt(1 - a_999) n, `steps` respaced steps, untiled (one tile = the latent)
                                                           -> latents/<id>.npy  ([1, 4, h, w] float32, scaled)
    preview   = D(latent / s)  (StableSR.decode, w = 0)   -> samples/<id>.png

Every random draw of sample ``i`` comes from generators seeded by ``sample_seed(seed, i)``, so shards, resumed runs
and single runs write identical files. A sample is finished when all four files exist; finished samples are skipped,
a partial one (interrupted run) is regenerated. Every file is written atomically.
"""

import sys

from sr.errors import one_line_errors
from sr.reproducibility import configure_cpu, reproducible_requested

if __name__ == "__main__":  # before the imports below: importing the models runs tensor operations
    with one_line_errors("sr.commands.cfw_generate"):
        configure_cpu(reproducible_requested(sys.argv[1:]))  # the CPU mode (sr/reproducibility.py)

import logging
import io
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig
from tqdm.auto import tqdm

from sr.commands.config import CONFIG_DIR, register_resolvers
from sr.data.cfw import sample_files
from sr.data.datasets import HRImageDataset
from sr.errors import ConfigError
from sr.io import write_bytes_atomic, write_image
from sr.pipelines import StableSRPipeline, use_scheduler
from sr.validation import device_problem

log = logging.getLogger(__name__)


def sample_seed(seed: int, sample_id: int) -> int:
    """The seed of one sample: ``seed * 1_000_003 + sample_id`` (distinct per id for any realistic run size)."""
    return seed * 1_000_003 + sample_id


def shard_ids(num_samples: int, shard: int, num_shards: int) -> list[int]:
    """Ids ``i < num_samples`` with ``i % num_shards == shard``: disjoint shards whose union is every id."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must satisfy 0 <= shard < num_shards, got shard={shard} num_shards={num_shards}")
    return list(range(shard, num_samples, num_shards))


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` written atomically (temporary file, then rename)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue(), overwrite=True)


class CFWDataGenerator:
    """Makes the files of one sample id (module docstring); ``run(ids, out)`` skips finished ones."""

    def __init__(self, pipe: StableSRPipeline, degradation, steps: int, images: HRImageDataset, seed: int,
                 device: torch.device):
        self.pipe, self.degradation, self.steps = pipe, degradation, steps
        self.images, self.seed, self.device = images, seed, device

    @torch.no_grad()
    def make(self, sample_id: int) -> dict[str, torch.Tensor]:
        """``{"inputs", "gts", "samples"}`` ([3, H, W] in [0, 1]) and ``"latents"`` ([1, 4, h, w]) for one id."""
        seed = sample_seed(self.seed, sample_id)
        gt = self.images[(sample_id % len(self.images), seed)]["gt"][None].to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        lq, gt = self.degradation(gt, generator)
        lq = torch.clamp(F.interpolate(lq, size=gt.shape[-2:], mode="bicubic", align_corners=False), 0, 1)
        no_degradation = torch.rand((), generator=generator, device=self.device).item()
        if no_degradation < self.degradation.no_degradation_prob:
            lq = gt
        latent_side = gt.shape[-1] // 8
        latent = self.pipe(lq, num_inference_steps=self.steps, scale=1, input_size=0, start="lr",
                           tile={"size": latent_side, "overlap": 0}, generator=generator, output_type="latent").images
        preview = ((self.pipe.model.decode(latent) + 1) / 2).clamp(0, 1)
        return {"inputs": lq[0], "gts": gt[0], "samples": preview[0], "latents": latent.float()}

    def run(self, ids: list[int], out: Path) -> list[int]:
        """Generate the unfinished ids into ``out``; returns the ids written by this call."""
        pending = [i for i in ids if not all(p.is_file() for p in sample_files(out, sample_name(i)).values())]
        log.info("%d of %d samples to generate in %s (%d already finished)", len(pending), len(ids), out,
                 len(ids) - len(pending))
        for sample_id in tqdm(pending, desc="cfw data"):
            outputs = self.make(sample_id)
            files = sample_files(out, sample_name(sample_id))
            # Latent first, preview last: a sample counts as finished only once all four exist.
            save_npy(files["latents"], outputs["latents"].cpu().numpy())
            for folder in ("inputs", "gts", "samples"):
                # A partial sample from an interrupted run is regenerated bit for bit, so replacing it is safe.
                write_image(files[folder], outputs[folder].cpu(), overwrite=True)
        return pending


def sample_name(sample_id: int) -> str:
    return f"{sample_id:07d}"


def build_generator(cfg: DictConfig) -> CFWDataGenerator:
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.crop_size % 64:
        raise ValueError(f"crop_size must be a multiple of 64 (latent side a multiple of 8), got {cfg.crop_size}")
    pipe = use_scheduler(instantiate(cfg.model).to(device), instantiate(cfg.scheduler))
    pipe.set_progress_bar_config(disable=True)
    images = HRImageDataset(
        [to_absolute_path(d) for d in cfg.source_dirs], crop_size=cfg.crop_size, use_hflip=True, seed=cfg.seed
    )
    return CFWDataGenerator(pipe, instantiate(cfg.degradation), cfg.steps, images, cfg.seed, device)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="cfw_generate")
def main(cfg: DictConfig) -> None:
    with one_line_errors("sr.commands.cfw_generate", cfg.get("debug", False)):
        if cfg.seed is None:
            raise ConfigError("seed must be set (every sample is seeded from it)")
        if problem := device_problem(cfg.device, allow_auto=True):  # auto: build_generator resolves it
            raise ConfigError(problem)
        generator = build_generator(cfg)
        out = Path(to_absolute_path(cfg.out))
        written = generator.run(shard_ids(cfg.num_samples, cfg.shard, cfg.num_shards), out)
    print(f"[cfw generate] {len(written)} samples written to {out} (shard {cfg.shard}/{cfg.num_shards})")


if __name__ == "__main__":
    register_resolvers()
    main()
