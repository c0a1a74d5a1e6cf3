"""Stage-1 training: objective, frozen parts, checkpoints, resume, NaN guard, loggers and every experiment config."""

import csv
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict, read_write
from safetensors.torch import load_file
from wandb_offline import offline_run

from sr.commands.cfw_generate import build_generator, shard_ids
from sr.commands.tracking import wandb_run_identity
from sr.commands.train import (
    CONFIG_RECORD,
    PROVENANCE_RECORD,
    compose_train_config,
    train,
)
from sr.data.datamodule import EpochSeededSampler
from sr.io import read_image
from sr.pipelines import StableSRPipeline
from sr.pipelines.build import from_configs
from sr.training.callbacks import NonFiniteLossError
from sr.training.stage1 import Stage1Module, diffusion_target
from sr.utils.distributed import derived_seed

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
EXPERIMENTS = sorted(path.stem for path in (ROOT / "conf" / "experiment").glob("*.yaml"))
SD21_PARAMETERS_STAGE1 = 105_514_240  # docs/method.md#components: encoder 52,494,080 + SPADE 53,020,160

# A short stage-1 run of the tiny preset on 64 px crops: no validation, a checkpoint every step.
SHORT_RUN = [
    "experiment=stablesr_tiny", "model.pretrained=null", "logger=none", "trainer.val_check_interval=1000",
    "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "callbacks.model_checkpoint.every_n_train_steps=1", "~callbacks.progress_bar",
]


@pytest.fixture(scope="module")
def tiny_model() -> StableSRPipeline:
    with initialize_config_dir(CONF, version_base="1.3"):
        return instantiate(compose("train").model)


def test_building_a_model_leaves_the_global_rng_alone():
    """Weights come from a forked RNG seeded with the preset's seed: the run's seed still controls training draws."""
    with initialize_config_dir(CONF, version_base="1.3"):
        config = compose("train").model
    draws, weights = [], []
    for seed in (1, 2):
        L.seed_everything(seed)
        state = torch.get_rng_state()
        pipe = instantiate(config)
        assert torch.equal(torch.get_rng_state(), state)
        draws.append(torch.rand(4))
        weights.append(next(pipe.unet.parameters()).detach().clone())
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(weights[0], weights[1])  # the preset's own seed, not the run's


def _fixed_batch(size: int = 64) -> dict[str, torch.Tensor]:
    """Two GT crops of a bundled image and their x4 bicubic LR upsampled back, all in [-1, 1].

    (Two, because a single 8x8 latent reaches 1x1 inside the encoder, where GroupNorm needs more than one value.)
    """
    image = read_image(ROOT / "data/samples/train/astronaut.png").image[:3]
    gt = torch.stack([image[:, 64 : 64 + size, 96 : 96 + size], image[:, 128 : 128 + size, 32 : 32 + size]])
    lr = F.interpolate(gt, scale_factor=0.25, mode="bicubic", antialias=True)
    lq = F.interpolate(lr, size=(size, size), mode="bicubic").clamp(0, 1)
    return {"lq": lq * 2 - 1, "gt": gt * 2 - 1}


# ---------------------------------------------------------------------------------------------------- the objective
def test_diffusion_target_eps_and_v_match_the_formulas(tiny_model):
    scheduler = tiny_model.scheduler
    latents, noise, timesteps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    assert torch.equal(diffusion_target(scheduler, latents, noise, timesteps), noise)
    v_scheduler = type(scheduler).from_config(scheduler.config, prediction_type="v_prediction")
    alpha_bar = v_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    torch.testing.assert_close(diffusion_target(v_scheduler, latents, noise, timesteps), expected)
    with pytest.raises(ValueError, match="sample"):
        diffusion_target(type(scheduler).from_config(scheduler.config, prediction_type="sample"), latents, noise,
                         timesteps)


def test_batch_seeds_differ_across_batches_and_ranks_and_repeat():
    """Every seed of a run comes from ``derived_seed`` (stage 1's batches, the sampler's epochs, each crop)."""
    seeds = {derived_seed(23, rank, index) for rank in range(4) for index in range(50)}
    assert len(seeds) == 200 and all(0 <= seed < 2**63 for seed in seeds)
    assert derived_seed(23, 1, 7) == derived_seed(23, 1, 7)
    assert EpochSeededSampler(5, 23).augmentation_seed() == derived_seed(23, 0)


