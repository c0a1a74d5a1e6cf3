"""Which levers make the tiny prior's autoencoder generalise and keep colours: trained side by side, equal budgets.

    python benchmarks/autoencoder_levers.py [--updates 300] [--levers baseline,colour,colour16,...] [--lr 1e-3]
        [--eval DIR ...]
    python benchmarks/autoencoder_levers.py --checkpoints runs/release/prior/checkpoints/step000{2,4,6}000.ckpt
    python benchmarks/autoencoder_levers.py --checkpoints runs/release/prior/checkpoints/step000{4,5,6}000.ckpt --average

Each lever trains a fresh VAE (the ``tiny`` preset's, with the changes the lever names) for ``--updates`` updates of
L1 + KL (the prior's first phase without the GAN; Adam at ``--lr``, betas (0.5, 0.9) as the prior) on random
``--window`` px windows of the bundled training photos,
batch 8, one seed; then scores 256 px centre crops of the training photos (the fit) and of the HR photos of every
``--eval`` folder (never trained on: how it generalises), encoded then decoded with
no colour fix: PSNR-Y (8-bit, as eval.py scores), and the largest per-channel mean colour difference to the HR in
8-bit levels. Prints one markdown row per lever with its parameter count and seconds per update (measured here, in
this run, side by side).

``--checkpoints`` trains nothing: it scores, the same way, the VAE inside each given step checkpoint of a prior run
(``train.py experiment=release_tiny_prior``, ``<run>/checkpoints/step*.ckpt``), built as that run's
``config_resolved.yaml`` says, one row per checkpoint: how the autoencoder's reconstruction moves during training.
``--average`` adds one row for the VAE whose every weight is the mean of that weight over the given checkpoints
(uniform checkpoint averaging, ``theta = (1 / N) * sum_i theta_i``): whether averaging the end of a run would help.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import sr  # noqa: F401  first: its filter of the bitsandbytes hub-kernel warning must exist before diffusers imports it
from diffusers import AutoencoderKL
from omegaconf import OmegaConf

from sr.data.datasets import random_crop_augment
from sr.io import list_images, read_image
from sr.metrics import quantize_8bit
from sr.metrics.colour import largest_channel_mean_difference
from sr.metrics.full_reference import psnr
from sr.training.losses import AutoencoderLoss, reconstruct
from sr.utils.checkpoint import load_checkpoint_state_dict

ROOT = Path(__file__).resolve().parents[1]

# lever -> (changes to the tiny preset's vae block, quarter turns + colour jitter on)
LEVERS = {
    "baseline": ({}, False),
    "colour": ({}, True),
    "colour16": ({"latent_channels": 16}, True),
    "colour8": ({"latent_channels": 8}, True),
    "colour16_wide": ({"latent_channels": 16, "block_out_channels": [64, 64, 128, 128]}, True),
    "wide16": ({"latent_channels": 16, "block_out_channels": [64, 64, 128, 128]}, False),
    # 32 GroupNorm groups on 32 channels normalise every feature map on its own (instance normalisation): the
    # decoder then cannot carry an image's mean colour and contrast; 8 groups keep 4 to 8 channels per group.
    "groups8": ({"norm_num_groups": 8}, False),
    "colour_groups8": ({"norm_num_groups": 8}, True),
    "colour16_groups8": ({"latent_channels": 16, "norm_num_groups": 8}, True),
    # one group normalises over all channels at once (a layer norm): the channels' means relative to each other, the
    # colour, pass through every normalisation
    "groups8_16": ({"latent_channels": 16, "norm_num_groups": 8}, False),
    "groups1_16": ({"latent_channels": 16, "norm_num_groups": 1}, False),
    # twice the latent channels again: 6x fewer numbers than pixel values instead of 12x (16) or 48x (4)
    "groups8_32": ({"latent_channels": 32, "norm_num_groups": 8}, False),
}
# the released prior's autoencoder, as the recipe's experiment file sets it (with the recipe's jitter and quarter
# turns), then one change each: the widths [64, 64, 128, 128], or two ResNet blocks per level as SD's VAE has
RELEASE_VAE = OmegaConf.to_container(
    OmegaConf.load(ROOT / "conf" / "experiment" / "release_tiny_prior.yaml").model.vae, resolve=True)
LEVERS |= {
    "release": (RELEASE_VAE, True),
    "release_wide": (RELEASE_VAE | {"block_out_channels": [64, 64, 128, 128]}, True),
    "release_deep": (RELEASE_VAE | {"layers_per_block": 2}, True),
}


def training_windows(
    photos: list[torch.Tensor], size: int, batch: int, rng: np.random.Generator, augment: bool
) -> torch.Tensor:
    """``batch`` random ``size`` px windows of random photos, in [-1, 1], cropped and augmented as the training data
    module does (horizontal flips; with ``augment`` also quarter turns and the colour jitter)."""
    indices = rng.integers(0, len(photos), batch)
    return torch.stack([random_crop_augment(photos[index], size, rng, True, augment, augment)
                        for index in indices]) * 2 - 1


def evaluate(vae: AutoencoderKL, images: list[torch.Tensor]) -> tuple[float, float]:
    """Mean PSNR-Y and the worst colour difference of the HR images encoded (posterior mean) and decoded."""
    scores, colours = [], []
    with torch.no_grad():
        for image in images:
            decoded = vae.decode(vae.encode(image[None] * 2 - 1).latent_dist.mode()).sample[0]
            output = (decoded + 1) / 2
            scores.append(float(psnr(quantize_8bit(output)[None], quantize_8bit(image)[None], 0, "y")))
            colours.append(largest_channel_mean_difference(output, image))
    return sum(scores) / len(scores), max(colours)


def checkpoint_vae(checkpoint: Path) -> AutoencoderKL:
    """The VAE of a prior run's step checkpoint (``<run>/checkpoints/step*.ckpt``, loaded as tensors only), with the
    architecture of the run's ``config_resolved.yaml``."""
    run_config = checkpoint.resolve().parents[1] / "config_resolved.yaml"
    if not run_config.is_file():
        raise SystemExit(f"{checkpoint}: no {run_config} beside its checkpoints folder (not a prior run's checkpoint?)")
    vae = AutoencoderKL(**OmegaConf.to_container(OmegaConf.load(run_config).model.vae, resolve=True))
    prefix = "model.vae."
    weights = {key[len(prefix):]: value for key, value in load_checkpoint_state_dict(checkpoint).items()
               if key.startswith(prefix)}
    if not weights:
        raise SystemExit(f"{checkpoint}: no '{prefix}*' weights (not a prior run's checkpoint?)")
    vae.load_state_dict(weights)
    return vae.eval()


