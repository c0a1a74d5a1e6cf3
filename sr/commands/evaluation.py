"""One evaluation run: upscale a paired test set into ``<run_dir>/images``, score it, write ``scores.json``.

Driven by ``eval.py`` (config ``conf/eval.yaml``); a Hydra multirun makes one run per sweep point. Run dir layout::

    <run_dir>/images/<name>.png   SR outputs (8-bit PNG), written atomically one by one
    <run_dir>/timings.json        {name: seconds} of every sampled image (kept across resumes and re-scores)
    <run_dir>/baselines/<baseline>/<name>.png, fingerprint.json   the no-diffusion baselines' images (below)
    <run_dir>/scores.json         sr.commands.report.runs.write_run_scores: settings, per-image and aggregate metrics, status,
                                  the baselines' settings and scores

Resume and caching: an image already in ``images/`` is not sampled again unless ``overwrite``; a run whose
scores.json says "ok" is skipped unless ``overwrite`` or ``rescore``; ``rescore`` scores the existing images without
building the model. ``seconds_per_image`` is the mean over ``timings.json`` of the upscaler call alone (image I/O
and scoring excluded). Any error inside a run is recorded as ``status="failed"`` with its message instead of being
raised, so one bad sweep point does not stop a Hydra sweep; :class:`EvalReportCallback` builds the report when the
run or sweep ends and exits with code 1 if any run failed.

Baselines (``baselines``, default both): every run also scores, with the same metrics, conventions and test set,

- ``bicubic``: ``StableSRPipeline.bicubic``, the LR resized to the output size by the pipeline's own resize;
- ``lr_latent``: ``StableSRPipeline.reconstruct`` at the run's ``w``, ``color_fix`` and VAE tiles, the LR's latent
  decoded without diffusion (the VAE + CFW ceiling).

They cost no sampling. Each baseline's images are kept while their own fingerprint (``sr.commands.fingerprint.
baseline_components``: only what decides them) is unchanged and remade otherwise (also with ``overwrite``, and with
``rescore``, which builds the model only when lr_latent images must be made); the run's scores fingerprint includes
theirs, so a changed baseline list or setting re-scores the run without re-sampling it.
"""

import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from sr.commands.config import build_model
from sr.commands.fingerprint import (
    FINGERPRINT_FILE,
    WEIGHT_KEYS,
    baseline_components,
    differences,
    fingerprint,
    generation_components,
    read_fingerprint,
    scoring_components,
    weights_identity,
    write_fingerprint,
)
from sr.commands.launch import job_device
from sr.commands.report.build import build_report
from sr.commands.report.runs import (
    BASELINES_DIR,
    IMAGES_DIR,
    METHOD,
    SCORES_FILE,
    collect_sweep,
    read_run,
    write_run_scores,
)
from sr.commands.report.wandb_log import log_to_wandb
from sr.data.datasets import PairedImageDataset
from sr.errors import describe, traceback_wanted
from sr.io import read_image, remove_stale_temporaries, write_bytes_atomic, write_image
from sr.metrics import MetricSuite
from sr.pipelines import SamplingSettings, StableSRPipeline, resolved_settings, use_scheduler
from sr.reproducibility import check_mode
from sr.utils.provenance import command_line
from sr.validation import validate_eval

TIMINGS_FILE = "timings.json"
REPORT_DIR = "report"

_model_cache: dict[str, StableSRPipeline] = {}


def model_config(cfg: DictConfig) -> DictConfig:
    """``cfg.model`` with the ``ckpt`` / ``cfw_ckpt`` aliases applied to ``stage1_weights`` / ``cfw_weights``."""
    resolved = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    for alias, key in (("ckpt", "stage1_weights"), ("cfw_ckpt", "cfw_weights")):
        value = cfg.get(alias)
        if value is None:
            continue
        if resolved.get(key) not in (None, value):
            raise ValueError(f"{alias}={value} conflicts with model.{key}={resolved[key]}; set only one of them")
        resolved[key] = value
    return resolved


