"""benchmarks/quality_gap.py: the colour-difference measure and the tables on a one-image pair set."""

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("quality_gap", ROOT / "benchmarks" / "quality_gap.py")
quality_gap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality_gap)

ROWS = ["autoencoder (HR, w=0, no colour fix)", "ceiling: autoencoder + colour fix to HR (w=0)",
        "ceiling: + CFW on HR features + colour fix (w=1)", "bicubic", "lr_latent w=0", "lr_latent w=0.5",
        "lr_latent w=1", "sampler w=0", "sampler w=0.5", "sampler w=1"]


def test_largest_channel_mean_difference_in_8bit_levels():
    hr = torch.stack([torch.full((4, 4), level / 255) for level in (100, 50, 200)])
    output = hr.clone()
    output[0] += 3 / 255                    # R: +3 levels everywhere
    output[1, :2] += 8 / 255                # G: +8 levels on half the pixels, +4 on average
    output[2] -= 2 / 255                    # B: -2 levels
    output += 0.4 / 255                     # below half a level: quantised away
    assert quality_gap.largest_channel_mean_difference(output, hr) == pytest.approx(4.0, abs=1e-9)
    assert quality_gap.largest_channel_mean_difference(hr, output) == pytest.approx(4.0, abs=1e-9)
    assert quality_gap.largest_channel_mean_difference(hr, hr) == 0.0


def test_mean_chroma_error_in_8bit_levels():
    hr = torch.stack([torch.full((4, 4), level / 255) for level in (100, 50, 200)])
    brighter = hr + 10 / 255                          # the same offset on R, G, B: no chroma change
    assert quality_gap.mean_chroma_error(brighter, hr) == pytest.approx(0.0, abs=1e-9)
    redder = hr.clone()
    redder[0] += 10 / 255                             # R +10 levels: (Cb, Cr) moves by 10 * (-0.168736, 0.5)
    assert quality_gap.mean_chroma_error(redder, hr) == pytest.approx(10 * math.hypot(0.168736, 0.5), abs=1e-6)
    grey = hr.mean(dim=0, keepdim=True).expand(3, -1, -1)
    assert quality_gap.mean_chroma_error(grey, hr) > 10   # washed to grey, channel means aside: high


def test_main_prints_every_row_with_finite_scores(tmp_path, capsys):
    # one 192 px crop of a bundled colour pair (NIQE's smallest size), the released model at 1 step
    for side, size in (("hr", 192), ("lr", 48)):
        (tmp_path / "pairs" / side).mkdir(parents=True)
        with Image.open(ROOT / "data" / "samples" / "colour_pairs" / side / "flower_dahlia.png") as image:
            image.crop((0, 0, size, size)).save(tmp_path / "pairs" / side / "dahlia.png")
    assert quality_gap.main(["--sets", str(tmp_path / "pairs"), "--steps", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "model stablesr_tiny, 1 steps, seed 3" in out
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ")[1:] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| output")}
    assert list(rows) == ROWS
    for label, cells in rows.items():
        per_image = [float(value) for value in cells[0].split(" / ")]
        means = [float(value) for value in cells[1:]]
        assert len(per_image) == 5 and all(math.isfinite(value) for value in per_image), label
        assert means == pytest.approx(per_image, abs=1e-2), label   # one image: the mean is that image's score
        assert 0 <= per_image[3] < 255, label
    assert float(rows["bicubic"][0].split(" / ")[3]) < 1   # bicubic of a bicubic LR keeps the channel means
    gap = re.search(r"bicubic gap .*: mean ([-+][0-9.]+) dB; per image dahlia ([-+][0-9.]+)$", out, re.MULTILINE)
    assert float(gap.group(1)) == float(gap.group(2))
    assert float(gap.group(1)) == pytest.approx(float(rows["sampler w=1"][1]) - float(rows["bicubic"][1]), abs=0.011)


def test_main_names_a_missing_lr(tmp_path, capsys):
    (tmp_path / "hr").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "hr" / "a.png")
    assert quality_gap.main(["--sets", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (f"quality_gap: error: {tmp_path / 'lr' / 'a.png'}: missing, the LR of "
                                               f"{tmp_path / 'hr' / 'a.png'}")
