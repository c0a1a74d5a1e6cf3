"""Train a StableSR stage: ``python train.py experiment=<name> [overrides]`` (configs in conf/, entry conf/train.yaml).

Examples::

    python train.py experiment=stablesr_tiny                         # stage 1 on CPU (bundled samples)
    python train.py experiment=stablesr_sd21_base trainer=ddp trainer.devices=8
    python train.py experiment=stablesr_tiny ckpt_path=<run dir>/checkpoints/last.ckpt   # resume
    python train.py -m experiment=stablesr_tiny module.lr=1e-5,5e-5 trainer.max_steps=2 # sweep

Settings (seed, ckpt_path, accelerator, output folder) are checked before anything is built; an error ends the run
with one line (``debug=true`` or ``HYDRA_FULL_ERROR=1``: the traceback).
"""

import sys

from sr.errors import one_line_errors
from sr.reproducibility import configure_cpu, reproducible_requested

if __name__ == "__main__":  # before the imports below: importing the models runs tensor operations
    with one_line_errors("train"):
        configure_cpu(reproducible_requested(sys.argv[1:]))  # the CPU mode (sr/reproducibility.py)

import hydra
from omegaconf import DictConfig

from sr.commands.config import CONFIG_DIR, register_resolvers
from sr.commands.launch import child_rank_argv
from sr.commands.train import train
from sr.utils.provenance import pin_command_line
from sr.validation import validate_train


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    with one_line_errors("train", cfg.get("debug", False)):
        validate_train(cfg)
        train(cfg)


register_resolvers()  # before @hydra.main composes: conf/paths uses ${oc.env:PROJECT_ROOT}

if __name__ == "__main__":
    pin_command_line()  # scores.json / provenance.json of SLURM jobs record this command
    sys.argv = child_rank_argv(sys.argv)  # a DDP rank Lightning started runs rank 0's job, not the whole command
    main()