def load_model(cfg: DictConfig, weights: dict | None = None) -> StableSRPipeline:
    """The StableSR pipeline of ``cfg`` on ``cfg.device``, built from the weights whose identities (``model.<key>``:
    ``sr.commands.fingerprint.weights_identity``, content hashes) the run records in ``weights`` (default: as they are
    now).

    The last model built is kept: a sweep run in one process (Hydra's basic launcher) varies only sampling settings,
    so its jobs share one model instead of loading the weights once per job. The cache is keyed on the weights'
    content as well as the config, so weights replaced on disk during the sweep are loaded again. Weights that change
    while they are being loaded (their identity after the load differs from ``weights``) are refused: the run would
    record a hash of weights it did not use.
    """
    config = model_config(cfg)
    weights = weights if weights is not None else weights_components(config)
    key = json.dumps({"model": OmegaConf.to_container(config), "device": str(cfg.device), "weights": weights},
                     sort_keys=True, default=str)
    if key not in _model_cache:
        _model_cache.clear()
        pipe = build_model(config).to(cfg.device)
        now = weights_components(config)
        if now != weights:
            changed = "; ".join(differences(weights, now))
            raise RuntimeError(f"model weights changed on disk while the run loaded them ({changed}); run it again")
        _model_cache[key] = pipe
    return _model_cache[key]


def weights_components(model_cfg: DictConfig) -> dict:
    """The ``model.<weights key>`` components of ``model_cfg`` (``sr.commands.fingerprint.sampling_components``)."""
    return {f"model.{key}": weights_identity(model_cfg.get(key)) for key in WEIGHT_KEYS}


def run_settings(cfg: DictConfig, resolved: SamplingSettings | None = None) -> dict:
    """The table columns of a run: every sampling setting as the pipeline resolves it (``resolved``, by default
    ``resolved_settings(cfg)``; ``SamplingSettings`` names), plus the model, scheduler, seed and data/weights
    provenance."""
    weights = model_config(cfg)
    return {
        "method": METHOD,
        **(resolved or resolved_settings(cfg)).components(),
        "model": cfg.model.name,
        "scheduler": get_class(cfg.scheduler._target_).__name__,
        "seed": int(cfg.seed),
        "reproducible": check_mode(cfg.get("reproducible")),  # the CPU mode (sr/reproducibility.py)
        "crop_border": int(cfg.crop_border),
        "lr_dir": str(Path(cfg.data.lr_dir).resolve()),
        "hr_dir": str(Path(cfg.data.hr_dir).resolve()),
        "pretrained_path": weights.get("pretrained"),
        "stage1_weights_path": weights.get("stage1_weights"),
        "cfw_weights_path": weights.get("cfw_weights"),
    }


# The table columns of each baseline: the run settings its images and scores depend on (the settings behind
# sr.commands.fingerprint.BASELINE_COMPONENTS, plus the test set and crop_border of the scores).
BASELINE_SETTINGS = {
    "bicubic": ("scale", "crop_border", "lr_dir", "hr_dir", "reproducible"),
    "lr_latent": ("model", "w", "color_fix", "scale", "input_size", "vae_tile.size", "vae_tile.overlap",
                  "vae_tile.mode", "crop_border", "lr_dir", "hr_dir", "pretrained_path", "cfw_weights_path",
                  "reproducible"),
}


def build_metric_suite(cfg: DictConfig) -> MetricSuite:
    return MetricSuite(
        list(cfg.metrics), crop_border=cfg.crop_border, device=cfg.device, fid_patch_size=cfg.fid_patch_size,
        seed=cfg.seed,
    )


def load_test_set(cfg: DictConfig):
    """The paired test set of ``cfg.data`` (a ``PairedImageDataset`` config: ``_target_``, ``lr_dir``, ``hr_dir``)."""
    missing = [key for key in ("_target_", "lr_dir", "hr_dir") if key not in cfg.data]
    if missing:
        raise ValueError(f"data config lacks {missing}: eval needs a paired test set (conf/data/samples_heldout.yaml)")
    dataset = instantiate(cfg.data)
    if not hasattr(dataset, "names"):
        raise TypeError(f"data config builds {type(dataset).__name__}, not a paired test set with .names")
    return dataset


