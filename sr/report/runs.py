"""One run's result file: write ``<run_dir>/scores.json``, read it back, and collect every run below a sweep.

``scores.json`` holds ``SCORES_KEYS``; ``fingerprints`` (``{"images", "scores"}``, see ``sr.fingerprint``) says which
settings produced the images and the scores.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from sr.io import write_bytes_atomic
from sr.utils.provenance import command_line, git_revision

SCORES_FILE = "scores.json"
IMAGES_DIR = "images"
SCORES_KEYS = (
    "settings",
    "per_image",
    "aggregate",
    "seconds_per_image",
    "status",
    "error",
    "conventions",
    "config",
    "git_revision",
    "command",
    "fingerprints",
)
RUN_STATUSES = ("ok", "failed")
LEADING_SETTINGS = ("w", "tile_overlap", "steps", "model")


def write_run_scores(
    run_dir: str | Path,
    *,
    settings: dict,
    per_image: dict[str, dict[str, float | str]],
    aggregate: dict[str, dict | str],
    seconds_per_image: float | None,
    conventions: dict[str, str],
    config: dict,
    status: str = "ok",
    error: str | None = None,
    fingerprints: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``<run_dir>/scores.json`` atomically (git revision and command line added here); returns its path."""
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
    if status == "failed" and not error:
        raise ValueError("a failed run needs its error message")
    record = {
        "settings": settings,
        "per_image": per_image,
        "aggregate": aggregate,
        "seconds_per_image": seconds_per_image,
        "status": status,
        "error": error,
        "conventions": conventions,
        "config": config,
        "git_revision": git_revision(),
        "command": command_line(),
        "fingerprints": fingerprints,
    }
    path = Path(run_dir) / SCORES_FILE
    write_bytes_atomic(path, json.dumps(record, indent=2, allow_nan=False, default=str).encode(), overwrite)
    return path


@dataclass(frozen=True)
class Run:
    """One run of a sweep as read from its scores.json (a broken file becomes a failed run)."""

    run_dir: Path
    record: dict

    @property
    def ok(self) -> bool:
        return self.record["status"] == "ok"

    @property
    def settings(self) -> dict:
        return self.record["settings"]


def read_run(scores_path: Path) -> Run:
    """Parse and validate one scores.json; problems turn the run into a failed one that names the file."""
    try:
        record = json.loads(scores_path.read_text())
        missing = [key for key in SCORES_KEYS if key not in record]
        if missing:
            raise ValueError(f"missing keys {missing}")
        if record["status"] not in RUN_STATUSES:
            raise ValueError(f"status {record['status']!r} is not one of {RUN_STATUSES}")
    except (OSError, ValueError) as problem:
        settings = {"run": scores_path.parent.name}
        record = {key: None for key in SCORES_KEYS} | {
            "settings": settings,
            "per_image": {},
            "aggregate": {},
            "status": "failed",
            "error": f"unreadable {scores_path}: {problem}",
        }
    return Run(scores_path.parent, record)


def collect_sweep(sweep_dir: Path) -> list[Run]:
    """Every run below ``sweep_dir`` (any depth, e.g. Hydra multirun job folders), sorted by settings."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: sweep directory does not exist")
    runs = [read_run(path) for path in sorted(sweep_dir.rglob(SCORES_FILE))]
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no {SCORES_FILE} found below it")
    return sorted(runs, key=lambda run: sort_key(run.settings))


def sort_key(settings: dict) -> tuple:
    """Runs in table order: leading settings first (w, tile_overlap, steps, model), None and strings last."""
    ordered = [settings.get(key) for key in LEADING_SETTINGS] + [settings[key] for key in sorted(settings)]
    return tuple((value is None, isinstance(value, str), value if value is not None else 0) for value in ordered)
