"""``index.html``: the sweep report as one page to open in a browser, without a network.

The page holds the table of :func:`sr.commands.report.table.table_layout` (click a header to sort by that column, again
to reverse), a comparison view per compared image, then the plots. In a comparison view two menus pick any two of LR
(enlarged nearest-neighbour by the browser), ``bicubic``, each ``lr_latent``, each run's output and HR; a slider (or a
drag on the divider) moves the split between them; the mouse wheel or the buttons zoom and a drag pans, the same
crop of both images at once.

Self-contained: the CSS and the vanilla JavaScript (``sr/commands/report/assets``) are inlined, nothing is loaded from
another host. The images are files beside the page, referenced by relative paths: the plots the report already
writes, and copies of the compared images under ``compare/<image>/`` (a sweep's images run to megabytes; inlined
as base64 they would add a third and make the page one unreadable blob). TIFF files, which browsers do not show,
are copied as PNG. Like the other report files, the page carries no absolute path, timing or date, and the same runs
give the same bytes.
"""

import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import Image

from sr.commands.report.plots import settings_label, varying_settings
from sr.commands.report.portable import display_path
from sr.commands.report.runs import METHOD, METHODS, Run, status_counts
from sr.commands.report.strips import find_image
from sr.commands.report.table import footnote_marker, table_layout
from sr.io import image_size

PAGE = "index.html"
COMPARE_DIR = "compare"
BROWSER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")   # shown as they are; other images become PNG
LR = "LR"
HR = "HR"


@dataclass(frozen=True)
class Candidate:
    """One image a comparison view can show: its menu label, its source file and its file name in the report."""

    label: str
    source: Path
    file_name: str


def comparison_candidates(rows: Sequence[Run], name: str, lr_dir: Path | None, hr_dir: Path | None
                          ) -> list[Candidate]:
    """What image ``name`` can be compared as, in menu order: LR, the baselines and runs in table order (each
    labelled by its method and the settings that differ between rows of that method), HR."""
    found: list[tuple[str, Path]] = []
    if (lr := find_image(lr_dir, name)) is not None:
        found.append((f"{LR} (nearest-neighbour)", lr))
    for method in METHODS:
        same = [row for row in rows if row.method == method and row.ok and (row.images_dir / f"{name}.png").is_file()]
        keys = varying_settings(same, "method")
        found += [(f"{method} ({label})" if (label := settings_label(row, keys, "")) else method,
                   row.images_dir / f"{name}.png") for row in same]
    if (hr := find_image(hr_dir, name)) is not None:
        found.append((HR, hr))
    candidates = []
    for label, source in found:
        suffix = source.suffix.lower() if source.suffix.lower() in BROWSER_SUFFIXES else ".png"
        stem = re.sub(r"[^\w.=-]+", "_", label).strip("_")
        candidates.append(Candidate(label, source, f"{len(candidates):02d}_{stem}{suffix}"))
    return candidates


def browser_image(source: Path) -> bytes:
    """The bytes of ``source`` as the report stores it: the file itself, or a PNG of a format browsers cannot show."""
    if source.suffix.lower() in BROWSER_SUFFIXES:
        return source.read_bytes()
    buffer = io.BytesIO()
    with Image.open(source) as image:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _asset(name: str) -> str:
    return resources.files("sr.commands.report").joinpath("assets", name).read_text(encoding="utf-8")


def _text(value) -> str:
    return html.escape(str(value), quote=True)