class GroundTruthImages(Sequence):
    """The test set's GT images ``[3, H, W]`` in [0, 1], read lazily (FID streams them instead of holding the set)."""

    def __init__(self, data: PairedImageDataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]["gt"]


class SavedImages(Sequence):
    """SR images ``[3, H, W]`` in [0, 1] read lazily from PNG files."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return read_rgb(self.paths[index])


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as ``[3, H, W]`` in [0, 1] (grey replicated to RGB)."""
    image = read_image(path).image
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def read_timings(run_dir: Path) -> dict[str, float]:
    path = run_dir / TIMINGS_FILE
    if not path.is_file():
        return {}
    try:
        return {str(name): float(seconds) for name, seconds in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError) as problem:
        raise ValueError(f"{path}: not a JSON object of seconds per image ({problem})") from None


def sample_images(cfg: DictConfig, data: PairedImageDataset, images_dir: Path, run_dir: Path,
                  pipe: StableSRPipeline | None, settings: SamplingSettings, weights: dict | None = None) -> int:
    """Upscale every LR image whose ``images/<name>.png`` is missing (all of them with ``overwrite``); returns how
    many were sampled. Each image gets ``torch.Generator().manual_seed(seed)``, so results do not depend on order.
    ``settings``: the run's resolved sampling settings; ``weights``: the weight identities the run records
    (:func:`load_model`)."""
    pending = [index for index, name in enumerate(data.names)
               if cfg.overwrite or not (images_dir / f"{name}.png").is_file()]
    if not pending:
        return 0
    pipe = use_scheduler(pipe if pipe is not None else load_model(cfg, weights), instantiate(cfg.scheduler))
    pipe.set_progress_bar_config(disable=True)
    arguments = settings.arguments()
    timings = read_timings(run_dir)
    for index in tqdm(pending, desc=f"sampling {run_dir.name}", disable=not cfg.progress):
        item = data[index]
        generator = torch.Generator().manual_seed(int(cfg.seed))
        start = time.perf_counter()
        sr = pipe(item["lq"], generator=generator, output_type="pt", **arguments).images[0]
        timings[item["name"]] = time.perf_counter() - start
        write_image(images_dir / f"{item['name']}.png", sr, overwrite=cfg.overwrite)
        write_bytes_atomic(run_dir / TIMINGS_FILE, json.dumps(timings, indent=2).encode(), overwrite=True)
    return len(pending)


def score_images(suite: MetricSuite, data: PairedImageDataset, images_dir: Path, progress: bool) -> tuple[dict, dict]:
    """(per-image scores, aggregate) of the saved SR images against the GT, set-level FID included."""
    sr_paths = [images_dir / f"{name}.png" for name in data.names]
    absent = [path.name for path in sr_paths if not path.is_file()]
    if absent:
        raise FileNotFoundError(f"{images_dir}: missing SR images {absent[:5]}{' ...' if len(absent) > 5 else ''}")
    per_image = {}
    for index in tqdm(range(len(data)), desc="scoring", disable=not progress):
        item = data[index]
        sr = read_rgb(sr_paths[index])
        if sr.shape != item["gt"].shape:
            lq_shape = tuple(item["lq"].shape[-2:])
            raise ValueError(
                f"{sr_paths[index]}: SR {tuple(sr.shape[-2:])} != GT {tuple(item['gt'].shape[-2:])} (LR {lq_shape});"
                f" set scale= to the test set's factor"
            )
        per_image[item["name"]] = suite.score_image(sr[None], item["gt"][None], item["name"])
    set_level = suite.set_level(SavedImages(sr_paths), GroundTruthImages(data))
    return per_image, suite.summary(per_image, set_level)


def baseline_image(name: str, lq: torch.Tensor, settings: SamplingSettings,
                   pipe: StableSRPipeline | None) -> torch.Tensor:
    """Baseline ``name``'s output ``[C, H, W]`` in [0, 1] for the LR ``lq`` with the run's resolved ``settings``,
    made by the pipeline's own methods."""
    if name == "bicubic":
        return StableSRPipeline.bicubic(lq, scale=settings.scale, output_type="pt").images[0]
    return pipe.reconstruct(lq, w=settings.w, color_fix=settings.color_fix, scale=settings.scale,
                            input_size=settings.input_size, vae_tile=settings.vae_tile, output_type="pt").images[0]


