"""The generated CFW training set (docs/method.md#cfw-data layout) as a Dataset and a LightningDataModule::

    <root>/inputs/<id>.png    LR bicubic-upsampled to the GT size   -> "lq"     [3, H, W] in [-1, 1]
    <root>/gts/<id>.png       the (sharpened) GT                    -> "gt"     [3, H, W] in [-1, 1]
    <root>/latents/<id>.npy   scaled stage-1 sample latent [1,4,h,w] -> "latent" [4, h, w]
    <root>/samples/<id>.png   plain-decoder preview (not used for training)

An id is part of the set when its input, GT and latent all exist (what ``sr.commands.cfw_generate`` writes last-to-first
guarantees that a finished id has all four files).
"""

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sr.io import ImageReadError, read_image

SUBFOLDERS = ("inputs", "gts", "latents", "samples")


def sample_files(root: str | Path, sample_id: str) -> dict[str, Path]:
    """The four files of ``sample_id`` under ``root``, keyed by subfolder."""
    root = Path(root)
    return {
        folder: root / folder / f"{sample_id}.{'npy' if folder == 'latents' else 'png'}" for folder in SUBFOLDERS
    }


def _read_rgb(path: Path) -> torch.Tensor:
    image = read_image(path).image
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image * 2 - 1


class GeneratedCFWDataset(Dataset):
    """Items ``{"lq", "gt", "latent", "id"}`` of the ids that have input, GT and latent files (sorted)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        latents = self.root / "latents"
        if not latents.is_dir():
            raise FileNotFoundError(f"{latents}: no latents/ folder; generate the set with `python -m sr.commands.cfw_generate`")
        self.ids = sorted(
            path.stem for path in latents.glob("*.npy")
            if all(sample_files(self.root, path.stem)[folder].is_file() for folder in ("inputs", "gts"))
        )
        if not self.ids:
            raise ValueError(f"{self.root}: no complete samples (inputs/, gts/ and latents/ with matching ids)")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        sample_id = self.ids[index]
        files = sample_files(self.root, sample_id)
        try:
            latent = np.load(files["latents"], allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{files['latents']}: not a readable .npy latent ({error})") from error
        latent = torch.from_numpy(latent.astype(np.float32)).reshape(-1, *latent.shape[-2:])
        lq, gt = _read_rgb(files["inputs"]), _read_rgb(files["gts"])
        if lq.shape != gt.shape:
            raise ImageReadError(files["inputs"], f"size {tuple(lq.shape[1:])} differs from its GT {tuple(gt.shape[1:])}")
        if tuple(latent.shape[-2:]) != (gt.shape[1] // 8, gt.shape[2] // 8):
            raise ValueError(f"{files['latents']}: latent {tuple(latent.shape)} does not match GT size {tuple(gt.shape[1:])}")
        return {"lq": lq, "gt": gt, "latent": latent, "id": sample_id}


class CFWDataModule(L.LightningDataModule):
    """Shuffled (seeded) batches of :class:`GeneratedCFWDataset`; ``batch_size 1`` as released."""

    def __init__(self, root: str, batch_size: int = 1, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.root, self.batch_size, self.num_workers, self.seed = root, batch_size, num_workers, seed
        self.dataset: GeneratedCFWDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = GeneratedCFWDataset(self.root)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers, drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),
        )
