"""The sampler's speed against the official StableSR code, in default and in reproducible mode (not a test).

    .venv/bin/python benchmarks/official_speed.py --official <checkout> [--side 96] [--steps 2] [--rounds 2]

``<checkout>`` (or ``$STABLESR_OFFICIAL``): a checkout of https://github.com/IceClear/StableSR, anywhere outside this
repository (it is not part of the project and must not be committed). Only its sampling chain is run; the modules
it imports that the chain never calls (taming, basicsr, open_clip, kornia, sklearn, Lightning's old
``rank_zero_only``) are replaced by empty stand-ins, and its VAE and text encoder by ``torch.nn.Identity``.

The chain, on one random full-size StableSR-512 (``configs/stableSRNew/v2-finetune_text_T_512.yaml``, seed 0): a
``--side`` x ``--side`` random LR latent, ``x_T`` = the LR latent noised to t = 999, ``--steps`` respaced DDPM steps,
tiles of 64 latent pixels overlapping by 32 (96: 2 x 2 tiles), float32, a random 77 x 1024 text context. The
official rows run ``LatentDiffusionSRTextWT.sample_canvas`` after the schedule set-up of its
``scripts/sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py`` (one tile per UNet call, its default ``--n_samples 1``);
ours run ``sr.sampling.denoise`` on ``model=stablesr_official model.pretrained=null`` with the official UNet and
time-aware encoder weights converted by ``sr.commands.convert`` (official respacing and tile weights; our default tile
batch). Each row is a fresh process, rows run in turn ``--rounds`` times (other work on the machine slows each alike),
and a row's time is its fastest round. Printed: seconds, the ratio to the official time, and the largest difference of
our final latent from the official one (same weights and inputs; measured 0.17 on a 64 x 64 latent, 2 steps: not yet
explained, so the timing compares the same work, not yet proven bit-equivalent chains).
"""

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr.reproducibility import (
    SWITCH_VARIABLE,
    configure_cpu,
    reproducible_pins,
    reproducible_requested,
    subprocess_environment,
)

OFFICIAL_VARIABLE = "STABLESR_OFFICIAL"
OFFICIAL_CONFIG = "configs/stableSRNew/v2-finetune_text_T_512.yaml"
OFFICIAL_SCRIPT = "scripts/sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py"
STUBBED = ("taming", "sklearn", "basicsr", "open_clip", "kornia", "pytorch_lightning.utilities.distributed")
TILE, OVERLAP = 64, 32


class _StandIn(types.ModuleType):
    """A module the official chain imports but never calls: any name is a no-op (an identity decorator)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: args[0] if len(args) == 1 and callable(args[0]) else None


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if any(name == root or name.startswith(root + ".") for root in STUBBED):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StandIn(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def official_model(official: Path):
    """The official ``LatentDiffusionSRTextWT`` of ``OFFICIAL_CONFIG`` (VAE and text encoder: identities), seed 0."""
    import torch
    from omegaconf import OmegaConf

    sys.meta_path.insert(0, _StandInFinder())
    sys.path.insert(0, str(official))
    from ldm.util import instantiate_from_config

    config = OmegaConf.load(official / OFFICIAL_CONFIG)
    config.model.params.first_stage_config = {"target": "torch.nn.Identity"}
    config.model.params.cond_stage_config = {"target": "torch.nn.Identity"}
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    model.configs = config  # as the official script sets it: its tile weights read the channel count there
    return model


def respace_like_the_official_script(model, official: Path, steps: int) -> None:
    """The schedule set-up of ``OFFICIAL_SCRIPT``'s ``main`` (linear betas, ``space_timesteps`` respacing)."""
    import numpy as np

    sys.path.insert(0, str((official / OFFICIAL_SCRIPT).parent))  # the script imports its neighbours
    spec = importlib.util.spec_from_file_location("official_script", official / OFFICIAL_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model.register_schedule(given_betas=None, beta_schedule="linear", timesteps=1000, linear_start=0.00085,
                            linear_end=0.0120, cosine_s=8e-3)
    kept = sorted(set(script.space_timesteps(1000, [steps])))
    betas, previous = [], 1.0
    for index in kept:  # the betas between the kept timesteps
        betas.append(float(1 - model.alphas_cumprod[index] / previous))
        previous = float(model.alphas_cumprod[index])
    model.register_schedule(given_betas=np.array(betas), timesteps=len(betas))
    model.num_timesteps = 1000
    model.ori_timesteps = kept


def make_inputs(args: argparse.Namespace) -> None:
    """The official model's UNet + time-aware encoder weights and the chain's inputs, into ``args.inputs``."""
    import torch

    model = official_model(args.official)
    weights = {key: value for key, value in model.state_dict().items()
               if key.startswith(("model.diffusion_model.", "structcond_stage_model."))}
    generator = torch.Generator().manual_seed(1)
    z_lr = torch.randn(1, 4, args.side, args.side, generator=generator)
    noise = torch.randn(z_lr.shape, generator=generator)
    alpha = model.alphas_cumprod[999]
    torch.save({"weights": weights, "z_lr": z_lr, "x_T": alpha.sqrt() * z_lr + (1 - alpha).sqrt() * noise,
                "context": torch.randn(1, 77, 1024, generator=generator)}, args.inputs)


def run_official(args: argparse.Namespace, inputs: dict):
    import torch

    model = official_model(args.official)
    model.load_state_dict(inputs["weights"], strict=False)
    respace_like_the_official_script(model, args.official, args.steps)
    started = time.perf_counter()
    with torch.no_grad():
        latent = model.sample_canvas(cond=inputs["context"], struct_cond=inputs["z_lr"], batch_size=1,
                                     timesteps=args.steps, time_replace=args.steps, x_T=inputs["x_T"],
                                     tile_size=TILE, tile_overlap=OVERLAP, batch_size_sample=1, verbose=False)
    return latent, time.perf_counter() - started


def run_ours(args: argparse.Namespace, inputs: dict):
    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from hydra.utils import instantiate

    from sr.commands.config import compose
    from sr.commands.convert import Architecture, split_sft
    from sr.sampling import denoise
    from sr.sampling.respacing import set_sampling_timesteps

    cfg = compose("upscale", ["input=unset", "output=unset", "model=stablesr_official", "model.pretrained=null"])
    model = instantiate(cfg.model).model
    weights = inputs["weights"]
    unet, sft = split_sft(convert_ldm_unet_checkpoint(weights, Architecture.from_preset("sd21_base").unet))
    encoder = {key.removeprefix("structcond_stage_model."): value for key, value in weights.items()
               if key.startswith("structcond_stage_model.")}
    for module, state in ((model.unet, unet), (model.sft, sft), (model.time_aware_encoder, encoder)):
        module.load_state_dict(state, strict=True)
    scheduler = instantiate(cfg.scheduler)
    set_sampling_timesteps(scheduler, args.steps, "official")
    context = inputs["context"]
    started = time.perf_counter()
    with torch.no_grad():
        latent, _ = denoise(lambda x, t, z: model.predict(x, t, z, context), scheduler, inputs["z_lr"], TILE, OVERLAP,
                            cfg.tile.batch_size, "lr", torch.Generator().manual_seed(0), x_t=inputs["x_T"].clone(),
                            tile_weighting="official")
    return latent, time.perf_counter() - started


def worker(args: argparse.Namespace) -> None:
    configure_cpu(reproducible_requested())  # as the entry points do, before the models are imported
    import numpy as np
    import torch

    if args.worker == "inputs":
        return make_inputs(args)
    inputs = torch.load(args.inputs, weights_only=True, mmap=True)
    latent, seconds = (run_official if args.worker == "official" else run_ours)(args, inputs)
    np.save(args.output, latent.numpy())
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))