def average_weights(vaes: list[AutoencoderKL]) -> AutoencoderKL:
    """A new VAE of the same architecture whose every tensor is the mean of that tensor over ``vaes``."""
    states = [vae.state_dict() for vae in vaes]
    averaged = AutoencoderKL.from_config(vaes[0].config)
    averaged.load_state_dict({key: torch.stack([state[key] for state in states]).mean(0) for key in states[0]})
    return averaged.eval()


def load_rgb(folder: Path, crop: int | None = None) -> list[torch.Tensor]:
    images = []
    for path in list_images(folder):
        image = read_image(path).image[:3].expand(3, -1, -1).float()
        height, width = image.shape[-2:]
        side = min(crop or 10**9, height, width) // 8 * 8
        top, left = (height - side) // 2, (width - side) // 2
        images.append(image[:, top : top + side, left : left + side])
    return images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--eval", type=Path, nargs="+",
                        default=[ROOT / "data" / "samples" / "heldout_pairs" / "hr"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoints", type=Path, nargs="+",
                        help="score the VAE of each prior step checkpoint instead of training the levers")
    parser.add_argument("--average", action="store_true",
                        help="with --checkpoints: one more row, the VAE with the mean weights of the checkpoints")
    args = parser.parse_args(argv)
    if args.average and not args.checkpoints:
        parser.error("--average needs --checkpoints")
    torch.set_num_threads(args.threads)
    # the training photos themselves (256 px centre crops) first: how well the autoencoder fits, then how it generalises
    eval_sets = {folder: load_rgb(folder, 256) for folder in [ROOT / "data" / "samples" / "train", *args.eval]}
    header = " | ".join(f"{folder.parent.name}/{folder.name} PSNR-Y / colour diff" for folder in eval_sets)
    if args.checkpoints:
        print(f"| checkpoint | {header} |")
        print("|---|" + "---|" * len(eval_sets))
        rows = [(checkpoint.name, checkpoint_vae(checkpoint)) for checkpoint in args.checkpoints]
        if args.average:
            rows.append((f"mean weights of {len(rows)} checkpoints", average_weights([vae for _, vae in rows])))
        for name, vae in rows:
            cells = " | ".join("{:.2f} dB / {:.1f}".format(*evaluate(vae, images)) for images in eval_sets.values())
            print(f"| {name} | {cells} |", flush=True)
        return
    tiny_vae = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml"), resolve=True)["vae"]
    photos = load_rgb(ROOT / "data" / "samples" / "train")  # whole, for the training windows
    print(f"| lever | VAE parameters | s / update | final L1 | {header} |")
    print("|---|---|---|---|" + "---|" * len(eval_sets))
    for lever in args.levers.split(","):
        changes, augment = LEVERS[lever]
        torch.manual_seed(args.seed)
        vae = AutoencoderKL(**(tiny_vae | changes))
        loss_fn = AutoencoderLoss(perceptual_weight=0.0, kl_weight=1e-6, disc_start=10**9)
        optimizer = torch.optim.Adam(vae.parameters(), lr=args.lr, betas=(0.5, 0.9))
        rng, generator = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
        started = time.perf_counter()
        for step in range(args.updates):
            windows = training_windows(photos, args.window, 8, rng, augment)
            loss, logs = loss_fn.generator_loss(windows, reconstruct(vae, windows, generator), step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        per_update = (time.perf_counter() - started) / args.updates
        cells = " | ".join("{:.2f} dB / {:.1f}".format(*evaluate(vae, images)) for images in eval_sets.values())
        parameters = sum(p.numel() for p in vae.parameters())
        print(f"| {lever} | {parameters / 1e6:.2f} M | {per_update:.3f} | {float(logs['l1']):.4f} | {cells} |",
              flush=True)


if __name__ == "__main__":
    main()