def make_baseline(cfg: DictConfig, name: str, components: dict, data: PairedImageDataset, run_dir: Path,
                  pipe: StableSRPipeline | None, settings: SamplingSettings, weights: dict | None = None) -> Path:
    """Write baseline ``name``'s images to ``<run_dir>/baselines/<name>`` and return that folder. Images recorded
    there for ``components`` are kept (a rerun reuses them, an interrupted one completes them); with another record,
    none or ``overwrite`` the folder's images are discarded first. ``settings``, ``weights``: as for
    :func:`sample_images`."""
    folder = run_dir / BASELINES_DIR / name
    remove_stale_temporaries(folder)
    recorded = read_fingerprint(folder)
    if cfg.overwrite or recorded is None or recorded["components"] != components:
        for path in folder.glob("*.png"):
            path.unlink()
    write_fingerprint(folder, components)
    pending = [index for index, image_name in enumerate(data.names) if not (folder / f"{image_name}.png").is_file()]
    if pending and name == "lr_latent" and pipe is None:
        pipe = load_model(cfg, weights)
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)
    for index in tqdm(pending, desc=f"{name} {run_dir.name}", disable=not cfg.progress):
        item = data[index]
        write_image(folder / f"{item['name']}.png", baseline_image(name, item["lq"], settings, pipe))
    return folder


SCORING_KEYS = ("metrics", "crop_border", "fid_patch_size", "baselines", "device", "progress", "rescore", "overwrite",
                "run_dir")


def rescore_config(cfg: DictConfig, previous_config: dict | None) -> DictConfig:
    """The config of a re-scored run: the run's recorded config (it describes how its images were made: model,
    sampling settings, test set) with the scoring keys (``SCORING_KEYS``) taken from ``cfg``."""
    if not previous_config:
        return cfg
    scoring = {key: OmegaConf.to_container(cfg, resolve=True)[key] for key in SCORING_KEYS}
    return OmegaConf.merge(OmegaConf.create(previous_config), scoring)


def reconcile_cache(run_dir: Path, generation: dict, previous_status: str | None, overwrite: bool,
                    rescore: bool = False) -> str | None:
    """Make ``run_dir``'s cached images agree with the settings ``generation``; returns why the run must not
    proceed (the folder holds finished results of other settings), else None.

    - recorded fingerprint equal to this run's: the images are reused (an interrupted run resumes);
    - different, and the recorded run finished (``scores.json`` "ok"): refused unless ``overwrite``, because those
      are someone's results; the message lists what differs;
    - different, and the run never finished (or ``overwrite``): its images, timings and scores are discarded and
      recomputed: they were made with other settings and must not be scored with these;
    - images without any fingerprint record (made by an older version or by hand): refused unless ``overwrite``;
    - ``rescore`` scores the images as they are and never discards any: a record of other settings is refused, no
      record at all is accepted (the run's recorded config, or the given one, describes the images).
    """
    recorded = read_fingerprint(run_dir)
    images = sorted((run_dir / IMAGES_DIR).glob("*.png")) if (run_dir / IMAGES_DIR).is_dir() else []
    if recorded is None and not images:
        return None
    if recorded is not None and recorded["components"] == generation:
        return None
    if rescore and recorded is None:
        return None
    changes = ("; ".join(differences(recorded["components"], generation)) if recorded is not None
               else f"{len(images)} images without a {FINGERPRINT_FILE} record")
    if rescore:
        return (f"{run_dir}: rescore=true scores its images as they are, but they were made with other settings "
                f"({changes})")
    if not overwrite and (previous_status == "ok" or recorded is None):
        return (f"{run_dir} holds results of other settings ({changes}); use another run or sweep dir, or "
                "overwrite=true to replace them")
    print(f"eval: {run_dir}: discarding {len(images)} image(s) made with other settings ({changes})", file=sys.stderr)
    for path in images + [run_dir / TIMINGS_FILE, run_dir / SCORES_FILE]:
        path.unlink(missing_ok=True)
    return None