def test_stage1_loss_is_the_spec_objective(tiny_model):
    """The module's loss equals an independent re-computation of docs/method.md#stage-1-objective with the same random draws."""
    module = Stage1Module(tiny_model)
    model = module.model
    batch = _fixed_batch()
    loss = module.stage1_loss(batch["lq"], batch["gt"], torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        z_lr = model.scaling_factor * model.vae.encode(batch["lq"]).latent_dist.sample(generator)
        z_gt = model.scaling_factor * model.vae.encode(batch["gt"]).latent_dist.sample(generator)
        t = torch.randint(0, 1000, (2,), generator=generator)
        noise = torch.randn(z_gt.shape, generator=generator)
        alpha_bar = model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = alpha_bar.sqrt() * z_gt + (1 - alpha_bar).sqrt() * noise
        expected = (model.predict(x_t, t, z_lr) - noise).square().mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_overfits_a_fixed_batch_and_touches_only_the_stage1_weights(tiny_model, steps: int = 50):
    """A fixed batch with fixed noise, timesteps and posterior samples: the loss must fall (memorisation)."""
    module = Stage1Module(tiny_model, lr=1e-3)
    model = module.model
    frozen = ("vae.", "cfw.", "unet.", "prompt_embedding.")
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(frozen)}
    trainable_before = [p.detach().clone() for p in model.parameters_of("stage1")]
    optimizer = module.configure_optimizers()
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == {
        id(p) for p in model.parameters_of("stage1")
    }
    batch, losses = _fixed_batch(), []
    for step in range(steps):
        loss = module.stage1_loss(batch["lq"], batch["gt"], torch.Generator().manual_seed(0))
        loss.backward()
        if step == 0:
            for name, parameter in model.named_parameters():
                if name.startswith(frozen):
                    assert parameter.grad is None and not parameter.requires_grad, name
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last, losses)
    frozen_after = model.state_dict()
    assert all(torch.equal(frozen_after[k], v) for k, v in frozen_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(trainable_before, model.parameters_of("stage1")))


def test_sd21_stage1_checkpoint_holds_exactly_the_spec_parameter_count():
    """Built on the meta device: the checkpoint keeps 376 tensors = 105,514,240 fp32 numbers (422 MB)."""
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", overrides=["model=sd21_base"]).model, resolve=True)
    with torch.device("meta"):
        pipe = from_configs(cfg["unet"], cfg["vae"], cfg["encoder"], cfg["cfw"], cfg["scheduler"], cfg["sft"],
                            cfg["prompt_length"])
        module = Stage1Module(pipe)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    kept = checkpoint["state_dict"]
    assert len(kept) == 200 + 176
    assert sum(t.numel() for t in kept.values()) == SD21_PARAMETERS_STAGE1
    assert all(k.startswith(("model.time_aware_encoder.", "model.sft.")) for k in kept)


