"""Fault injection: every case of issue 12's table reproduced (kills, reruns with other settings, bad inputs, memory
pressure, broken files) and the fixed behaviour asserted. Tiny preset, 1-2 sampling steps, 16 px LR images."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image, ImageOps

import sr.commands.evaluation
import sr.commands.upscale_folder
from sr.commands.config import compose, register_resolvers
from sr.commands.fingerprint import FINGERPRINT_FILE
from sr.commands.memory import ESTIMATE_MARGIN, estimate_peak, format_bytes
from sr.commands.train import compose_train_config
from sr.commands.upscale_folder import run as upscale_run
from sr.errors import ConfigError, describe, root_cause
from sr.io import read_image, remove_stale_temporaries, write_bytes_atomic
from sr.pipelines import resolved_settings
from sr.utils.checkpoint import CheckpointError, load_checkpoint_state_dict
from sr.validation import validate_train

REPO = Path(__file__).resolve().parents[1]
HELDOUT_HR = REPO / "data" / "samples" / "heldout_pairs" / "hr"
EVAL_FAST = ["model=tiny", "num_inference_steps=1", "tile.size=16", "progress=false", "metrics=[psnr_y]"]
UPSCALE_FAST = ["model=tiny", "num_inference_steps=1", "tile.size=16", "progress=false"]


# ------------------------------------------------------------------------------------------------------ helpers
def run_entry_point(monkeypatch, script: str, *overrides: str) -> int:
    """``python <script>.py <overrides>`` in this process (Hydra's argv parsing included); returns the exit code."""
    register_resolvers()
    module = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *overrides])
    GlobalHydra.instance().clear()
    try:
        module.main()
    except SystemExit as exit_:
        if isinstance(exit_.code, int):
            return exit_.code
        print(exit_.code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
        return 1
    finally:
        GlobalHydra.instance().clear()
    return 0


@pytest.fixture
def one_line_mode(monkeypatch):
    """The user's environment: no HYDRA_FULL_ERROR (the test session sets it)."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    """Two pairs cut from the bundled held-out images: HR 64 px, LR 16 px."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "hr").mkdir()
    (root / "lr").mkdir()
    for name in ("camera", "coffee"):
        with Image.open(HELDOUT_HR / f"{name}.png") as image:
            hr = image.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
        hr.save(root / "hr" / f"{name}.png")
        hr.resize((16, 16), Image.Resampling.BICUBIC).save(root / "lr" / f"{name}.png")
    return root


def data_overrides(test_set: Path) -> list[str]:
    return [f"data.lr_dir={test_set / 'lr'}", f"data.hr_dir={test_set / 'hr'}"]


@pytest.fixture(scope="module")
def tiny_model(tiny_pipe):
    """The shared tiny pipeline (conftest); ``upscale_run`` swaps its scheduler, restored after this module."""
    scheduler = tiny_pipe.scheduler
    yield tiny_pipe
    tiny_pipe.scheduler = scheduler


def upscale_config(*overrides: str):
    return compose("upscale", [*UPSCALE_FAST, *overrides])


def write_png(path: Path, side: int = 8, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------- row 1: killed run resumed with other settings
def test_killed_run_rerun_with_other_w_never_scores_the_old_image(test_set, tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "S"
    real_write = sr.commands.evaluation.write_image
    written: list[Path] = []

    def killed_after_first_image(path, *args, **kwargs):
        if written:
            raise KeyboardInterrupt  # the kill: nothing after the first image is written
        written.append(real_write(path, *args, **kwargs))
        return written[-1]

    monkeypatch.setattr(sr.commands.evaluation, "write_image", killed_after_first_image)
    with pytest.raises(KeyboardInterrupt):
        run_entry_point(monkeypatch, "eval", "-m", *EVAL_FAST, *data_overrides(test_set), "w=0",
                        f"hydra.sweep.dir={sweep}")
    monkeypatch.setattr(sr.commands.evaluation, "write_image", real_write)
    old_image = written[0].read_bytes()
    assert not (sweep / "0" / "scores.json").exists() and (sweep / "0" / FINGERPRINT_FILE).is_file()

    assert run_entry_point(monkeypatch, "eval", "-m", *EVAL_FAST, *data_overrides(test_set), "w=1",
                           f"hydra.sweep.dir={sweep}") == 0
    assert "discarding 1 image(s) made with other settings (w: 0.0 -> 1.0)" in capsys.readouterr().err
    record = json.loads((sweep / "0" / "scores.json").read_text())
    assert record["status"] == "ok" and record["settings"]["w"] == 1.0
    assert written[0].read_bytes() != old_image  # re-sampled with w=1, not the w=0 leftover
    fingerprint = json.loads((sweep / "0" / FINGERPRINT_FILE).read_text())
    assert fingerprint["components"]["w"] == 1.0 and record["fingerprints"]["images"] == fingerprint["fingerprint"]


# -------------------------------------------------------- row 2: finished sweep dir rerun with other values
def test_finished_sweep_dir_rerun_with_other_values_is_refused_and_kept(test_set, tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "S"
    assert run_entry_point(monkeypatch, "eval", "-m", *EVAL_FAST, *data_overrides(test_set), "w=0,1",
                           f"hydra.sweep.dir={sweep}") == 0
    before = {job: (sweep / job / "scores.json").read_bytes() for job in ("0", "1")}
    capsys.readouterr()

    assert run_entry_point(monkeypatch, "eval", "-m", *EVAL_FAST, *data_overrides(test_set), "w=0.25,0.75",
                           f"hydra.sweep.dir={sweep}") == 1
    err = capsys.readouterr().err
    assert "w: 0.0 -> 0.25" in err and "w: 1.0 -> 0.75" in err and "2 run(s) failed or not run" in err
    assert {job: (sweep / job / "scores.json").read_bytes() for job in ("0", "1")} == before

    # the same settings again: reused, not recomputed
    monkeypatch.setattr(sr.commands.evaluation, "sample_images", lambda *a, **k: pytest.fail("finished run re-sampled"))
    assert run_entry_point(monkeypatch, "eval", "-m", *EVAL_FAST, *data_overrides(test_set), "w=0,1",
                           f"hydra.sweep.dir={sweep}") == 0
    assert capsys.readouterr().out.count("holds the results of these settings; skipped") == 2


def test_changed_weights_file_is_a_different_fingerprint(test_set, tmp_path, monkeypatch):
    """Same path, other bytes: the cached images are not reused (identity is the content, not the name)."""
    from sr.commands.fingerprint import fingerprint, generation_components

    weights = tmp_path / "stage1.safetensors"
    weights.write_bytes(b"one")
    cfg = compose("eval", [*EVAL_FAST, *data_overrides(test_set), f"ckpt={weights}"])
    first = fingerprint(generation_components(cfg, sr.commands.evaluation.model_config(cfg), resolved_settings(cfg)))
    weights.write_bytes(b"two")
    os.utime(weights, ns=(time.time_ns() + 10**9,) * 2)
    assert fingerprint(generation_components(cfg, sr.commands.evaluation.model_config(cfg), resolved_settings(cfg))) != first


def test_changed_vae_tile_mode_is_a_different_fingerprint(test_set):
    """The tiled VAE's mode changes the images of a run and of its lr_latent baseline (not the bicubic one), so
    cached eval images of the other mode are not reused; the run's settings (its report row) show it."""
    from sr.commands.fingerprint import baseline_components, fingerprint, generation_components

    def fingerprints(mode: str) -> dict[str, str]:
        cfg = compose("eval", [*EVAL_FAST, *data_overrides(test_set), f"vae_tile.mode={mode}"])
        assert sr.commands.evaluation.run_settings(cfg)["vae_tile.mode"] == mode
        generation = generation_components(cfg, sr.commands.evaluation.model_config(cfg), resolved_settings(cfg))
        return {"run": fingerprint(generation),
                **{name: fingerprint(baseline_components(name, generation)) for name in ("bicubic", "lr_latent")}}

    exact, estimate = fingerprints("exact"), fingerprints("estimate")
    assert exact == fingerprints("exact")
    assert {name for name in exact if exact[name] != estimate[name]} == {"run", "lr_latent"}


# -------------------------------------------------------------------- row 3: output folder = input folder
def test_output_equal_to_input_is_refused_and_inputs_stay(tiny_model, tmp_path):
    folder = tmp_path / "D"
    originals = {name: write_png(folder / name, seed=index).read_bytes()
                 for index, name in enumerate(("a.png", "b.png"))}
    with pytest.raises(ConfigError, match=r"would replace input files of this run \(a.png, b.png\)"):
        upscale_run(upscale_config(f"input={folder}", f"output={folder}", "overwrite=true"), tiny_model)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == originals

    # JPEG inputs written as PNG beside them: the names cannot collide, so the run goes ahead ...
    jpegs = tmp_path / "J"
    jpegs.mkdir()
    Image.open(folder / "a.png").save(jpegs / "a.jpg", quality=95)
    jpeg_bytes = (jpegs / "a.jpg").read_bytes()
    assert upscale_run(upscale_config(f"input={jpegs}", f"output={jpegs}"), tiny_model) == 0
    assert (jpegs / "a.jpg").read_bytes() == jpeg_bytes and (jpegs / "a.png").is_file()
    # ... but once a.png is there it is an input of the next run, and overwrite=true must not replace it
    with pytest.raises(ConfigError, match="would replace input files"):
        upscale_run(upscale_config(f"input={jpegs}", f"output={jpegs}", "overwrite=true"), tiny_model)


# ---------------------------------------------------------------------------- row 4: memory guard and OOM
def test_memory_guard_skips_a_huge_image_and_the_folder_goes_on(tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    Image.new("RGB", (4000, 4000), (90, 120, 150)).save(folder.mkdir() or folder / "huge.png")
    write_png(folder / "small.png")
    code = upscale_run(upscale_config(f"input={folder}", f"output={tmp_path / 'out'}"), tiny_model)
    captured = capsys.readouterr()
    assert code == 1
    line = next(line for line in captured.err.splitlines() if "huge.png" in line)
    assert "needs about" in line and "16000x16000" in line and "available" in line and "skipped" in line
    assert "1 written, 0 skipped (output exists), 1 failed, 0 kept (made with other settings), of 2 images" in captured.out
    assert (tmp_path / "out" / "small.png").is_file() and not (tmp_path / "out" / "huge.png").exists()

    # max_memory below the estimate of even a small image: skipped, saying which limit
    code = upscale_run(upscale_config(f"input={folder / 'small.png'}", f"output={tmp_path / 'capped'}",
                                      "max_memory=1MB"), tiny_model)
    assert code == 1 and "max_memory" in capsys.readouterr().err


def test_out_of_memory_in_one_image_is_reported_and_the_folder_goes_on(tiny_model, tmp_path, capsys, monkeypatch,
                                                                      one_line_mode):
    folder = tmp_path / "in"
    for index, name in enumerate(("a.png", "b.png", "c.png")):
        write_png(folder / name, seed=index)
    real = sr.commands.upscale_folder.upscale_file

    def out_of_memory_on_b(upscaler, source, *args):
        if source.name == "b.png":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(upscaler, source, *args)

    monkeypatch.setattr(sr.commands.upscale_folder, "upscale_file", out_of_memory_on_b)
    assert upscale_run(upscale_config(f"input={folder}", f"output={tmp_path / 'out'}"), tiny_model) == 1
    captured = capsys.readouterr()
    assert f"{folder / 'b.png'}: OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB" in captured.err
    assert "Traceback" not in captured.err
    assert "2 written, 0 skipped (output exists), 1 failed, 0 kept (made with other settings), of 3 images" in captured.out


@pytest.mark.slow  # about 15 s: measures a 512 px upscale's peak in a fresh process (CI runs make test-slow)
def test_peak_memory_estimate_is_checked_against_a_measurement():
    """A 4x upscale to 512^2 in a fresh process (peak RSS, as benchmarks/sampling.py measures it) against the
    formula of sr.commands.memory for the same settings."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sampling.py"), "--memory-child", "512", "--steps", "1",
         "--threads", "2", "--vae-tile", "1024"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    delta = measured["peak"] - measured["before"]
    estimate = estimate_peak(128, 128, scale=4, input_size=None, vae_tile=1024, vae_tile_mode="exact",
                             vae_channels=[32, 32, 64, 64], unet_channels=32, tile_size=32, tile_batch_size=4)
    assert delta <= estimate.total <= ESTIMATE_MARGIN * delta, (format_bytes(delta), estimate)


def test_estimate_grows_with_the_output_not_the_input():
    settings = dict(input_size=None, vae_tile=1024, vae_tile_mode="exact", vae_channels=[128, 256, 512, 512],
                    unet_channels=320, tile_size=64, tile_batch_size=4)
    x2 = estimate_peak(1000, 1000, scale=2, **settings)
    x4 = estimate_peak(1000, 1000, scale=4, **settings)
    assert (x2.output_height, x4.output_height) == (2000, 4000)
    per_pixel = (x4.terms["images"] + x4.terms["cfw_features"]) / (x2.terms["images"] + x2.terms["cfw_features"])
    assert per_pixel == pytest.approx((4032 / 2048) ** 2, rel=1e-9)  # padded 4032^2 vs 2048^2 px
    # on an accelerator, above one VAE tile the VAE works on one tile (with halo) plus at most the <= 1024^2
    # statistics pass, whatever the size; on the CPU the exact tiled VAE's parked maps are the device's memory, while
    # the estimate mode works on its tiles there too
    on_device = [estimate_peak(1000, 1000, scale=scale, on_host=False, **settings) for scale in (2, 4)]
    assert on_device[1].terms["vae"] == on_device[0].terms["vae"] == 6 * 128 * 4 * ((1024 + 64) ** 2 + 1024**2)
    assert x4.terms["vae"] == 6 * 128 * 4 * 4032**2
    estimate_mode = estimate_peak(1000, 1000, scale=4, **{**settings, "vae_tile_mode": "estimate"})
    assert estimate_mode.terms["vae"] == on_device[1].terms["vae"]
    assert estimate_peak(100, 100, scale=4, **settings).terms["vae"] == 6 * 128 * 4 * 448**2  # untiled: all of it
    assert x4.terms["unet"] == x2.terms["unet"]
    half = estimate_peak(1000, 1000, scale=4, dtype=torch.float16, **settings)
    assert half.terms["cfw_features"] * 2 == x4.terms["cfw_features"]


# ----------------------------------------------------------------------- row 5: report with an unfinished run
def test_report_names_unfinished_runs_and_fails(test_set, tmp_path, monkeypatch, capsys):
    from sr.commands.report.cli import main as report_main

    sweep = tmp_path / "S"
    assert run_entry_point(monkeypatch, "eval", "-m", *EVAL_FAST, *data_overrides(test_set), "w=0,1",
                           f"hydra.sweep.dir={sweep}") == 0
    (sweep / "1" / "scores.json").unlink()  # job 1 killed before it was scored
    (sweep / "2" / ".hydra").mkdir(parents=True)  # job 2 killed right after Hydra made its folder
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        report_main([str(sweep), "--out", str(tmp_path / "report")])
    assert exit_.value.code == 1
    table = (tmp_path / "report" / "table.md").read_text()
    assert "(3 runs: 1 ok, 0 failed, 2 unfinished)" in table
    assert table.count("UNFINISHED") == 2
    err = capsys.readouterr().err
    assert f"{sweep / '1'}: unfinished: no scores.json" in err and f"{sweep / '2'}: unfinished" in err

    # job 0's images re-sampled with other settings after scoring: its old scores are not shown
    record = json.loads((sweep / "0" / FINGERPRINT_FILE).read_text())
    (sweep / "0" / FINGERPRINT_FILE).write_text(json.dumps(record | {"fingerprint": "0123456789abcdef"}))
    with pytest.raises(SystemExit):
        report_main([str(sweep), "--out", str(tmp_path / "report"), "--overwrite"])
    table = (tmp_path / "report" / "table.md").read_text()
    assert "(3 runs: 0 ok, 0 failed, 3 unfinished)" in table and "re-sampled with other settings" in table


# --------------------------------------------------------------------- row 6: failed run keeps the root cause
def test_failed_run_records_the_innermost_error(test_set, tmp_path, monkeypatch):
    mismatched = tmp_path / "mismatched"
    (mismatched / "lr").mkdir(parents=True)
    (mismatched / "hr").mkdir()
    write_png(mismatched / "lr" / "one.png", side=16)
    write_png(mismatched / "hr" / "two.png", side=64)
    run_dir = tmp_path / "run"
    assert run_entry_point(monkeypatch, "eval", *EVAL_FAST, f"data.lr_dir={mismatched / 'lr'}",
                           f"data.hr_dir={mismatched / 'hr'}", f"hydra.run.dir={run_dir}") == 1
    error = json.loads((run_dir / "scores.json").read_text())["error"]
    assert "InstantiationException" not in error and "Error in call to target" not in error
    assert "one" in error and "two" in error  # the dataset's own message, naming the unpaired files

    try:
        try:
            raise FileNotFoundError("/data/lr: no such folder")
        except FileNotFoundError as inner:
            raise RuntimeError("Error in call to target 'sr.data.datasets.PairedImageDataset'") from inner
    except RuntimeError as outer:
        assert str(root_cause(outer)) == "/data/lr: no such folder"
        assert describe(outer) == "FileNotFoundError: /data/lr: no such folder"


# --------------------------------------------------------------- rows 7-9: one line for every bad setting
BAD_SETTINGS = [
    ("w=abc", "w='abc': must be a number"),
    ("w=-1", "w=-1: must be a number in [0, 1]"),
    ("w=3", "w=3: must be a number in [0, 1]"),
    ("scale=0", "scale=0: must be a number > 0"),
    ("num_inference_steps=0", "num_inference_steps=0: must be an integer >= 1"),
    ("tile.size=7", "tile.size=7: must be a positive multiple of 8"),
    ("tile.overlap=16", "tile.overlap=16: must be smaller than the tile size (16)"),
    ("color_fix=foo", "color_fix='foo': must be one of adain, wavelet, none"),
    ("vae_tile.mode=fast", "vae_tile.mode='fast': must be one of exact, estimate"),
]


@pytest.mark.parametrize("override, message", BAD_SETTINGS)
def test_bad_sampling_settings_are_one_line_before_anything_runs(override, message, tmp_path, monkeypatch, capsys,
                                                                  one_line_mode):
    monkeypatch.setattr(sr.commands.upscale_folder, "use_scheduler", lambda *a, **k: pytest.fail("model built"))
    write_png(tmp_path / "in" / "a.png")
    code = run_entry_point(monkeypatch, "upscale", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
                           *UPSCALE_FAST, override)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(f"upscale: error: {message}"), err
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        resolved_settings(compose("upscale", [*UPSCALE_FAST, "input=x", "output=y", override]))


def test_environment_problems_are_one_line(tmp_path, monkeypatch, capsys, one_line_mode):
    write_png(tmp_path / "in" / "a.png")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only and real_access(path, mode))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = [
        (f"output={a_file}", f"output={a_file}: is a file, not a folder"),
        (f"output={read_only / 'out'}", f"output={read_only / 'out'}: {read_only} is not writable (read-only)"),
        ("device=cuda", "device='cuda': no CUDA GPU is available on this machine"),
        ("device=auto", "device='auto': not a device here; expected cpu, cuda or cuda:N"),  # only eval.py resolves it
    ]
    for override, message in cases:
        assert run_entry_point(monkeypatch, "upscale", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
                               *UPSCALE_FAST, override) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_every_entry_point_gives_one_line_and_the_traceback_on_request(test_set, tmp_path, monkeypatch, capsys,
                                                                       one_line_mode):
    empty = tmp_path / "last.ckpt"
    empty.write_bytes(b"")
    commands = [
        ("upscale", [f"input={tmp_path / 'missing'}", f"output={tmp_path / 'o'}"], "no such file or folder"),
        ("train", ["experiment=stablesr_tiny", f"ckpt_path={empty}", f"hydra.run.dir={tmp_path / 't'}"],
         "empty file (0 bytes)"),
        ("sr.commands.preview", ["n=0", f"out={tmp_path / 'p.png'}"], "n=0: must be an integer >= 1"),
        ("sr.commands.cfw_generate", ["seed=null", f"out={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'g'}"],
         "seed must be set"),
    ]
    for script, overrides, message in commands:
        assert run_entry_point(monkeypatch, script, *overrides) == 1, script
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"{script}: error: ") and message in err[0], (script, err)
    # debug=true: the exception reaches Hydra, which prints its traceback; HYDRA_FULL_ERROR=1: it propagates
    missing = [f"input={tmp_path / 'missing'}", f"output={tmp_path / 'o'}"]
    assert run_entry_point(monkeypatch, "upscale", *missing, "debug=true") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError: input=" in err and "upscale: error:" not in err
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="no such file or folder"):
        run_entry_point(monkeypatch, "upscale", *missing)
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    # eval: the run fails with the one line recorded (the sweep would go on), and the command exits 1
    assert run_entry_point(monkeypatch, "eval", *EVAL_FAST, *data_overrides(test_set), "w=abc",
                           f"hydra.run.dir={tmp_path / 'e'}") == 1
    assert json.loads((tmp_path / "e" / "scores.json").read_text())["error"] == "w='abc': must be a number"


# ---------------------------------------------------------------- row 10: truncated or empty checkpoints
def test_truncated_and_empty_checkpoints_are_named_clearly(tmp_path):
    full = tmp_path / "full.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, full)
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for path, message in ((truncated, "truncated checkpoint"), (empty, r"empty file \(0 bytes\)")):
        with pytest.raises(CheckpointError, match=f"{path.name}: {message}"):
            load_checkpoint_state_dict(path)
        cfg = compose_train_config(["experiment=stablesr_tiny", f"ckpt_path={path}"], tmp_path / "run")
        with pytest.raises(ConfigError, match=f"ckpt_path={path}: {message}"):
            validate_train(cfg)


# ---------------------------------------------------------------------- row 11: non-image files counted
def test_non_image_files_are_counted_and_named_in_the_summary(tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    write_png(folder / "a.png")
    (folder / "notes.txt").write_text("not an image")
    Image.new("P", (4, 4)).save(folder / "anim.gif")
    assert upscale_run(upscale_config(f"input={folder}", f"output={tmp_path / 'out'}"), tiny_model) == 0
    assert "1 written, 0 skipped (output exists), 0 failed, 0 kept (made with other settings), of 1 images" in (out := capsys.readouterr().out)
    assert "2 other entries not read (anim.gif, notes.txt)" in out


# -------------------------------------------------------------------- row 12: EXIF orientation, all formats
@pytest.mark.parametrize("image_format, suffix", [("PNG", ".png"), ("WEBP", ".webp"), ("TIFF", ".tif"),
                                                  ("JPEG", ".jpg")])
def test_exif_orientation_is_applied_for_every_format(image_format, suffix, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}{suffix}"
        options = {"lossless": True} if image_format == "WEBP" else {"quality": 100} if image_format == "JPEG" else {}
        Image.fromarray(pixels).save(path, format=image_format, exif=exif.tobytes(), **options)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        got = (read_image(path).image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(got, expected), (image_format, orientation)
        assert got.shape[:2] == ((7, 5) if orientation >= 5 else (5, 7))


# --------------------------------------------------------------------- row 13: SIGKILL during atomic write
def _writer_stuck_before_replace(path: Path) -> subprocess.Popen:
    """A process that writes ``path`` atomically and hangs before the final rename (where a kill hurts)."""
    code = ("import os, sys, time; import sr.io; os.replace = lambda *a: time.sleep(600); "
            "sr.io.write_bytes_atomic(sys.argv[1], b'x' * 1000)")
    return subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _wait_for_temporary(folder: Path, name: str, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(f".{name}.partial-*.tmp"))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no temporary file of {name} appeared")


def test_temporary_file_of_a_killed_write_is_removed_by_the_next_run(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    killed = _writer_stuck_before_replace(out / "a.png")
    alive = _writer_stuck_before_replace(out / "b.png")
    try:
        killed_temporary = _wait_for_temporary(out, "a.png")
        alive_temporary = _wait_for_temporary(out, "b.png")
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed_temporary.exists()  # what SIGKILL leaves behind

        write_png(tmp_path / "in" / "c.png")
        assert upscale_run(upscale_config(f"input={tmp_path / 'in'}", f"output={out}"), tiny_model) == 0
        assert f"removed {killed_temporary.name}, left by an interrupted run" in capsys.readouterr().err
        assert not killed_temporary.exists() and alive_temporary.exists()  # a live writer's file is kept
    finally:
        for process in (killed, alive):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    assert remove_stale_temporaries(out) == [alive_temporary]
    write_bytes_atomic(out / "d.txt", b"d")
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == []


# ----------------------------------------------------------- row 14: converting an empty / random-bytes file
@pytest.mark.parametrize("content, message", [(b"", "empty file (0 bytes)"),
                                              (b"\x13" + bytes(range(200)) * 5, "not a torch checkpoint")])
def test_converter_names_the_real_problem(content, message, tmp_path, capsys, one_line_mode):
    from sr.commands.convert import main as convert_main

    checkpoint = tmp_path / "stablesr.ckpt"
    checkpoint.write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        convert_main(["stablesr", "--ckpt", str(checkpoint), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and f"{checkpoint}: {message}" in err[0] and "zipfile" not in err[0], err


# ------------------------------------------------------ row 15: the run config named after the producing run
def test_run_config_belongs_to_the_run_that_wrote_the_outputs(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    broken = tmp_path / "broken" / "x.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not a png")
    assert upscale_run(upscale_config(f"input={broken}", f"output={out}", "seed=1"), tiny_model) == 1
    assert not (out / "upscale_config.yaml").exists()  # wrote nothing: no config claims the folder

    good = write_png(tmp_path / "in" / "a.png")
    assert upscale_run(upscale_config(f"input={good}", f"output={out}", "seed=2"), tiny_model) == 0
    config = OmegaConf.load(out / "upscale_config.yaml")
    assert config.seed == 2 and list(config.outputs) == ["a.png"] and "git_revision" in config

    # an existing output is reused only if it was made with the same settings; otherwise kept, named, exit 1
    before = (out / "a.png").read_bytes()
    assert upscale_run(upscale_config(f"input={good}", f"output={out}", "seed=2"), tiny_model) == 0
    assert upscale_run(upscale_config(f"input={good}", f"output={out}", "seed=5"), tiny_model) == 1
    assert "a.png was made with other settings (seed: 2 -> 5)" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == before

    other = write_png(tmp_path / "in2" / "b.png", seed=5)
    assert upscale_run(upscale_config(f"input={other}", f"output={out}", "seed=3"), tiny_model) == 0
    assert OmegaConf.load(out / "upscale_config.yaml").seed == 3
    kept = OmegaConf.load(out / "upscale_config-1.yaml")
    assert kept.seed == 2 and list(kept.outputs) == ["a.png"]
