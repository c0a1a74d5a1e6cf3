"""Where the tiny model's distance to bicubic comes from: the autoencoder ceilings on the held-out pairs.

    python benchmarks/quality_gap.py [--model sr/released/stablesr_tiny] [--pairs data/samples/heldout_pairs]

Prints PSNR-Y / SSIM-Y (pyiqa conventions, 8-bit, as eval.py scores) per held-out image and their mean for

- ``bicubic``: the LR upscaled by the resize a call uses (``StableSRPipeline.bicubic``);
- ``vae ceiling (w=0)``: the HR itself encoded and decoded by the plain decoder (``reconstruct`` at scale 1, w = 0,
  the model's colour fix, here aligning to the HR's own statistics): roughly the closest the plain decoder gets to
  the HR, whatever the diffusion does;
- ``vae+cfw ceiling (w=1)``: the same with CFW fused with the HR's own encoder features at w = 1.

Together with the eval sweep's ``lr_latent`` rows (the LR latent decoded without diffusion) and its sampled rows,
this splits the gap into autoencoder, CFW and diffusion parts.
"""

import argparse
from pathlib import Path

import torch

from sr.io import list_images, read_image
from sr.metrics.full_reference import psnr, ssim
from sr.pipelines import StableSRPipeline

ROOT = Path(__file__).resolve().parents[1]


def quantised(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round()[None] / 255


def scores(output: torch.Tensor, hr: torch.Tensor) -> tuple[float, float]:
    output, hr = quantised(output), quantised(hr)
    return float(psnr(output, hr, 0, "y")), float(ssim(output, hr, 0, "y"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "sr" / "released" / "stablesr_tiny")
    parser.add_argument("--pairs", type=Path, default=ROOT / "data" / "samples" / "heldout_pairs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = StableSRPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    rows: dict[str, list[tuple[float, float]]] = {}
    names = [path.name for path in list_images(args.pairs / "hr")]
    for name in names:
        hr = read_image(args.pairs / "hr" / name).image[:3].expand(3, -1, -1)
        lr = read_image(args.pairs / "lr" / name).image[:3].expand(3, -1, -1)
        scale = hr.shape[-1] / lr.shape[-1]
        outputs = {
            "bicubic": StableSRPipeline.bicubic(lr, scale, output_type="pt").images[0],
            "vae ceiling (w=0)": pipe.reconstruct(hr, w=0.0, scale=1, output_type="pt").images[0],
            "vae+cfw ceiling (w=1)": pipe.reconstruct(hr, w=1.0, scale=1, output_type="pt").images[0],
        }
        for label, output in outputs.items():
            rows.setdefault(label, []).append(scores(output.expand(3, -1, -1), hr))
    print(f"| output | {' | '.join(Path(name).stem for name in names)} | mean PSNR-Y | mean SSIM-Y |")
    print("|---|" + "---|" * (len(names) + 2))
    for label, values in rows.items():
        cells = " | ".join(f"{p:.2f} / {s:.3f}" for p, s in values)
        mean_psnr = sum(p for p, _ in values) / len(values)
        mean_ssim = sum(s for _, s in values) / len(values)
        print(f"| {label} | {cells} | {mean_psnr:.2f} | {mean_ssim:.4f} |")


if __name__ == "__main__":
    main()
