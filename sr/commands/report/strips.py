"""Comparison strips ``LR | SR(w=...) ... | bicubic | HR`` of one image across a sweep, as PNG bytes."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt

from sr.commands.report.plots import REFERENCE, figure_png, report_style
from sr.commands.report.runs import METHOD, Run, sort_key
from sr.io import IMAGE_SUFFIXES, read_image


def find_image(folder: Path | None, name: str) -> Path | None:
    """``folder/<name>.<any image suffix>`` if present."""
    if folder is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    return None


def comparison_strip(rows: Sequence[Run], name: str, lr_dir: Path | None, hr_dir: Path | None) -> bytes | None:
    """PNG ``LR | SR(w=...) ... | bicubic | HR`` for image ``name``: one SR panel per distinct w (first run in table
    order), the first bicubic row's image beside the GT; None when no run has the image."""
    panels: list[tuple[str, Path]] = []
    if (lr := find_image(lr_dir, name)) is not None:
        panels.append(("LR", lr))
    by_w: dict = {}
    for row in rows:
        sr_path = row.images_dir / f"{name}.png"
        if row.method == METHOD and row.ok and sr_path.is_file():
            by_w.setdefault(row.settings.get("w"), sr_path)
    if not by_w:
        return None
    panels += [(f"SR (w={w})", path) for w, path in sorted(by_w.items(), key=lambda item: sort_key({"w": item[0]}))]
    bicubic = [path for row in rows if row.method == REFERENCE and row.ok
               and (path := row.images_dir / f"{name}.png").is_file()]
    panels += [(REFERENCE, path) for path in bicubic[:1]]
    if (hr := find_image(hr_dir, name)) is not None:
        panels.append(("HR", hr))
    with report_style():
        figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
        for axis, (title, path) in zip(axes[0], panels):
            axis.imshow(read_image(path).rgb.permute(1, 2, 0).numpy(), interpolation="nearest")
            axis.set_title(title, fontsize=9)
            axis.axis("off")
        figure.suptitle(name, fontsize=10)
        return figure_png(figure)
