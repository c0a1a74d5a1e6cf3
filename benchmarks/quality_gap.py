"""Where the model's distance to bicubic comes from, on the held-out pairs and on the colour set.

    python benchmarks/quality_gap.py [--model sr/released/stablesr_tiny] [--sets heldout colour] [--steps N]
                                     [--seed 42] [--threads 2]

``--sets`` takes the bundled sets by name (``heldout``: ``data/samples/heldout_pairs``, Real-ESRGAN-degraded;
``colour``: ``data/samples/colour_pairs``, strongly coloured, bicubic LR; both never trained on) or any folder with
``hr/`` and ``lr/`` images of the same names. For each set one markdown table: a row per output below, a column per
image with ``PSNR-Y / SSIM-Y / NIQE / colour / chroma`` (8-bit images, crop border 0, ``MetricSuite`` as eval.py
scores; ``colour``: ``sr.metrics.colour.largest_channel_mean_difference``, a global cast; ``chroma``:
``sr.metrics.colour.mean_chroma_error``,
local colour, which a colour fix toward the LR's channel means cannot restore), then the means. Rows:

- ``autoencoder (HR, w=0, no colour fix)``: the HR itself encoded and decoded by the plain decoder
  (``reconstruct`` at scale 1, w = 0, colour fix ``none``): the honest autoencoder number, what the plain decoder
  makes of the HR itself, its colour cast included;
- ``ceiling: autoencoder + colour fix to HR (w=0)`` and ``ceiling: + CFW on HR features + colour fix (w=1)``: the
  same with the model's colour fix aligning to the HR's own statistics, and with CFW fused with the HR's own encoder
  features at w = 1 (the ceilings ``reconstruct`` reaches when it is handed the answer);
- ``bicubic``: the LR upscaled by the resize a call uses (``StableSRPipeline.bicubic``);
- ``lr_latent w=...``: the LR latent decoded without diffusion, made by eval.py's own baseline function;
- ``sampler w=...``: the pipeline call with the model's defaults, ``--steps`` and ``torch.Generator().manual_seed
  (--seed)``.

Under each table: the bicubic gap, PSNR-Y of ``sampler w=1`` minus that of ``bicubic`` (negative: below bicubic), of
the means and per image. The tables go to stdout (the same for the same model, settings and images); progress and
the seconds per set to stderr.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sr.commands.evaluation import baseline_image
from sr.io import ImageReadError, list_images, read_image
from sr.metrics import MetricSuite
from sr.metrics.colour import largest_channel_mean_difference, mean_chroma_error
from sr.pipelines import StableSRPipeline

ROOT = Path(__file__).resolve().parents[1]
SETS = {"heldout": ROOT / "data" / "samples" / "heldout_pairs", "colour": ROOT / "data" / "samples" / "colour_pairs"}
WEIGHTS = (0.0, 0.5, 1.0)
METRICS = ("psnr_y", "ssim_y", "niqe")
AUTOENCODER = "autoencoder (HR, w=0, no colour fix)"
BICUBIC = "bicubic"
FIDELITY = "sampler w=1"


def read_pairs(folder: Path) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, HR, LR) of every image in ``folder/hr`` with its namesake in ``folder/lr``, both RGB ``[3, H, W]``."""
    hr_paths = list_images(folder / "hr") if (folder / "hr").is_dir() else []
    if not hr_paths:
        raise ValueError(f"{folder}: no images in {folder / 'hr'}")
    pairs = []
    for hr_path in hr_paths:
        lr_path = folder / "lr" / hr_path.name
        if not lr_path.is_file():
            raise ValueError(f"{lr_path}: missing, the LR of {hr_path}")
        hr, lr = (read_image(path).image[:3].expand(3, -1, -1) for path in (hr_path, lr_path))
        pairs.append((hr_path.stem, hr, lr))
    return pairs


def outputs(pipe: StableSRPipeline, hr: torch.Tensor, lr: torch.Tensor, steps: int | None,
            seed: int) -> dict[str, torch.Tensor]:
    """Every row's image ``[3, H, W]`` for one pair (module docstring)."""
    scale = hr.shape[-1] / lr.shape[-1]
    images = {
        AUTOENCODER: pipe.reconstruct(hr, w=0.0, color_fix="none", scale=1, output_type="pt").images[0],
        "ceiling: autoencoder + colour fix to HR (w=0)": pipe.reconstruct(hr, w=0.0, scale=1,
                                                                           output_type="pt").images[0],
        "ceiling: + CFW on HR features + colour fix (w=1)": pipe.reconstruct(hr, w=1.0, scale=1,
                                                                              output_type="pt").images[0],
        BICUBIC: StableSRPipeline.bicubic(lr, scale, output_type="pt").images[0],
    }
    for w in WEIGHTS:
        settings = pipe.sampling_settings(w=w, scale=scale)
        images[f"lr_latent w={w:g}"] = baseline_image("lr_latent", lr, settings, pipe)
    for w in WEIGHTS:
        generator = torch.Generator().manual_seed(seed)
        images[f"sampler w={w:g}"] = pipe(lr, num_inference_steps=steps, w=w, scale=scale, generator=generator,
                                          output_type="pt").images[0]
    return {label: image.expand(3, -1, -1) for label, image in images.items()}


