"""Upscale an image or a folder of images with a StableSR model (config: conf/upscale.yaml, logic: sr/commands/upscale_folder.py).

    python upscale.py input=<image or folder> output=<folder> model=stablesr_tiny scale=4 num_inference_steps=200 w=0.5 \
        color_fix=adain tile.size=64 tile.overlap=32 tile.batch_size=4 seed=42 scheduler=ddpm [overwrite=true] \
        [format=input] [max_memory=12GB] [debug=true]

Inputs: PNG, JPEG, WebP, TIFF, BMP (8/16-bit, grey, RGBA, EXIF orientation applied) through ``sr.io``. Outputs keep
the input's name (``format=png``: ``<stem>.png``; ``format=input``: the input's suffix). Settings are checked before
anything runs (one line per problem); inputs are never overwritten; an image whose estimated peak memory exceeds what
is available is skipped; a failing image is reported on one line and the folder goes on; the run ends with a summary
and exit code 1 if any image failed. See ``sr.commands.upscale_folder`` for the guarantees.
"""

import sys

from sr.errors import one_line_errors
from sr.reproducibility import configure_cpu, reproducible_requested

if __name__ == "__main__":  # before the imports below: importing the models runs tensor operations
    with one_line_errors("upscale"):
        configure_cpu(reproducible_requested(sys.argv[1:]))  # the CPU mode (sr/reproducibility.py)

import hydra
from omegaconf import DictConfig

from sr.commands.config import CONFIG_DIR, register_resolvers
from sr.commands.upscale_folder import run

register_resolvers()  # before @hydra.main composes: model presets use ${released:...}


@hydra.main(config_path=str(CONFIG_DIR), config_name="upscale", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors("upscale", cfg.get("debug", False)):
        code = run(cfg)
    sys.exit(code)


if __name__ == "__main__":
    main()
