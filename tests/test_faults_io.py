"""Fault injection for issue 22's "Outputs and inputs" table: each row reproduced and the fixed behaviour asserted.
Tiny preset, 1 sampling step, 8-16 px images (helpers shared with tests/test_faults.py)."""

import os
import pickle
import re
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file
from test_faults import REPO, UPSCALE_FAST, run_entry_point, upscale_config, write_png
from test_faults import one_line_mode, tiny_model  # noqa: F401 - fixtures, requested by name

import sr.commands.evaluation
from sr.commands.config import compose
from sr.commands.fingerprint import file_digest, weights_identity
from sr.commands.memory import estimate_upscale_peak
from sr.commands.upscale_folder import recorded_outputs, save_run_config
from sr.commands.upscale_folder import run as upscale_run
from sr.errors import describe
from sr.io import claim_path, host_tag, remove_stale_temporaries, try_claim
from sr.utils.checkpoint import CheckpointError, load_checkpoint_state_dict

DAY_S = 24 * 3600


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=60)
    return process.pid


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.strip().splitlines() if line]


# ---------------------------------------------------------- row 1: overwrite=true into a folder of ground truth
def test_overwrite_only_replaces_the_commands_own_outputs(tiny_model, tmp_path, monkeypatch, capsys, one_line_mode):
    lr, hr = tmp_path / "X" / "lr", tmp_path / "X" / "hr"
    for index, name in enumerate(("a.png", "b.png")):
        write_png(lr / name, seed=index)
        write_png(hr / name, side=32, seed=10 + index)
    ground_truth = {path.name: path.read_bytes() for path in hr.iterdir()}

    assert run_entry_point(monkeypatch, "upscale", f"input={lr}", f"output={hr}", "overwrite=true",
                           *UPSCALE_FAST) == 1
    errors = error_lines(capsys)
    assert len(errors) == 1 and errors[0].startswith(
        f"upscale: error: output={hr}: overwrite=true would replace 2 file(s) this command did not write "
        "(a.png, b.png; not listed in upscale_config*.yaml)"), errors
    assert {path.name: path.read_bytes() for path in hr.iterdir()} == ground_truth  # nothing written there

    # the command's own outputs are replaced; a file someone adds later beside them still is not
    out = tmp_path / "out"
    assert upscale_run(upscale_config(f"input={lr}", f"output={out}", "seed=1"), tiny_model) == 0
    first = (out / "a.png").read_bytes()
    assert upscale_run(upscale_config(f"input={lr}", f"output={out}", "seed=2", "overwrite=true"), tiny_model) == 0
    assert (out / "a.png").read_bytes() != first
    write_png(lr / "c.png", seed=3)
    write_png(out / "c.png", side=32, seed=4)
    c_bytes = (out / "c.png").read_bytes()
    with pytest.raises(Exception, match=r"would replace 1 file\(s\) this command did not write \(c.png;"):
        upscale_run(upscale_config(f"input={lr}", f"output={out}", "seed=3", "overwrite=true"), tiny_model)
    assert (out / "c.png").read_bytes() == c_bytes


# --------------------------------------------------------------------------------- row 3: output= (empty)
@pytest.mark.parametrize("key", ["output", "input"])
def test_empty_output_or_input_is_refused(key, tmp_path, monkeypatch, capsys, one_line_mode):
    write_png(tmp_path / "in" / "a.png")
    monkeypatch.chdir(tmp_path)
    paths = {"input": f"input={tmp_path / 'in'}", "output": f"output={tmp_path / 'out'}"}
    paths[key] = f"{key}="
    assert run_entry_point(monkeypatch, "upscale", *paths.values(), *UPSCALE_FAST) == 1
    errors = error_lines(capsys)
    assert len(errors) == 1 and errors[0].startswith(f"upscale: error: {key}=: empty; name "), errors
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in"]  # nothing written into the cwd