def mean(values: list[float | str]) -> float | str:
    """The mean, or the first ``"n/a (...)"`` among ``values``."""
    missing = [value for value in values if isinstance(value, str)]
    return missing[0] if missing else sum(values) / len(values)


def cell(value: float | str, digits: int) -> str:
    return "n/a" if isinstance(value, str) else f"{value:.{digits}f}"


def score_set(pipe: StableSRPipeline, suite: MetricSuite, pairs: list[tuple[str, torch.Tensor, torch.Tensor]],
              steps: int | None, seed: int, label: str) -> tuple[list[str], dict[str, list[dict]]]:
    """(image names, {row: [per-image scores]}) of one pair set, the scores being ``METRICS``, ``colour`` and
    ``chroma``."""
    rows: dict[str, list[dict]] = {}
    for name, hr, lr in tqdm(pairs, desc=label, unit="image"):
        for row, image in outputs(pipe, hr, lr, steps, seed).items():
            scores = suite.score_image(image[None], hr[None], name)
            scores["colour"] = largest_channel_mean_difference(image, hr)
            scores["chroma"] = mean_chroma_error(image, hr)
            rows.setdefault(row, []).append(scores)
    return [name for name, _, _ in pairs], rows


def table(names: list[str], rows: dict[str, list[dict]]) -> list[str]:
    """The markdown lines of one set's table, its n/a reasons and its bicubic gap."""
    lines = [f"| output | {' | '.join(names)} | mean PSNR-Y | mean SSIM-Y | mean NIQE | mean colour | mean chroma |",
             "|---|" + "---|" * (len(names) + 5)]
    reasons = set()
    means = {}
    for label, values in rows.items():
        cells = [f"{cell(v['psnr_y'], 2)} / {cell(v['ssim_y'], 3)} / {cell(v['niqe'], 2)} / {cell(v['colour'], 1)}"
                 f" / {cell(v['chroma'], 1)}" for v in values]
        means[label] = {key: mean([v[key] for v in values]) for key in (*METRICS, "colour", "chroma")}
        reasons |= {v[key] for v in values for key in METRICS if isinstance(v[key], str)}
        lines.append(f"| {label} | {' | '.join(cells)} | {cell(means[label]['psnr_y'], 2)} | "
                     f"{cell(means[label]['ssim_y'], 4)} | {cell(means[label]['niqe'], 2)} | "
                     f"{cell(means[label]['colour'], 1)} | {cell(means[label]['chroma'], 1)} |")
    lines += sorted(reasons)
    gap = means[FIDELITY]["psnr_y"] - means[BICUBIC]["psnr_y"]
    per_image = ", ".join(f"{name} {fidelity['psnr_y'] - bicubic['psnr_y']:+.2f}"
                          for name, fidelity, bicubic in zip(names, rows[FIDELITY], rows[BICUBIC], strict=True))
    lines.append(f"\nbicubic gap (PSNR-Y, {FIDELITY} minus bicubic): mean {gap:+.2f} dB; per image {per_image}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "sr" / "released" / "stablesr_tiny",
                        help="a pipeline folder (save_pretrained)")
    parser.add_argument("--sets", nargs="+", default=list(SETS),
                        help=f"bundled set names ({', '.join(SETS)}) or folders with hr/ and lr/")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:   # every set read first: a bad folder fails before the model runs
        sets = {name: read_pairs(SETS.get(name, Path(name))) for name in args.sets}
    except (ValueError, ImageReadError) as error:
        print(f"quality_gap: error: {error}", file=sys.stderr)
        return 1
    pipe = StableSRPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    suite = MetricSuite(METRICS, crop_border=0, seed=args.seed)
    steps = pipe.sampling_settings(num_inference_steps=args.steps).num_inference_steps
    print(f"model {args.model.name}, {steps} steps, seed {args.seed}; cells: PSNR-Y (dB) / SSIM-Y / NIQE (lower: "
          f"sharper) / colour (largest channel-mean difference to the HR, 8-bit levels) / chroma (mean per-pixel "
          f"Cb-Cr distance to the HR, 8-bit levels)")
    for name, pairs in sets.items():
        start = time.perf_counter()
        names, rows = score_set(pipe, suite, pairs, args.steps, args.seed, name)
        print(f"{name}: {len(names)} images in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        print(f"\n### {name} ({len(names)} images)\n")
        print("\n".join(table(names, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
