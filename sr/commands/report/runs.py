"""One run's result file: write ``<run_dir>/scores.json``, read it back, and collect every run below a sweep.

``scores.json`` holds ``SCORES_KEYS``; ``fingerprints`` (``{"images", "scores"}``, see ``sr.commands.fingerprint``) says
which settings produced the images and the scores. ``baselines`` holds ``{name: {"settings", "per_image", "aggregate",
"fingerprint"}}`` for each no-diffusion baseline the run scored beside its own images (``bicubic``, ``lr_latent``:
``sr.commands.evaluation``), images in ``<run_dir>/baselines/<name>/``; ``fingerprint`` identifies the baseline's
scores, so runs sharing a baseline's settings share its row in a report (:func:`table_rows`). ``git_modified`` lists the
tracked files that differed from ``git_revision`` when the run was scored.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from sr.commands.fingerprint import BASELINE_COMPONENTS, FINGERPRINT_FILE
from sr.io import write_bytes_atomic
from sr.utils.provenance import command_line, git_state

SCORES_FILE = "scores.json"
IMAGES_DIR = "images"
BASELINES_DIR = "baselines"
METHOD = "stablesr"          # the ``method`` of a run's own rows; baselines are named by BASELINE_COMPONENTS
METHODS = (*BASELINE_COMPONENTS, METHOD)   # report order: bicubic, lr_latent, the runs
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
    "git_modified",
    "command",
    "fingerprints",
    "baselines",
)
RUN_STATUSES = ("ok", "failed")
UNFINISHED = "unfinished"   # a run dir without scores.json, or whose images changed after they were scored
HYDRA_JOB_DIR = ".hydra"    # made by Hydra when a job starts
LEADING_SETTINGS = ("w", "tile.overlap", "num_inference_steps", "model")


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
    baselines: dict[str, dict] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``<run_dir>/scores.json`` atomically (git revision, modified files and command line added here);
    returns its path."""
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
    if status == "failed" and not error:
        raise ValueError("a failed run needs its error message")
    git = git_state()
    record = {
        "settings": settings,
        "per_image": per_image,
        "aggregate": aggregate,
        "seconds_per_image": seconds_per_image,
        "status": status,
        "error": error,
        "conventions": conventions,
        "config": config,
        "git_revision": git.revision,
        "git_modified": list(git.modified),
        "command": command_line(),
        "fingerprints": fingerprints,
        "baselines": baselines or {},
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

    @property
    def method(self) -> str:
        """``stablesr`` for a run's own row (and a run without settings), else the baseline's name."""
        return self.settings.get("method", METHOD)

    @property
    def images_dir(self) -> Path:
        """The folder of this row's scored images."""
        if self.method == METHOD:
            return self.run_dir / IMAGES_DIR
        return self.run_dir / BASELINES_DIR / self.method


def read_run(scores_path: Path) -> Run:
    """Parse and validate one scores.json; problems turn the run into a failed one that names the file."""
    try:
        record = json.loads(scores_path.read_text())
        missing = [key for key in SCORES_KEYS if key not in record]
        if missing:
            raise ValueError(f"missing keys {missing} (an older version's file: run eval again, which re-scores "
                             "its images without re-sampling them)")
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
    (Hydra started the job), other than a run's baseline folders (``baselines/<name>``, which hold their own
    ``fingerprint.json``); one without ``scores.json`` is an ``unfinished`` run (interrupted or still running),
    and so is a run whose images were re-sampled with other settings after they were scored: a report never shows
    scores of images that are no longer there.
    """
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: sweep directory does not exist")
    run_dirs = {path.parent for marker in (SCORES_FILE, FINGERPRINT_FILE, HYDRA_JOB_DIR)
                for path in sweep_dir.rglob(marker) if not _is_baseline_dir(path.parent)}
    runs = [
        read_run(run_dir / SCORES_FILE) if (run_dir / SCORES_FILE).is_file()
        else _placeholder_run(run_dir, UNFINISHED, f"no {SCORES_FILE}: the run was interrupted or is still running")
        for run_dir in sorted(run_dirs)
    ]
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no {SCORES_FILE} found below it")
    return sorted(runs, key=lambda run: sort_key(run.settings))


def _is_baseline_dir(folder: Path) -> bool:
    return folder.parent.name == BASELINES_DIR and folder.name in BASELINE_COMPONENTS


def table_rows(runs: list[Run]) -> list[Run]:
    """A report's rows: every distinct baseline once, then ``runs``. Baselines of equal ``fingerprint`` (same
    images, test set and scoring) scored by several runs are one row, taken from the first run in table order;
    ordered bicubic, then lr_latent, each by its settings. A baseline row is a ``Run`` of the run that scored it
    with the baseline's settings, scores and images and no timing."""
    distinct: dict[str, Run] = {}
    for run in runs:
        if not run.ok:
            continue
        for baseline in run.record["baselines"].values():
            parts = {key: baseline[key] for key in ("settings", "per_image", "aggregate")}
            distinct.setdefault(baseline["fingerprint"],
                                Run(run.run_dir, run.record | parts | {"seconds_per_image": None, "baselines": {}}))
    baselines = sorted(distinct.values(), key=lambda row: (METHODS.index(row.method), sort_key(row.settings)))
    return baselines + list(runs)


def status_counts(runs: list[Run]) -> str:
    """``"3 ok, 1 failed, 0 unfinished"``."""
    return ", ".join(f"{sum(run.record['status'] == status for run in runs)} {status}"
                     for status in (*RUN_STATUSES, UNFINISHED))


def sort_key(settings: dict) -> tuple:
    """Runs in table order: leading settings first (w, tile.overlap, num_inference_steps, model), None and strings last."""
    ordered = [settings.get(key) for key in LEADING_SETTINGS] + [settings[key] for key in sorted(settings)]
    return tuple((value is None, isinstance(value, str), value if value is not None else 0) for value in ordered)