def render_html(name: str, sweep_dir: Path, runs: Sequence[Run], rows: Sequence[Run], plots: Sequence[str],
                comparisons: dict[str, list[Candidate]], timings: bool = False) -> str:
    """The page; ``plots``: the plot files relative to the report folder, ``comparisons``: each compared image's
    candidates (:func:`comparison_candidates`), their files at ``compare/<image>/<file_name>``."""
    layout = table_layout(rows, timings)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # no network: the page may load only its own files and inline code
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src \'self\' data:; '
        'style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">',
        f"<title>{_text(name)}</title>",
        f"<style>\n{_asset('report.css')}</style>",
        "</head>",
        "<body>",
        f"<h1>{_text(name)}</h1>",
        f"<p>Sweep <code>{_text(display_path(sweep_dir.absolute()))}</code>: {len(runs)} runs "
        f"({_text(status_counts(runs))}). Provenance (commands, git revisions, metric conventions): "
        '<a href="table.md">table.md</a>; every column: <a href="table.csv">table.csv</a>.</p>',
    ]
    if layout.fixed:
        fixed = ", ".join(f"<code>{_text(header)}={_text(value)}</code>" for header, value in layout.fixed)
        parts.append(f'<p class="fixed">Fixed settings (the same on every row): {fixed}.</p>')
    parts += ["<h2>Table</h2>", '<p class="hint">Click a column header to sort by it; click again to reverse.</p>',
              '<table id="sweep-table" class="sortable">', "<thead><tr>"]
    parts += [f'<th scope="col" data-column="{index}">{_text(header)}</th>'
              for index, (header, _) in enumerate(layout.shown)]
    parts += ["</tr></thead>", "<tbody>"]
    for row_index in range(len(rows)):
        cells = "".join(f"<td>{_text(cells[row_index])}</td>" for _, cells in layout.shown)
        parts.append(f'<tr data-row="{row_index}">{cells}</tr>')
    parts += ["</tbody>", "</table>"]
    if layout.footnotes:
        parts.append('<ul class="footnotes">')
        parts += [f"<li>{footnote_marker(index)} <code>{_text(reason)}</code></li>"
                  for index, reason in enumerate(layout.footnotes)]
        parts.append("</ul>")
    if comparisons:
        parts += ["<h2>Comparisons</h2>",
                  '<p class="hint">Pick two images; drag the slider (or the divider) to move the split; zoom with '
                  "the mouse wheel or the buttons and drag to pan: both images show the same crop.</p>"]
        parts += [_comparison(image_name, candidates) for image_name, candidates in comparisons.items()]
    if plots:
        parts += ["<h2>Plots</h2>", '<div class="plots">']
        parts += [f'<figure><img src="{_text(path)}" alt="{_text(Path(path).stem)}"><figcaption>'
                  f"{_text(Path(path).stem)}</figcaption></figure>" for path in plots]
        parts.append("</div>")
    parts += [f"<script>\n{_asset('report.js')}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)


def _comparison(image_name: str, candidates: Sequence[Candidate]) -> str:
    """One image's comparison view: two menus, the stacked images, the split slider and the zoom buttons. The first
    menu starts on LR (or the first candidate), the second on the first run's output."""
    sources = [f"{COMPARE_DIR}/{image_name}/{candidate.file_name}" for candidate in candidates]
    first_run = next((index for index, candidate in enumerate(candidates) if candidate.label.startswith(METHOD)),
                     len(candidates) - 1)
    height, width = image_size(candidates[first_run].source)

    def menu(side: str, selected: int) -> str:
        options = "".join(f'<option value="{_text(source)}"{" selected" if index == selected else ""}>'
                          f"{_text(candidate.label)}</option>"
                          for index, (candidate, source) in enumerate(zip(candidates, sources)))
        return f'<label>{side} <select class="pick-{side}">{options}</select></label>'

    return "\n".join([
        f'<section class="compare" id="compare-{_text(image_name)}" data-image="{_text(image_name)}">',
        f"<h3>{_text(image_name)}</h3>",
        f'<div class="controls">{menu("left", 0)} {menu("right", first_run)} '
        '<button type="button" class="zoom-in" title="zoom in">+</button>'
        '<button type="button" class="zoom-out" title="zoom out">&minus;</button>'
        '<button type="button" class="zoom-reset" title="whole image">1:1</button>'
        '<span class="zoom-level">100%</span></div>',
        f'<div class="viewer" style="aspect-ratio: {width} / {height}; max-width: {max(width, 512)}px" '
        f'data-width="{width}" data-height="{height}">',
        f'<div class="layer layer-left"><img alt="left" draggable="false" src="{_text(sources[0])}"></div>',
        f'<div class="layer layer-right"><img alt="right" draggable="false" src="{_text(sources[first_run])}">'
        "</div>",
        '<div class="divider"></div>',
        "</div>",
        '<input type="range" class="split" min="0" max="100" step="0.1" value="50" aria-label="split">',
        "</section>",
    ])