# ------------------------------------------------------------- row 4: a user's own *.tmp in the output folder
def test_only_the_projects_own_stale_temporaries_are_removed(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    two_days_ago = time.time() - 2 * DAY_S
    users = [out / "draft.tmp", out / ".draft.tmp", out / ".a.png.1234.tmp", out / ".notes.claim"]
    for path in users:
        path.write_text("the user's")
    ours_dead = out / f".a.png.partial-{host_tag()}_{dead_pid()}_x1y2.tmp"
    ours_foreign_old = out / ".b.png.partial-otherhost_77_k9.tmp"
    ours_foreign_new = out / ".c.png.partial-otherhost_78_k8.tmp"
    claim_dead = out / ".d.png.claim"
    claim_dead.write_text(f"{host_tag()} {dead_pid()}\n")
    for path in (ours_dead, ours_foreign_old, ours_foreign_new):
        path.write_bytes(b"partial")
    for path in [*users, ours_dead, ours_foreign_old, claim_dead]:
        os.utime(path, (two_days_ago, two_days_ago))

    write_png(tmp_path / "in" / "e.png")
    assert upscale_run(upscale_config(f"input={tmp_path / 'in'}", f"output={out}"), tiny_model) == 0
    removed = sorted(re.findall(r"removed (\S+), left by an interrupted run", capsys.readouterr().err))
    assert removed == sorted(path.name for path in (ours_dead, ours_foreign_old, claim_dead))
    assert all(path.read_text() == "the user's" for path in users)
    assert ours_foreign_new.exists()  # another machine's, less than a day old: its writer may be alive
    assert remove_stale_temporaries(out) == []


# ------------------------------------------------------------ row 5: two runs into one output folder at once
def test_a_live_claim_is_left_to_its_owner_and_a_dead_one_taken_over(tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    for index, name in enumerate(("a.png", "b.png", "c.png")):
        write_png(folder / name, seed=index)
    out = tmp_path / "out"
    out.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        claim_path(out / "a.png").write_text(f"{host_tag()} {owner.pid}\n")  # a run busy with a.png
        claim_path(out / "b.png").write_text(f"{host_tag()} {dead_pid()}\n")  # a run killed while on b.png
        assert try_claim(out / "a.png") == f"pid {owner.pid} on {host_tag()}"
        assert upscale_run(upscale_config(f"input={folder}", f"output={out}"), tiny_model) == 0
        captured = capsys.readouterr()
        assert f"{folder / 'a.png'}: a.png is being written by another run (pid {owner.pid} on {host_tag()}); " \
               "left to it" in captured.err
        assert "2 written, 0 skipped (output exists), 0 failed" in captured.out
        assert "; 1 left to another run writing there;" in captured.out
        assert sorted(path.name for path in out.glob("*.png")) == ["b.png", "c.png"]
        assert claim_path(out / "a.png").exists() and not claim_path(out / "b.png").exists()
    finally:
        owner.kill()
        owner.wait(timeout=30)


RACER = """
import runpy, sys, time
from pathlib import Path
from sr.reproducibility import configure_cpu, reproducible_requested
configure_cpu(reproducible_requested())  # as upscale.py does, before the models are imported
import sr.commands.upscale_folder
real = sr.commands.upscale_folder.upscale_file
def slow(*args, **kwargs):  # each image takes long enough for the two runs to meet
    time.sleep(0.6)
    return real(*args, **kwargs)
sr.commands.upscale_folder.upscale_file = slow
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.02)
sys.argv = ["upscale.py", *sys.argv[3:]]
runpy.run_path("upscale.py", run_name="__main__")
"""


@pytest.mark.slow
def test_two_concurrent_runs_share_the_work(tmp_path):
    """Two real upscale.py processes into one folder, started together: each image computed once, both exit 0
    (about 90 s on 2 busy cores, most of it the two processes importing torch and diffusers)."""
    names = [f"{index}.png" for index in range(6)]
    for index, name in enumerate(names):
        write_png(tmp_path / "in" / name, seed=index)
    out = tmp_path / "out"
    go = tmp_path / "go"
    # default mode with the user's 1 thread each: two racers on shared cores
    env = {**os.environ, "PYTHONPATH": str(REPO), "STABLESR_REPRODUCIBLE": "0", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / f"ready{index}"), str(go),
                              f"input={tmp_path / 'in'}", f"output={out}", *UPSCALE_FAST],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for index in range(2)]
    try:
        deadline = time.monotonic() + 240
        while not all((tmp_path / f"ready{index}").exists() for index in range(2)):
            assert time.monotonic() < deadline and all(run.poll() is None for run in runs)
            time.sleep(0.05)
        go.touch()
        results = [run.communicate(timeout=300) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
    written = []
    for run, (stdout, stderr) in zip(runs, results):
        assert run.returncode == 0, stderr[-3000:]
        summary = re.search(r"upscale: (\d+) written, (\d+) skipped \(output exists\), (\d+) failed, .*; "
                            r"(\d+) left to another run writing there;", stdout)
        assert summary, stdout
        count, skipped, failed, left = map(int, summary.groups())
        assert failed == 0 and count + skipped + left == len(names), stdout
        written.append(count)
    assert sum(written) == len(names) and min(written) >= 1, written  # every image once, the work shared
    listed = [name for path in out.glob("upscale_config*.yaml") for name in OmegaConf.load(path).outputs]
    assert sorted(listed) == names  # one record per run, each image in exactly one of them
    assert len(list(out.glob("upscale_config*.yaml"))) == 2
    assert sorted(path.name for path in out.iterdir() if path.name.startswith(".")) == []  # claims released


def test_runs_that_alternate_keep_one_record_each_and_older_records_stay(tmp_path):
    """Two runs writing into one folder by turns (as concurrent runs do), beside records of runs made before run ids
    were recorded: every record is kept, one file per run, and every output stays listed."""
    out = tmp_path / "out"
    out.mkdir()
    legacy = {"upscale_config-1.yaml": ["old1.png"], "upscale_config.yaml": ["old2.png"]}
    for name, outputs in legacy.items():
        (out / name).write_text(OmegaConf.to_yaml(OmegaConf.create({"seed": 0, "outputs": outputs})))
    cfg = upscale_config("input=x", "output=y")
    first, second = [], []
    for run_id, written, name in [("A", first, "a1.png"), ("B", second, "b1.png"), ("A", first, "a2.png"),
                                  ("B", second, "b2.png"), ("A", first, "a3.png")]:
        written.append(name)
        save_run_config(cfg, out, written, {"seed": 0}, run_id)
    records = {path.name: OmegaConf.load(path) for path in out.glob("upscale_config*.yaml")}
    by_run = sorted((record.get("run_id") or "-", sorted(record.outputs)) for record in records.values())
    assert by_run == [("-", ["old1.png"]), ("-", ["old2.png"]), ("A", ["a1.png", "a2.png", "a3.png"]),
                      ("B", ["b1.png", "b2.png"])]
    assert records["upscale_config.yaml"].run_id == "A" and records["upscale_config-1.yaml"].outputs == ["old1.png"]
    assert sorted(recorded_outputs(out)) == ["a1.png", "a2.png", "a3.png", "b1.png", "b2.png", "old1.png", "old2.png"]


# ---------------------------------------------------------- row 6: weights changed on disk during a sweep
def test_changed_weights_are_reloaded_and_the_recorded_hash_is_of_the_weights_used(tiny_model, tmp_path,
                                                                                   monkeypatch):
    weights = tmp_path / "stage1.safetensors"
    tiny_model.model.save_trainable(weights)
    cfg = compose("eval", ["model=tiny", f"model.stage1_weights={weights}", "device=cpu"])
    sr.commands.evaluation._model_cache.clear()
    first = sr.commands.evaluation.load_model(cfg)
    assert sr.commands.evaluation.load_model(cfg) is first  # same weights: the sweep shares the model

    retrained = {name: tensor + 1 for name, tensor in first.model.trainable_state_dict(("encoder", "sft")).items()}
    save_file({name: tensor.contiguous() for name, tensor in retrained.items()}, weights)
    recorded = {"model.pretrained": None, "model.stage1_weights": f"sha256:{file_digest(weights)}",
                "model.cfw_weights": None}
    second = sr.commands.evaluation.load_model(cfg, recorded)
    assert second is not first
    for name, tensor in second.model.trainable_state_dict(("encoder", "sft")).items():
        assert torch.equal(tensor, retrained[name]), name
    assert weights_identity(weights) == recorded["model.stage1_weights"]

    # weights replaced while the run loads them: refused, not recorded under a hash they do not have
    sr.commands.evaluation._model_cache.clear()
    real_build = sr.commands.evaluation.build_model

    def replaced_during_load(config):
        pipe = real_build(config)
        save_file({name: (tensor * 2).contiguous() for name, tensor in retrained.items()}, weights)
        return pipe

    monkeypatch.setattr(sr.commands.evaluation, "build_model", replaced_during_load)
    with pytest.raises(RuntimeError, match="model weights changed on disk while the run loaded them "
                                           r"\(model.stage1_weights: sha256:"):
        sr.commands.evaluation.load_model(cfg, recorded)
    assert sr.commands.evaluation._model_cache == {}


# ---------------------------------------- row 7: symlink loop, dangling symlink, folder named x.png in the input
def test_broken_links_and_image_named_folders_are_counted_and_named(tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    write_png(folder / "a.png")
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "x.png").mkdir()
    assert upscale_run(upscale_config(f"input={folder}", f"output={tmp_path / 'out'}"), tiny_model) == 1
    captured = capsys.readouterr()
    assert f"{folder / 'dangling.png'}: dangling symbolic link to {tmp_path / 'gone.png'} (no such file); " \
           "skipped" in captured.err
    assert f"{folder / 'loop.png'}: symbolic link loop; skipped" in captured.err
    assert "1 written, 0 skipped (output exists), 2 failed, 0 kept (made with other settings), of 3 images" \
        in captured.out
    assert "1 other entries not read (x.png/)" in captured.out
    assert sorted(path.name for path in (tmp_path / "out").glob("*.png")) == ["a.png"]


# -------------------------------------------------------------- row 8: the project's one line, naming the file
class _RunsShellCommand:
    def __reduce__(self):
        return os.system, ("true",)


def test_one_line_errors_name_the_file_not_the_library_exception(tiny_model, tmp_path, monkeypatch, capsys,
                                                                 one_line_mode):
    from sr.commands.convert import main as convert_main

    write_png(tmp_path / "in" / "a.png")
    base = [f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", *UPSCALE_FAST]

    def upscale_error(*overrides: str) -> str:
        assert run_entry_point(monkeypatch, "upscale", *base, *overrides) == 1
        errors = [line for line in error_lines(capsys) if "error" in line]  # (diffusers' loading bar aside)
        assert len(errors) == 1 and errors[0].startswith("upscale: error: "), errors
        return errors[0]

    truncated = tmp_path / "stage1.safetensors"
    save_file({"encoder.w": torch.randn(64, 64)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    line = upscale_error(f"model.stage1_weights={truncated}")
    assert f"{truncated}: not a readable safetensors file" in line and "SafetensorError:" not in line

    folder = tmp_path / "pipeline"
    tiny_model.save_pretrained(folder)
    damaged = next((folder / "vae").glob("*.safetensors"))
    damaged.write_bytes(damaged.read_bytes()[:1000])
    line = upscale_error(f"model.pretrained={folder}")
    assert f"{damaged}: not a readable safetensors file (truncated or corrupt?)" in line

    assert "FileNotFoundError: no model folder at /nonexistent/model (" in upscale_error(
        "model.pretrained=/nonexistent/model")
    half_folder = tmp_path / "copied_model"
    (half_folder / "unet").mkdir(parents=True)
    (half_folder / "vae").mkdir()
    assert (f"{half_folder}: not a diffusers pipeline folder (no model_index.json), nor a Stable Diffusion folder "
            "(no scheduler/, text_encoder/, tokenizer/)") in upscale_error(f"model.pretrained={half_folder}")

    malicious = tmp_path / "stablesr.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _RunsShellCommand()}, malicious)
    with pytest.raises(SystemExit):
        convert_main(["stablesr", "--ckpt", str(malicious), "--out", str(tmp_path / "converted")])
    errors = [line for line in error_lines(capsys) if "error" in line]
    assert len(errors) == 1 and (  # (after the converter's progress bar, which shares stderr)
        f"sr.commands.convert: error: {malicious}: refused: the checkpoint holds code (pickle global "
        f"{os.system.__module__}.system), not only tensors (--debug") in errors[0], errors

    # the rule behind these lines: the innermost exception the project raised, not the library's under it
    try:
        try:
            raise pickle.UnpicklingError("Weights only load failed ... posix.system")
        except pickle.UnpicklingError:
            raise CheckpointError(f"{malicious}: refused") from None
    except CheckpointError as error:
        wrapped = RuntimeError("Error in call to target")
        wrapped.__cause__ = error
        assert describe(wrapped) == f"{malicious}: refused"


def test_legacy_non_zip_torch_checkpoint_loads(tmp_path):
    legacy = tmp_path / "legacy.ckpt"
    state = {"w": torch.randn(3, 4), "b": torch.arange(5.0)}
    torch.save({"state_dict": state}, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] != b"PK"
    loaded = load_checkpoint_state_dict(legacy)
    assert sorted(loaded) == ["b", "w"] and all(torch.equal(loaded[key], state[key]) for key in state)


# ----------------------------------------------------------------- row 9: the memory guard's hint
def test_memory_hint_names_only_changes_that_lower_the_estimate(tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (4000, 4000), (90, 120, 150)).save(folder / "huge.png")
    assert upscale_run(upscale_config(f"input={folder}", f"output={tmp_path / 'out'}"), tiny_model) == 1
    line = next(line for line in capsys.readouterr().err.splitlines() if "huge.png" in line)
    hinted = re.findall(r"([a-z_.]+=[0-9a-z.]+) \(about ([0-9.]+ [KMGT]?B)\)", line.split("skipped (", 1)[1])
    overrides = [override for override, _size in hinted]
    # on the CPU the exact tiled VAE holds whole maps: only its estimate mode, the UNet batch and the scale help
    assert "vae_tile.mode=estimate" in overrides and "scale=2" in overrides
    assert not any(override.startswith("vae_tile.size=") for override in overrides)
    needed = float(re.search(r"needs about ([0-9.]+) GB", line)[1])

    def estimate(*changes: str) -> int:
        cfg = upscale_config(f"input={folder}", f"output={tmp_path / 'out'}", *changes)
        settings = tiny_model.sampling_settings(cfg)
        return estimate_upscale_peak(tiny_model, settings, 4000, 4000).total

    baseline = estimate()
    assert baseline / 1024**3 == pytest.approx(needed, abs=0.05)
    for override in overrides:
        assert estimate(override) < baseline, override
    assert estimate("vae_tile.size=512") == baseline  # the old hint's lever: no effect here
