"""Tiled VAE vs the untiled VAE on a trained VAE: error per source, seams, time and memory (not a test).

    .venv/bin/python benchmarks/tiled_vae.py --pretrained <tiny prior model folder> [--image <photo>] [--side 1536]
        [--threads 2] [--device cpu] [--skip-memory]

The photo is resized (bicubic, antialiased) to ``--side`` px on its long side, above both statistics-pass sizes
(``stats_size``: 1024 px to encode, 128 latent px = 1024 px to decode), so the estimate mode estimates its GroupNorm
statistics. Errors are against the untiled ``encoder_features`` / ``decode_latent`` of the same input: relative L2
``||tiled - untiled|| / ||untiled||`` and max-abs, on the latent moments (encode) and on the image in [0, 1] (decode,
so 1/255 is one 8-bit level). Decode runs with ``w = 0`` (the trained decoder alone) and ``w = 0.5`` through the CFW
fusion (CFW weights from ``--cfw-weights``, else the preset's random initialisation: exactness does not depend on
them).

Printed, side by side:
1. error of each mode at the default tiles (``tiled_encode``/``tiled_decode`` defaults);
2. error per source of the estimate mode, each measured alone:
   - statistics: the exact layer-by-layer pass fed the estimate's GroupNorm statistics (from the downscaled copy);
   - mid-block attention: the exact pass with each tile's attention restricted to the tile plus the estimate's halo;
   - halo: the estimate mode with exact statistics (``stats_size`` = the whole input) on a copy of the VAE without
     its mid-block attention, against that copy untiled, for several halos;
3. seams: gradient energy across tile borders / gradient energy elsewhere (horizontal and vertical steps between
   neighbouring pixels), for the untiled and the tiled decodes at the same borders;
4. time and peak memory per mode, each in a fresh process: on CUDA ``torch.cuda.max_memory_allocated`` (accelerator
   memory), on CPU the peak RSS delta (``VmHWM``; there the exact mode's host-parked maps count too).
"""

import argparse
import copy
import json
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra.utils import instantiate  # noqa: E402

from sr.commands.config import compose  # noqa: E402
from sr.io import read_image  # noqa: E402
from sr.models.cfw import decode_latent, encoder_features  # noqa: E402
from sr.models.layerwise_vae import LayerwiseRunner, group_normaliser  # noqa: E402
from sr.models.tiled_vae import GroupNormStatistics, estimate_statistics, tiled_decode, tiled_encode  # noqa: E402
from sr.ops.tiling import tile_starts  # noqa: E402

ENCODE_DEFAULTS = {"tile": 512, "overlap": 128, "halo": 32, "stats_size": 1024}  # tiled_encode's, in pixels
DECODE_DEFAULTS = {"tile": 64, "overlap": 16, "halo": 8, "stats_size": 128}  # tiled_decode's, in latent pixels
DEFAULT_IMAGE = REPO / "data" / "samples" / "train" / "astronaut.png"


def load_model(pretrained: str | None, cfw_weights: str | None, device: str):
    overrides = ["input=unset", "output=unset", "model=tiny"]
    overrides += [f"model.pretrained={pretrained}"] if pretrained else []
    overrides += [f"model.cfw_weights={cfw_weights}"] if cfw_weights else []
    pipe = instantiate(compose("upscale", overrides).model).to(device)
    for part in (pipe.vae, pipe.cfw):
        part.eval()
    return pipe


def load_image(path: Path, side: int, device: str) -> torch.Tensor:
    image = read_image(path).image[None]
    height, width = image.shape[-2:]
    scale = side / max(height, width)
    size = [max(8, round(length * scale / 8) * 8) for length in (height, width)]
    resized = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return (resized * 2 - 1).to(device)


def errors(tiled: torch.Tensor, reference: torch.Tensor, scale: float = 1.0) -> dict[str, float]:
    """Relative L2 error and max-abs error (times ``scale``, e.g. 1/2 for images in [-1, 1] measured in [0, 1])."""
    difference = (tiled.double() - reference.double())
    return {"relative": (difference.norm() / reference.double().norm()).item(),
            "max_abs": difference.abs().max().item() * scale}