def evaluate(cfg: DictConfig, pipe: StableSRPipeline | None = None, metric_suite: MetricSuite | None = None) -> str:
    """Run one evaluation into ``cfg.run_dir``; returns "ok", "skipped" (finished results of the same fingerprint),
    "failed" (recorded in scores.json) or "not run: <reason>" (nothing written: the run dir holds finished results
    of other settings, see :func:`reconcile_cache`, or a failure that would otherwise replace them).

    ``pipe`` / ``metric_suite``: already built ones (tests, notebooks); otherwise built from ``cfg``.
    """
    run_dir = Path(cfg.run_dir)
    with open_dict(cfg):
        cfg.device = job_device(cfg.device)  # auto: cuda when the (SLURM) job has a GPU
    scores_path = run_dir / SCORES_FILE
    previous = read_run(scores_path) if scores_path.is_file() else None
    previous_status = previous.record["status"] if previous is not None else None
    if cfg.rescore and previous is not None:
        cfg = rescore_config(cfg, previous.record.get("config"))
    config = OmegaConf.to_container(cfg, resolve=True)
    settings: dict = {}
    conventions: dict = {}
    try:
        validate_eval(cfg)
        data = load_test_set(cfg)
        resolved = resolved_settings(cfg)   # the one resolution of the run's sampling settings
        settings = run_settings(cfg, resolved)
        generation = generation_components(cfg, model_config(cfg), resolved)
        if refusal := reconcile_cache(run_dir, generation, previous_status, cfg.overwrite, cfg.rescore):
            print(f"eval: not run: {refusal}", file=sys.stderr)
            return f"not run: {refusal}"
        suite = metric_suite if metric_suite is not None else build_metric_suite(cfg)
        conventions = suite.conventions()
        baselines = {name: baseline_components(name, generation) for name in cfg.baselines}
        baseline_scores = {name: fingerprint(scoring_components(cfg, components, conventions))
                           for name, components in baselines.items()}
        fingerprints = {"images": fingerprint(generation),
                        "scores": fingerprint({**scoring_components(cfg, generation, conventions),
                                               "baselines": baseline_scores})}
        if (previous_status == "ok" and scores_path.is_file() and previous.record.get("fingerprints") == fingerprints
                and not (cfg.overwrite or cfg.rescore)):
            print(f"eval: {scores_path} holds the results of these settings; skipped (rescore=true or overwrite=true "
                  "to redo it)")
            return "skipped"
        images_dir = run_dir / IMAGES_DIR
        for folder in (run_dir, images_dir):
            remove_stale_temporaries(folder)
        write_fingerprint(run_dir, generation)
        weights = {f"model.{key}": generation[f"model.{key}"] for key in WEIGHT_KEYS}  # what the run records
        if not cfg.rescore:
            sample_images(cfg, data, images_dir, run_dir, pipe, resolved, weights)
        per_image, aggregate = score_images(suite, data, images_dir, cfg.progress)
        baseline_records = {}
        for name, components in baselines.items():
            folder = make_baseline(cfg, name, components, data, run_dir, pipe, resolved, weights)
            baseline_per_image, baseline_aggregate = score_images(suite, data, folder, cfg.progress)
            baseline_records[name] = {"settings": {"method": name, **{key: settings[key] for key in
                                                                        BASELINE_SETTINGS[name]}},
                                      "per_image": baseline_per_image, "aggregate": baseline_aggregate,
                                      "fingerprint": baseline_scores[name]}
        timings = read_timings(run_dir)
        seconds = [timings[name] for name in data.names if name in timings]
        seconds_per_image = sum(seconds) / len(seconds) if seconds else None
    except Exception as error:  # noqa: BLE001 - recorded in scores.json so that the rest of the sweep goes on
        message = describe(error)
        if traceback_wanted(cfg.get("debug", False)):
            traceback.print_exc(file=sys.stderr)
        print(f"eval: run {run_dir} failed: {message}", file=sys.stderr)
        if previous_status == "ok" and scores_path.is_file() and not cfg.overwrite:
            return f"not run: {run_dir} failed ({message}); its finished results were kept"
        write_run_scores(run_dir, settings=settings or {"run": run_dir.name}, per_image={}, aggregate={},
                         seconds_per_image=None, conventions=conventions, config=config, status="failed",
                         error=message, overwrite=scores_path.is_file())
        return "failed"
    write_run_scores(run_dir, settings=settings, per_image=per_image, aggregate=aggregate,
                     seconds_per_image=seconds_per_image, conventions=conventions, config=config,
                     fingerprints=fingerprints, baselines=baseline_records, overwrite=scores_path.is_file())
    shown = f" (+ baselines {', '.join(baseline_records)})" if baseline_records else ""
    print(f"eval: {len(per_image)} images scored{shown} -> {scores_path}")
    return "ok"


