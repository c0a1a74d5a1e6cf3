"""Upscale a paired test set with a StableSR model and score it (config: conf/eval.yaml, logic: sr/commands/evaluation.py).

    python eval.py model=sd21_base ckpt=<stage1.safetensors> cfw_ckpt=<cfw.safetensors> data=realsr w=0.5 \
        tile.overlap=32
    python eval.py -m model=stablesr_tiny data=samples_heldout w=0,0.25,0.5,0.75,1 tile.overlap=0,16,32,48 \
        [hydra/launcher=slurm] [report_dir=experiments/<name>]
    python eval.py rescore=true hydra.run.dir=<run dir> [metrics=[psnr_y,ssim_y,lpips_alex]]

Each run dir gets images/<name>.png, fingerprint.json, timings.json and scores.json, and the no-diffusion baselines
(`baselines`: bicubic, lr_latent) scored beside it under baselines/; when the run or sweep ends its report
(table.md, table.csv, plots/, strips/) is written to <run or sweep dir>/report (or report_dir). Cached images
and scores are reused only when their fingerprint (weights, sampling settings, seed, test set, metric conventions)
matches; a run dir holding finished results of other settings is refused. A failed run is recorded in its
scores.json with its root cause and the sweep goes on; the command then exits with code 1, naming the failed,
unfinished and refused runs.
"""

import sys

from sr.errors import one_line_errors
from sr.reproducibility import configure_cpu, reproducible_requested

if __name__ == "__main__":  # before the imports below: importing the models runs tensor operations
    with one_line_errors("eval"):
        configure_cpu(reproducible_requested(sys.argv[1:]))  # the CPU mode (sr/reproducibility.py)

import hydra
from omegaconf import DictConfig

from sr.commands.config import CONFIG_DIR, register_resolvers
from sr.commands.evaluation import evaluate
from sr.utils.provenance import pin_command_line


@hydra.main(config_path=str(CONFIG_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> str:
    with one_line_errors("eval", cfg.get("debug", False)):
        return evaluate(cfg)


register_resolvers()  # before @hydra.main composes: conf/paths uses ${oc.env:PROJECT_ROOT}

if __name__ == "__main__":
    pin_command_line()  # scores.json / provenance.json of SLURM jobs record this command
    main()