def checkout_problem(official: Path | None) -> str | None:
    """One line when ``official`` is not a checkout of the official code, else None."""
    if official is None:
        return (f"no official StableSR checkout given: clone https://github.com/IceClear/StableSR outside this "
                f"repository and pass --official <dir> or {OFFICIAL_VARIABLE}=<dir>")
    for needed in (OFFICIAL_CONFIG, OFFICIAL_SCRIPT, "ldm/models/diffusion/ddpm.py"):
        if not (official / needed).is_file():
            return (f"{official} is not a checkout of https://github.com/IceClear/StableSR ({needed} missing): pass "
                    f"--official <dir> or {OFFICIAL_VARIABLE}=<dir>")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    environment_official = os.environ.get(OFFICIAL_VARIABLE)
    parser.add_argument("--official", type=Path, default=Path(environment_official) if environment_official else None,
                        help=f"checkout of github.com/IceClear/StableSR (default: ${OFFICIAL_VARIABLE})")
    parser.add_argument("--side", type=int, default=96, help="side of the latent (96: 2 x 2 tiles of 64)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=("inputs", "official", "ours"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if problem := checkout_problem(args.official):
        sys.exit(f"official_speed: error: {problem}")
    args.official = args.official.resolve()
    if args.worker is not None:
        return worker(args)
    import numpy as np

    base = {key: value for key, value in os.environ.items()
            if key not in reproducible_pins() and key != SWITCH_VARIABLE}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    default, reproducible = subprocess_environment(False, base), subprocess_environment(True, base)
    rows = [("official code", "official", default), ("ours, default mode", "ours", default),
            ("ours, reproducible mode", "ours", reproducible)]
    common = ["--official", str(args.official), "--side", str(args.side), "--steps", str(args.steps)]
    seconds, latents = {name: [] for name, _, _ in rows}, {}
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "inputs.pt"
        subprocess.run([sys.executable, __file__, "--worker", "inputs", "--inputs", str(inputs), *common], check=True,
                       env=default, cwd=REPO, capture_output=True)
        for _ in range(args.rounds):
            for name, kind, environment in rows:
                output = Path(folder) / f"{kind}.npy"
                result = subprocess.run([sys.executable, __file__, "--worker", kind, "--inputs", str(inputs),
                                         "--output", str(output), *common], check=False, env=environment, cwd=REPO,
                                        capture_output=True, text=True)
                if result.returncode != 0:
                    sys.exit(f"official_speed: {name} failed:\n{result.stderr[-3000:]}")
                seconds[name].append(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])
                latents[name] = np.load(output)
    fastest = {name: min(times) for name, times in seconds.items()}
    official = fastest["official code"]
    tiles = ((args.side - OVERLAP) // (TILE - OVERLAP)) ** 2
    print(f"{args.side} x {args.side} latent, {tiles} tiles of {TILE} (overlap {OVERLAP}), {args.steps} steps, "
          f"float32, {args.rounds} rounds (fastest shown)\n")
    print("| run | seconds | time / official | max abs latent difference from official |")
    print("|---|---|---|---|")
    for name, _, _ in rows:
        difference = float(np.abs(latents[name] - latents["official code"]).max())
        print(f"| {name} | {fastest[name]:.1f} | {fastest[name] / official:.2f} | {difference:.1e} |")


if __name__ == "__main__":
    main()