def finish(results_dir: Path, name: str, report: bool, report_dir: str | None, wandb: bool, overwrite: bool,
           wandb_config: dict | None = None, timings: bool = False) -> list[str]:
    """Report on the runs below ``results_dir`` (a run or sweep dir); returns a line per failed or unfinished run.

    The default report folder, ``<results_dir>/report``, is a view of that dir's scores and is rebuilt every time;
    an explicit ``report_dir`` is replaced only when ``overwrite``. With ``wandb``, the table (numeric columns), plots
    and strips go to a W&B run with ``wandb_config``, its files in ``<results_dir>/wandb``. ``timings``: the tables
    show the seconds per image.
    """
    runs = collect_sweep(results_dir)
    if report or wandb:
        out_dir = Path(report_dir) if report_dir is not None else results_dir / REPORT_DIR
        written = build_report(results_dir, out_dir, name, overwrite=overwrite or report_dir is None,
                               timings=timings)
        print(f"eval: report of {len(runs)} run(s) in {out_dir}")
        if wandb:
            log_to_wandb(name, runs, written, wandb_config or {}, results_dir)
    return [f"{run.run_dir}: {run.record['status']}: {run.record['error']}" for run in runs if not run.ok]


class EvalReportCallback(Callback):
    """Hydra callback of eval.py: after the run or the whole sweep, build the report and exit 1 if a run failed,
    is unfinished or was not run.

    Failed and unfinished runs come from the run dirs (any launcher, SLURM included); runs refused because their dir
    holds finished results of other settings write nothing, so they are collected from the jobs' return values
    (launchers that run the jobs in this process: basic, local; SLURM jobs print the refusal in their log).
    """

    def __init__(self, name: str, report: bool, report_dir: str | None, wandb: bool, overwrite: bool, rescore: bool,
                 timings: bool = False):
        self.name, self.report, self.report_dir, self.wandb, self.timings = name, report, report_dir, wandb, timings
        self.overwrite = overwrite or rescore
        self.not_run: list[str] = []

    def _finish(self, results_dir: Path, config: DictConfig) -> None:
        try:
            failures = finish(results_dir, self.name, self.report, self.report_dir, self.wandb, self.overwrite,
                              eval_wandb_config(config), self.timings)
        except (FileNotFoundError, FileExistsError) as problem:
            if not self.not_run:
                raise SystemExit(f"eval: report not written: {problem}") from None
            failures = []
        problems = failures + [f"not run: {reason}" for reason in self.not_run]
        if problems:
            raise SystemExit("eval: {} run(s) failed or not run:\n  {}".format(len(problems), "\n  ".join(problems)))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if job_return.status == JobStatus.COMPLETED and str(job_return.return_value).startswith("not run: "):
            self.not_run.append(str(job_return.return_value).removeprefix("not run: "))

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._finish(Path(config.hydra.runtime.output_dir), config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._finish(Path(config.hydra.sweep.dir), config)


def eval_wandb_config(config: DictConfig) -> dict:
    """The eval config logged with the W&B table: the command's config (unresolved: in a sweep, the swept keys hold
    their first value), the Hydra overrides as typed (sweep lists included) and the command line."""
    body = OmegaConf.to_container(OmegaConf.masked_copy(config, [key for key in config if key != "hydra"]))
    return {"eval": body, "overrides": list(config.hydra.overrides.task), "command": command_line()}