def border_steps(length: int, tile: int, overlap: int) -> list[int]:
    """Indices ``i`` of the steps ``x[i+1] - x[i]`` that cross a tile border (a tile's first or last pixel)."""
    steps = set()
    for start in tile_starts(length, tile, overlap):
        steps.update({start - 1, start + tile - 1})
    return sorted(step for step in steps if 0 <= step < length - 1)


def seam_ratio(image: torch.Tensor, row_steps: list[int], col_steps: list[int]) -> float:
    """Mean squared neighbour step across the given tile borders / the same elsewhere (1 = no seam)."""
    horizontal = (image[..., :, 1:] - image[..., :, :-1]).double() ** 2
    vertical = (image[..., 1:, :] - image[..., :-1, :]).double() ** 2
    col_mask = torch.zeros(horizontal.shape[-1], dtype=torch.bool)
    col_mask[col_steps] = True
    row_mask = torch.zeros(vertical.shape[-2], dtype=torch.bool)
    row_mask[row_steps] = True
    border = torch.cat([horizontal[..., col_mask].flatten(), vertical[..., row_mask, :].flatten()])
    elsewhere = torch.cat([horizontal[..., ~col_mask].flatten(), vertical[..., ~row_mask, :].flatten()])
    return (border.mean() / elsewhere.mean()).item()


class EstimatedStatisticsRunner(LayerwiseRunner):
    """The exact pass, except that every GroupNorm uses the estimate mode's recorded statistics."""

    def __init__(self, statistics: GroupNormStatistics, *args):
        super().__init__(*args)
        self.statistics = statistics

    def normaliser(self, x, norm: nn.GroupNorm, activation=None):
        mean, var = self.statistics.values[norm][0]
        return group_normaliser(norm, mean.double(), var.double(), activation)


class WindowedAttentionRunner(LayerwiseRunner):
    """The exact pass, except that each tile's queries attend only to the tile plus ``halo`` latent pixels."""

    global_attention = False

    def __init__(self, halo: int, *args):
        super().__init__(*args)
        self.halo = halo

    def attention_context(self, x, rows, cols):
        height, width = x.shape[-2:]
        yield (slice(max(rows.start - self.halo, 0), min(rows.stop + self.halo, height)),
               slice(max(cols.start - self.halo, 0), min(cols.stop + self.halo, width)))


def without_mid_attention(vae: nn.Module) -> nn.Module:
    """A copy of ``vae`` whose encoder and decoder mid blocks skip their self-attention (halo-only ablation)."""
    stripped = copy.deepcopy(vae)
    for part in (stripped.encoder, stripped.decoder):
        part.mid_block.attentions = nn.ModuleList([None] * len(part.mid_block.attentions))
    return stripped


def runner_for(cls, extra, vae, base_hw, tile, modules):
    groups = {m.num_groups for module in modules for m in module.modules() if isinstance(m, nn.GroupNorm)}
    device = next(vae.parameters()).device
    return cls(*extra, device, torch.device("cpu"), (tile, tile), base_hw, groups, False)


