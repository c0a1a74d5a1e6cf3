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
UNFINISHED = "unfinished"   # a run dir without scores.json, or whose images changed after they were scored
FINGERPRINT_FILE = "fingerprint.json"  # written by eval before sampling (sr.fingerprint.FINGERPRINT_FILE)
HYDRA_JOB_DIR = ".hydra"    # made by Hydra when a job starts
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
        return _placeholder_run(scores_path.parent, "failed", f"unreadable {scores_path}: {problem}")
    images_now = _images_fingerprint(scores_path.parent)
    scored = (record.get("fingerprints") or {}).get("images")
    if record["status"] == "ok" and images_now is not None and scored != images_now:
        return _placeholder_run(scores_path.parent, UNFINISHED, f"its images were re-sampled with other settings "
                                f"({images_now}) after they were scored ({scored}); run eval again")
    return Run(scores_path.parent, record)


def _placeholder_run(run_dir: Path, status: str, error: str) -> Run:
    """A run without usable scores: only its status and why."""
    return Run(run_dir, {key: None for key in SCORES_KEYS} | {
        "settings": {"run": run_dir.name}, "per_image": {}, "aggregate": {}, "status": status, "error": error,
    })


def _images_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of the images in ``run_dir`` now (``fingerprint.json``), None when there is no record."""
    path = run_dir / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable"


def collect_sweep(sweep_dir: Path) -> list[Run]:
    """Every run below ``sweep_dir`` (any depth, e.g. Hydra multirun job folders), sorted by settings.

    A run dir is a folder holding ``scores.json``, ``fingerprint.json`` (an eval run started sampling) or ``.hydra``
    (Hydra started the job); one without ``scores.json`` is an ``unfinished`` run (interrupted or still running),
    and so is a run whose images were re-sampled with other settings after they were scored: a report never shows
    scores of images that are no longer there.
    """
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: sweep directory does not exist")
    run_dirs = {path.parent for marker in (SCORES_FILE, FINGERPRINT_FILE, HYDRA_JOB_DIR)
                for path in sweep_dir.rglob(marker)}
    runs = [
        read_run(run_dir / SCORES_FILE) if (run_dir / SCORES_FILE).is_file()
        else _placeholder_run(run_dir, UNFINISHED, f"no {SCORES_FILE}: the run was interrupted or is still running")
        for run_dir in sorted(run_dirs)
    ]
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no {SCORES_FILE} found below it")
    return sorted(runs, key=lambda run: sort_key(run.settings))


def status_counts(runs: list[Run]) -> str:
    """``"3 ok, 1 failed, 0 unfinished"``."""
    return ", ".join(f"{sum(run.record['status'] == status for run in runs)} {status}"
                     for status in (*RUN_STATUSES, UNFINISHED))


def sort_key(settings: dict) -> tuple:
    """Runs in table order: leading settings first (w, tile_overlap, steps, model), None and strings last."""
    ordered = [settings.get(key) for key in LEADING_SETTINGS] + [settings[key] for key in sorted(settings)]
    return tuple((value is None, isinstance(value, str), value if value is not None else 0) for value in ordered)
