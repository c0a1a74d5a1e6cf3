"""Preview a degradation pipeline: a PNG grid of ``n`` LR samples of one HR image (one seeded generator).

    python -m sr.commands.preview degradation=realesrgan [image=... n=16 seed=0 out=... overwrite=true]

Each sample is degraded separately (batch of one) so that per-batch choices vary across the grid; LR samples are
shown nearest-neighbour upsampled by ``ceil(scale)`` so that pixels stay visible.
"""

import math

import hydra
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.utils import make_grid
from tqdm import tqdm

from sr.commands.config import CONFIG_DIR
from sr.data.degradations import DegradationPipeline
from sr.errors import ConfigError, one_line_errors
from sr.io import read_image, write_image


def degradation_grid(pipeline: DegradationPipeline, hr: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """[3, H', W'] grid of ``count`` LR samples of ``hr`` ([3, H, W] in [0, 1])."""
    generator = torch.Generator().manual_seed(seed)
    zoom = math.ceil(pipeline.scale)
    tiles = []
    for _ in tqdm(range(count), desc="degrading", leave=False):
        lq, _ = pipeline(hr[None], generator)
        tiles.append(F.interpolate(lq, scale_factor=zoom, mode="nearest")[0])
    return make_grid(tiles, nrow=math.ceil(math.sqrt(count)), padding=2, pad_value=1.0)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="preview")
def main(cfg: DictConfig) -> None:
    with one_line_errors("sr.commands.preview", cfg.get("debug", False)):
        if not isinstance(cfg.n, int) or cfg.n < 1:
            raise ConfigError(f"n={cfg.n!r}: must be an integer >= 1")
        image = read_image(cfg.image).rgb
        pipeline = instantiate(cfg.degradation)
        grid = degradation_grid(pipeline, image, cfg.n, cfg.seed)
        path = write_image(cfg.out, grid, overwrite=cfg.overwrite)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
