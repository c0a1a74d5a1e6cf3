"""benchmarks/autoencoder_levers.py --checkpoints: a prior run's step checkpoints scored through their own VAE."""

import importlib.util
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from omegaconf import OmegaConf
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("autoencoder_levers", ROOT / "benchmarks" / "autoencoder_levers.py")
levers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(levers)

VAE = {"block_out_channels": [8, 8, 8, 8], "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4, "latent_channels": 4, "norm_num_groups": 4, "layers_per_block": 1}


def prior_run(tmp_path: Path, step: int = 10) -> tuple[Path, AutoencoderKL]:
    """A prior run folder as train.py leaves it: config_resolved.yaml and a Lightning step checkpoint (weights
    seeded by ``step``)."""
    run = tmp_path / "prior"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"model": {"vae": VAE}}), run / "config_resolved.yaml")
    torch.manual_seed(step)
    vae = AutoencoderKL(**VAE).eval()
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.2)  # weights no fresh initialisation has
    state = {f"model.vae.{key}": value for key, value in vae.state_dict().items()}
    state["model.unet.conv_in.weight"] = torch.zeros(1)  # the prior's other part: ignored
    checkpoint = run / "checkpoints" / f"step{step:07d}.ckpt"
    torch.save({"global_step": step, "state_dict": state}, checkpoint)
    return checkpoint, vae


def eval_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir()
    pixels = (torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(0)) * 255).byte()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / "a.png")
    return folder


def table_rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in output.strip().splitlines()[2:]]


def expected_cells(vae: AutoencoderKL, eval_dir: Path) -> list[str]:
    """The row cells ``vae`` must get: the training photos, then the --eval folder, scored by ``evaluate``."""
    folders = (ROOT / "data/samples/train", eval_dir)
    return ["{:.2f} dB / {:.1f}".format(*levers.evaluate(vae, levers.load_rgb(folder, 256))) for folder in folders]


def test_checkpoint_rows_score_the_checkpoints_own_vae(tmp_path, capsys):
    checkpoint, vae = prior_run(tmp_path)
    eval_dir = eval_folder(tmp_path)

    levers.main(["--checkpoints", str(checkpoint), "--eval", str(eval_dir), "--threads", "1"])

    [cells] = table_rows(capsys.readouterr().out)
    assert cells[0] == "step0000010.ckpt" and len(cells) == 3  # the training photos, then the --eval folder
    assert cells[1:] == expected_cells(vae, eval_dir)
    loaded = levers.checkpoint_vae(checkpoint)
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in vae.state_dict().items())


def test_a_checkpoint_outside_a_prior_run_is_named(tmp_path):
    checkpoint, _ = prior_run(tmp_path)
    (checkpoint.parents[1] / "config_resolved.yaml").unlink()
    with pytest.raises(SystemExit, match=r"step0000010\.ckpt: no .*config_resolved\.yaml"):
        levers.checkpoint_vae(checkpoint)


def test_average_row_scores_the_mean_weights_of_the_checkpoints(tmp_path, capsys):
    (first, vae_a), (second, vae_b) = prior_run(tmp_path, 10), prior_run(tmp_path, 20)
    eval_dir = eval_folder(tmp_path)

    levers.main(["--checkpoints", str(first), str(second), "--average", "--eval", str(eval_dir), "--threads", "1"])

    rows = table_rows(capsys.readouterr().out)
    assert [row[0] for row in rows] == ["step0000010.ckpt", "step0000020.ckpt", "mean weights of 2 checkpoints"]
    midway = AutoencoderKL(**VAE).eval()
    midway.load_state_dict({key: (value + vae_b.state_dict()[key]) / 2 for key, value in vae_a.state_dict().items()})
    assert rows[2][1:] == expected_cells(midway, eval_dir)
    assert rows[2][1:] not in (rows[0][1:], rows[1][1:])  # the mean is a third model, not either checkpoint


def test_average_without_checkpoints_is_refused(capsys):
    with pytest.raises(SystemExit):
        levers.main(["--average"])
    assert "--average needs --checkpoints" in capsys.readouterr().err