# ---------------------------------------------------------------------------------------------------- full runs
class KillAtStep(L.Callback):
    """Simulates a crash: raises when training reaches ``step`` (after the checkpoint of the step before)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_killed_and_resumed_run_matches_an_uninterrupted_run(tmp_path):
    steps = ["trainer.max_steps=2"]
    straight = train(compose_train_config(SHORT_RUN + steps, tmp_path / "straight"))
    crash = ["+callbacks.kill._target_=test_train.KillAtStep", "+callbacks.kill.step=1"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_train_config(SHORT_RUN + steps + crash, tmp_path / "crashed"))
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert not (tmp_path / "crashed" / "stage1.safetensors").exists()  # nothing exported from a failed run
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 1
    module = straight["module"]
    assert set(checkpoint["state_dict"]) == module.trainable_keys()
    assert len(checkpoint["state_dict"]) == len(module.model.parameters_of("stage1"))
    assert not any(k.startswith(("model.vae.", "model.cfw.")) for k in checkpoint["state_dict"])
    assert len(checkpoint["optimizer_states"][0]["state"]) == len(checkpoint["state_dict"])

    resumed = train(compose_train_config(SHORT_RUN + steps + [f"ckpt_path={last}"], tmp_path / "resumed"))
    assert resumed["trainer"].global_step == straight["trainer"].global_step == 2
    reference = load_file(tmp_path / "straight" / "stage1.safetensors")
    assert_same_weights(tmp_path / "resumed", reference)
    # step 2 changed the weights, so the equality above is not trivial
    at_step_1 = {k.replace("model.time_aware_encoder.", "encoder."): v for k, v in checkpoint["state_dict"].items()
                 if k.startswith("model.time_aware_encoder.")}
    assert any(not torch.equal(tensor, reference[key]) for key, tensor in at_step_1.items())
    assert (tmp_path / "straight" / CONFIG_RECORD).is_file() and (tmp_path / "straight" / PROVENANCE_RECORD).is_file()


@pytest.fixture(scope="module")
def straight_three_steps(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The exported weights of an uninterrupted 3-step run (the reference of the resume tests below)."""
    run_dir = tmp_path_factory.mktemp("straight3")
    train(compose_train_config(SHORT_RUN + ["trainer.max_steps=3"], run_dir))
    return load_file(run_dir / "stage1.safetensors")


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 1e-6
                        ) -> None:
    """The same keys, every tensor within ``atol`` (the resume tests' equality, here and in the full-size and
    multi-node tests)."""
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(actual[key], tensor, rtol=0, atol=atol, msg=key)


def assert_same_weights(run_dir: Path, reference: dict[str, torch.Tensor]) -> None:
    assert_same_tensors(load_file(run_dir / "stage1.safetensors"), reference)