@torch.no_grad()
def error_benchmark(model, x: torch.Tensor) -> None:
    vae, cfw = model.vae, model.cfw
    height, width = x.shape[-2:]
    latent_hw = (height // 8, width // 8)
    reference_moments, reference_features = encoder_features(vae, x)
    z = reference_moments[:, :4]
    print(f"input {width}x{height} px (latent {latent_hw[1]}x{latent_hw[0]}); errors vs the untiled pass: "
          "relative L2 and max-abs (moments: latent units; images: [0, 1], 1/255 = {:.2e})".format(1 / 255))
    header = f"{'what':<66} {'relative':>10} {'max-abs':>10}"

    def row(label: str, result: dict[str, float]) -> None:
        print(f"{label:<66} {result['relative']:>10.2e} {result['max_abs']:>10.2e}")

    print("\n1. modes at the default tiles\n" + header)
    decoded = {}
    for mode in ("estimate", "exact"):
        moments, _ = tiled_encode(vae, x, progress=False, mode=mode)
        row(f"encode moments, {mode}", errors(moments, reference_moments))
    for w in (0.0, 0.5):
        reference = decode_latent(vae, cfw, z, reference_features, w)
        decoded[("untiled", w)] = reference
        for mode in ("estimate", "exact"):
            image = tiled_decode(vae, z, reference_features, w, cfw=cfw, progress=False, mode=mode)
            decoded[(mode, w)] = image
            row(f"decode w={w}, {mode}", errors(image, reference, 0.5))

    print("\n2. estimate-mode error per source, each alone (defaults: encode tile 512 px halo 32 px stats 1024 px; "
          "decode tile 64 halo 8 stats 128 latent px)\n" + header)
    encode_scales = [Fraction(1, 8), Fraction(1, 2), Fraction(1, 4)]
    statistics = estimate_statistics(lambda t: encoder_features(vae, t), [(x, Fraction(1))], encode_scales,
                                     ENCODE_DEFAULTS["stats_size"], [vae.encoder], x.device)
    runner = runner_for(EstimatedStatisticsRunner, (statistics,), vae, (height, width), ENCODE_DEFAULTS["tile"],
                        [vae.encoder])
    row("encode, statistics (estimated from the downscaled copy)", errors(runner.encode(vae, x)[0], reference_moments))
    runner = runner_for(WindowedAttentionRunner, (ENCODE_DEFAULTS["halo"] // 8,), vae, (height, width),
                        ENCODE_DEFAULTS["tile"], [vae.encoder])
    row("encode, mid-block attention (tile + halo only)", errors(runner.encode(vae, x)[0], reference_moments))
    for w in (0.0, 0.5):
        fused = w != 0
        modules = [vae.decoder] + ([cfw] if fused else [])
        reference = decoded[("untiled", w)]
        decode_inputs = [(z, Fraction(1))] + ([(reference_features[0], Fraction(4)),
                                               (reference_features[1], Fraction(2))] if fused else [])
        statistics = estimate_statistics(
            lambda tile_z, *feats: decode_latent(vae, cfw, tile_z, list(feats) if fused else None, w),
            decode_inputs, [Fraction(8)], DECODE_DEFAULTS["stats_size"], modules, x.device,
        )
        runner = runner_for(EstimatedStatisticsRunner, (statistics,), vae, latent_hw, DECODE_DEFAULTS["tile"], modules)
        image = runner.decode(vae, z, cfw if fused else None, reference_features if fused else None, w)
        row(f"decode w={w}, statistics (estimated from the downscaled copy)", errors(image, reference, 0.5))
        runner = runner_for(WindowedAttentionRunner, (DECODE_DEFAULTS["halo"],), vae, latent_hw,
                            DECODE_DEFAULTS["tile"], modules)
        image = runner.decode(vae, z, cfw if fused else None, reference_features if fused else None, w)
        row(f"decode w={w}, mid-block attention (tile + halo only)", errors(image, reference, 0.5))

    stripped = without_mid_attention(vae)
    stripped_moments, stripped_features = encoder_features(stripped, x)
    for halo in (8, 32, 64, 128):
        moments, _ = tiled_encode(stripped, x, halo=halo, stats_size=max(height, width), progress=False,
                                  mode="estimate")
        row(f"encode, halo {halo} px (exact statistics, no attention)", errors(moments, stripped_moments))
    stripped_z = stripped_moments[:, :4]
    for w in (0.0, 0.5):
        reference = decode_latent(stripped, cfw, stripped_z, stripped_features, w)
        for halo in (8, 16, 32, 64):
            image = tiled_decode(stripped, stripped_z, stripped_features, w, halo=halo, stats_size=max(latent_hw),
                                 cfw=cfw, progress=False, mode="estimate")
            row(f"decode w={w}, halo {halo} latent px (exact statistics, no attention)",
                errors(image, reference, 0.5))

    print("\n3. seams: gradient energy across tile borders / elsewhere (1 = none; same borders for every row)")
    estimate_borders = [border_steps(side * 8, DECODE_DEFAULTS["tile"] * 8, DECODE_DEFAULTS["overlap"] * 8)
                        for side in latent_hw]
    exact_borders = [sorted(set(range(DECODE_DEFAULTS["tile"] * 8 - 1, side * 8 - 1, DECODE_DEFAULTS["tile"] * 8)))
                     for side in latent_hw]
    print(f"{'decode':<20} {'estimate-mode borders':>22} {'exact-mode borders':>20}")
    for key in [("untiled", 0.0), ("estimate", 0.0), ("exact", 0.0), ("untiled", 0.5), ("estimate", 0.5),
                ("exact", 0.5)]:
        image = (decoded[key] + 1) / 2
        print(f"{key[0] + f' w={key[1]}':<20} {seam_ratio(image, *estimate_borders):>22.3f} "
              f"{seam_ratio(image, *exact_borders):>20.3f}")


def peak_child(args: argparse.Namespace) -> None:
    """One timed encode or decode in this fresh process; prints seconds and peak memory as JSON."""
    model = load_model(args.pretrained, args.cfw_weights, args.device)
    x = load_image(Path(args.image), args.side, args.device)
    operation, mode = args.peak_child.split(":")
    with torch.no_grad():
        moments, features = encoder_features(model.vae, x) if operation == "decode" else (None, None)

        def run():
            if operation == "encode":
                return (encoder_features(model.vae, x) if mode == "untiled"
                        else tiled_encode(model.vae, x, progress=False, mode=mode))
            z = moments[:, :4]
            if mode == "untiled":
                return decode_latent(model.vae, model.cfw, z, features, 0.5)
            return tiled_decode(model.vae, z, features, 0.5, cfw=model.cfw, progress=False, mode=mode)

        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM)
            before = proc_status_bytes("VmRSS")
        start = time.perf_counter()
        run()
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else proc_status_bytes("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_delta": max(peak - before, 0)}))


def proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")


def memory_benchmark(args: argparse.Namespace) -> None:
    what = "accelerator memory (max_memory_allocated)" if args.device == "cuda" else "peak RSS delta (VmHWM)"
    print(f"\n4. time and peak memory, default tiles, decode w=0.5, each in a fresh process: {what}")
    print(f"{'operation':<10} {'mode':<10} {'seconds':>8} {'peak MB':>9}")
    results = {}
    for operation in ("encode", "decode"):
        for mode in ("untiled", "estimate", "exact"):
            command = [sys.executable, __file__, "--peak-child", f"{operation}:{mode}", "--image", str(args.image),
                       "--side", str(args.side), "--threads", str(args.threads), "--device", args.device]
            command += ["--pretrained", args.pretrained] if args.pretrained else []
            command += ["--cfw-weights", args.cfw_weights] if args.cfw_weights else []
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            results[(operation, mode)] = row
            print(f"{operation:<10} {mode:<10} {row['seconds']:>8.2f} {row['peak_delta'] / 2**20:>9.0f}")
    for operation in ("encode", "decode"):
        exact, estimate = results[(operation, "exact")], results[(operation, "estimate")]
        print(f"{operation}: exact / estimate time {exact['seconds'] / estimate['seconds']:.2f}x, "
              f"peak memory {exact['peak_delta'] / max(estimate['peak_delta'], 1):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default=None,
                        help="trained tiny prior folder (train.py experiment=prior_tiny); default: random weights")
    parser.add_argument("--cfw-weights", default=None)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--side", type=int, default=1536)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_child:
        peak_child(args)
        return
    model = load_model(args.pretrained, args.cfw_weights, args.device)
    print(f"weights: VAE from {args.pretrained or 'the preset random initialisation (NOT trained)'}; CFW from {args.cfw_weights or 'the preset random initialisation'}; "
          f"image {args.image.name} resized to {args.side} px; device {args.device}, {args.threads} threads")
    error_benchmark(model, load_image(args.image, args.side, args.device))
    if not args.skip_memory:
        memory_benchmark(args)


if __name__ == "__main__":
    main()