class SignalAtStep(L.Callback):
    """Sends this process the preemption signal while training batch ``step`` runs (as SLURM does before a limit)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR2)


def test_requeue_signal_saves_last_ckpt_and_the_requeued_job_resumes_by_itself(tmp_path, straight_three_steps):
    """submitit's handler (stand-in: records the call, then exits as submitit does after ``scontrol requeue``) runs
    only after the batch in flight has ended and ``last.ckpt`` holds it; the same job started again (no ckpt_path)
    continues from there and ends with the weights of an uninterrupted run."""
    calls = []

    def submitit_handler(signum, frame):
        calls.append(signum)
        raise SystemExit(-1)

    submitit_handler.__module__ = "submitit.core.job_environment"
    sparse = SHORT_RUN + ["trainer.max_steps=3", "callbacks.model_checkpoint.every_n_train_steps=100"]
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SystemExit):
            signal_at_1 = ["+callbacks.signal._target_=test_train.SignalAtStep", "+callbacks.signal.step=1"]
            train(compose_train_config(sparse + signal_at_1, tmp_path))
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # handed back to submitit
        checkpoints = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
        assert checkpoints == ["last.ckpt"]  # no periodic one: this is the requeue save, after batch 1 ended
        assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
        requeued = train(compose_train_config(sparse, tmp_path))  # same job dir, no ckpt_path
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert requeued["trainer"].global_step == 3
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert_same_weights(tmp_path, straight_three_steps)


def test_extending_a_finished_run_in_its_own_dir_equals_a_longer_run(tmp_path, straight_three_steps):
    """1 step (last.ckpt saved after that final batch, mid-epoch), then max_steps=3 in the same run dir: its own
    last.ckpt is picked up, stage1.safetensors is replaced, and the weights equal 3 uninterrupted steps."""
    sparse = SHORT_RUN + ["callbacks.model_checkpoint.every_n_train_steps=100"]
    train(compose_train_config(sparse + ["trainer.max_steps=1"], tmp_path))
    first_export = load_file(tmp_path / "stage1.safetensors")
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    extended = train(compose_train_config(sparse + ["trainer.max_steps=3"], tmp_path))
    assert extended["trainer"].global_step == 3
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt
    assert_same_weights(tmp_path, straight_three_steps)
    assert any(not torch.equal(first_export[key], straight_three_steps[key]) for key in first_export)


def test_every_sweep_job_gets_its_own_wandb_run_with_its_overrides(tmp_path, monkeypatch):
    """Two jobs in one process (as Hydra's basic launcher runs a sweep): two W&B runs, each named and configured
    from its own overrides and job number, files inside each job's run dir."""
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.delenv("WANDB_DIR", raising=False)  # the run dir decides (conftest points WANDB_DIR elsewhere)
    for job_num, lr in enumerate(("1e-4", "3e-4")):
        overrides = SHORT_RUN + ["logger=wandb", "trainer.max_steps=1", f"module.lr={lr}"]
        cfg = compose_train_config(overrides, tmp_path / "sweep" / str(job_num))
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.job.num = job_num
        HydraConfig().set_config(cfg)
        train(cfg)
    for job_num, lr in enumerate(("1e-4", "3e-4")):
        runs = list((tmp_path / "sweep" / str(job_num) / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        run = offline_run(runs[0])
        identity = wandb_run_identity(tmp_path / "sweep" / str(job_num), "stablesr_tiny", [], job_num)
        assert run["id"] == identity["id"]  # the W&B run id derives from the run dir
        assert run["name"].startswith(f"stablesr_tiny#{job_num} ") and f"module.lr={lr}" in run["name"]
        provenance = run["config"]["provenance"]
        assert provenance["job_num"] == job_num and f"module.lr={lr}" in provenance["overrides"]
        assert run["config"]["module"]["lr"] == float(lr)


def test_wandb_run_names_and_groups():
    sweep_job = wandb_run_identity(Path("/r/train/x/multiruns/2026-01-01_00-00-00/1"), "stablesr_tiny",
                                   ["experiment=stablesr_tiny", "module.lr=3e-4", "hydra/launcher=slurm"], 1)
    assert sweep_job["name"] == "stablesr_tiny#1 module.lr=3e-4"
    assert sweep_job["group"] == "stablesr_tiny/2026-01-01_00-00-00"
    single = wandb_run_identity(Path("/r/train/x/runs/2026-01-01_00-00-00"), "stablesr_tiny", ["trainer=cpu"], None)
    assert (single["name"], single["group"]) == ("stablesr_tiny 2026-01-01_00-00-00", "stablesr_tiny")
    assert single["id"] != sweep_job["id"] and len(single["id"]) == 24


class PoisonLoss(L.Callback):
    """Makes the training loss non-finite from ``step`` on (a NaN injected into one trainable weight)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(iter(pl_module.model.time_aware_encoder.parameters())).fill_(float("nan"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    poison = ["+callbacks.poison._target_=test_train.PoisonLoss", "+callbacks.poison.step=1", "trainer.max_steps=3"]
    with pytest.raises(NonFiniteLossError, match="loss is nan at global step 2 .*last.ckpt"):
        train(compose_train_config(SHORT_RUN + poison, tmp_path))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert not (tmp_path / "stage1.safetensors").exists()


def test_csv_logger_writes_metrics_and_validation_grids(tmp_path):
    overrides = SHORT_RUN + ["logger=csv", "trainer.max_steps=2", "trainer.val_check_interval=2",
                             "trainer.limit_val_batches=1", "module.validation.num_inference_steps=2",
                             "trainer.log_every_n_steps=1"]
    result = train(compose_train_config(overrides, tmp_path))
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    psnr = [float(r["val/psnr_y"]) for r in rows if r.get("val/psnr_y")]
    assert psnr and 0 < psnr[0] < 80
    grids = list((tmp_path / "csv" / "images").glob("val_*_step*.png"))
    assert grids
    grid = read_image(grids[0]).image
    assert grid.shape[-1] == 3 * grid.shape[-2]  # LR | SR | HR side by side
    hparams = (tmp_path / "csv" / "hparams.yaml").read_text()
    assert "git_revision" in hparams and "stablesr_tiny" in hparams
    assert result["metrics"]["val/ssim_y"] <= 1


def test_wandb_logger_runs_offline_and_writes_its_files(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    overrides = SHORT_RUN + ["logger=wandb", "trainer.max_steps=1", "trainer.log_every_n_steps=1"]
    cfg = compose_train_config(overrides, tmp_path)
    assert cfg.logger.wandb.mode == "offline"
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "no offline run data to sync"


# ---------------------------------------------------------------------------------------------------- configs
def _smoke_config(experiment: str, output_dir: Path):
    """The CPU-sized stand-ins: sd21 recipes get the tiny model and the whole data node of their ``*_tiny`` sibling."""
    overrides = [f"experiment={experiment}", "trainer=cpu", "+trainer.fast_dev_run=true", "logger=none",
                 "model.pretrained=null", "~callbacks.progress_bar"]
    sibling_data = None
    if "sd21" in experiment:
        sibling = experiment.split("_sd21")[0] + "_tiny"
        sibling_data = compose_train_config([f"experiment={sibling}"], output_dir).data
        overrides += ["model=tiny"]
    cfg = compose_train_config(overrides, output_dir)
    with open_dict(cfg):
        if sibling_data is not None:
            cfg.data = sibling_data
            cfg.trainer.accumulate_grad_batches = 1
        if "validation" in cfg.module:
            cfg.module.validation.num_inference_steps = 1
    return cfg


@pytest.fixture(scope="module")
def generated_cfw_data(tmp_path_factory) -> Path:
    """Two CFW training samples written by the real generator (tiny preset, random weights, 2 sampling steps)."""
    out = tmp_path_factory.mktemp("cfw_data")
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("cfw_generate", overrides=["steps=2", "num_samples=2", f"out={out}", "device=cpu"])
    build_generator(cfg).run(shard_ids(cfg.num_samples, 0, 1), out)
    return out


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_fast_dev_run_on_cpu(experiment, tmp_path, request):
    cfg = _smoke_config(experiment, tmp_path)
    if "cfw" in experiment:
        with open_dict(cfg):
            cfg.data.root = str(request.getfixturevalue("generated_cfw_data"))
            cfg.module.loss.perceptual = "stand_in"  # the real LPIPS-VGG backbone cannot be downloaded here
    result = train(cfg)
    assert result["trainer"].state.finished
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in result["metrics"].values())


def test_released_recipes_are_pinned():
    with initialize_config_dir(CONF, version_base="1.3"):
        base = compose("train", overrides=["experiment=stablesr_sd21_base"])
        v768 = compose("train", overrides=["experiment=stablesr_sd21_768v"])
    assert (base.module.lr, base.module.weight_decay, base.seed) == (5e-5, 0.01, 23)
    assert (base.data.batch_size, base.data.crop_size, base.trainer.accumulate_grad_batches) == (6, 512, 4)
    assert base.trainer.precision == "32-true" and base.trainer.gradient_clip_val is None
    assert base.model.scheduler.prediction_type == "epsilon" and base.model.name == "sd21_base"
    assert base.callbacks.model_checkpoint.every_n_train_steps == 1500
    assert base.data.degradation.gt_sharpener is not None
    assert (v768.data.batch_size, v768.data.crop_size, v768.callbacks.model_checkpoint.every_n_train_steps) == (3, 768, 1000)
    assert v768.model.scheduler.prediction_type == "v_prediction" and v768.module.lr == 5e-5
    assert v768.data.degradation.get("gt_sharpener") is None


def test_slurm_launcher_and_strategies_compose():
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=multinode", "trainer.num_nodes=3"],
                      return_hydra_config=True)
        fsdp = compose("train", overrides=["trainer=fsdp"])
    assert cfg.hydra.launcher.nodes == 3 and cfg.hydra.launcher.tasks_per_node == 8
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy")
    assert fsdp.trainer.strategy.use_orig_params is True
    assert os.path.basename(cfg.hydra.sweep.dir) != ""


def test_csv_logger_continues_a_resumed_runs_metrics(tmp_path):
    import csv

    from sr.training.loggers import ResumableCSVLogger

    first = ResumableCSVLogger(tmp_path, name="csv", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.save()
    resumed = ResumableCSVLogger(tmp_path, name="csv", version="")  # a new process on the same run dir
    resumed.log_metrics({"train/loss": 0.5}, step=1)
    resumed.log_metrics({"train/loss": 0.25, "val/psnr": 20.0}, step=2)
    resumed.save()
    with open(tmp_path / "csv" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["step"], row["train/loss"], row["val/psnr"]) for row in rows] == [
        ("0", "1.0", ""), ("1", "0.5", ""), ("2", "0.25", "20.0")]
