"""``python -m sr.commands.app``: a local web demo (Gradio, the ``[app]`` extra) that upscales one uploaded image.

    python -m sr.commands.app [--model stablesr_tiny | <preset> | <pipeline folder>] [--host 127.0.0.1] [--port 7860]
                     [--max-memory 12GB] [--device cpu]

The page takes an image and the settings of ``upscale.py`` (scale, w, steps, seed, colour fix, latent tile size and
overlap), shows the result beside the input on a before/after slider (the input enlarged nearest-neighbour) with a
progress bar over the sampling steps, and offers the PNG for download. Each request is the ``upscale.py`` run with
the same settings: its config is composed from ``conf/upscale.yaml`` with the same overrides, validated by
``sr.validation``, checked by the memory guard and sampled and written by ``sr.commands.upscale_folder`` (the model is
built once, at start), so the PNG is byte-identical to ``python upscale.py model=<preset> input=<image> ...``.

One job runs at a time; further requests wait in the queue. A file that is not a readable image, settings out of
range and an image whose estimated peak memory exceeds what is available (or ``--max-memory``) each give their one
line as an error in the page, and the server goes on serving. ``--model``: a model preset (``conf/model``) or a
pipeline folder (``save_pretrained``, the converter's output), loaded with the ``stablesr_tiny`` preset's defaults,
as ``upscale.py model=stablesr_tiny model.pretrained=<folder>`` does. Listens on 127.0.0.1 unless ``--host`` says
otherwise.
"""

from sr.errors import one_line_errors
from sr.reproducibility import configure_cpu, reproducible_requested

if __name__ == "__main__":  # before the imports below: importing the models runs tensor operations
    with one_line_errors("sr.commands.app"):
        configure_cpu(reproducible_requested())  # STABLESR_REPRODUCIBLE: the mode of upscale.py, so the same bytes

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from sr.commands.config import RELEASED_MODEL, build_model, compose
from sr.commands.upscale_folder import bind_upscale, memory_problem, output_path, upscale_file
from sr.errors import ConfigError, describe
from sr.io import ImageReadError
from sr.pipelines import StableSRPipeline
from sr.sampling.settings import COLOR_FIXES
from sr.validation import parse_memory, validate_upscale

DEFAULT_MODEL = RELEASED_MODEL


def model_overrides(model: str) -> list[str]:
    """``upscale.py`` overrides that select ``model``: a preset name, or a pipeline folder on the default preset."""
    folder = Path(model)
    if folder.is_dir():
        return [f"model={DEFAULT_MODEL}", f"model.pretrained={folder.resolve()}"]
    return [f"model={model}"]


def _number(value: float) -> int | float:
    """A page's number as the command line would write it: ``4``, not ``4.0``."""
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class Request:
    """One upscale asked for by the page (the ``upscale.py`` keys of the same names)."""

    scale: float
    w: float
    num_inference_steps: int
    seed: int
    color_fix: str
    tile_size: int
    tile_overlap: int

    def overrides(self) -> list[str]:
        return [f"scale={_number(self.scale)}", f"w={_number(self.w)}", f"num_inference_steps={int(self.num_inference_steps)}",
                f"seed={int(self.seed)}", f"color_fix={self.color_fix}", f"tile.size={int(self.tile_size)}",
                f"tile.overlap={int(self.tile_overlap)}"]


class Upscaler:
    """The model built once and the ``upscale.py`` path for each request; outputs go below ``work_dir``."""

    def __init__(self, model: str, work_dir: Path, device: str = "cpu", max_memory: str | None = None):
        self.base = model_overrides(model) + [f"device={device}", "progress=true"]
        if max_memory is not None:
            self.base.append(f"max_memory={max_memory}")
        self.work_dir = work_dir
        self.defaults = compose("upscale", self.base + ["input=-", "output=-"])
        self.pipe: StableSRPipeline = build_model(self.defaults.model)
        self.jobs = 0

    def config(self, source: Path, output: Path, request: Request):
        """The run config ``upscale.py`` composes for these settings; raises ``ConfigError`` when they cannot work."""
        cfg = compose("upscale", self.base + [f"input={source}", f"output={output}"] + request.overrides())
        validate_upscale(cfg)
        return cfg

    def upscale(self, source: Path, request: Request) -> tuple[Path, Path]:
        """Upscale ``source``; returns ``(before, after)``: the input enlarged nearest-neighbour to the output size
        and the output PNG. Raises ``ValueError`` with one line naming the uploaded file for anything that failed."""
        self.jobs += 1
        output = self.work_dir / f"job-{self.jobs}"
        cfg = self.config(source, output, request)
        output.mkdir(parents=True)
        limit = parse_memory(cfg.get("max_memory"))
        pipe, resolved, upscale = bind_upscale(cfg, self.pipe)
        try:
            if problem := memory_problem(pipe, resolved, source, limit, cfg.max_pixels, cfg.device):
                raise ValueError(problem.replace(str(source), source.name, 1))
            after = upscale_file(upscale, source, output_path(source, output, cfg.format), cfg.seed,
                                 cfg.max_pixels, overwrite=False)
        except ImageReadError as error:
            raise ValueError(f"{source.name}: {error.reason}") from None
        with Image.open(after) as result, Image.open(source) as loaded:
            before = loaded.convert("RGB").resize(result.size, Image.Resampling.NEAREST)
        before_path = output / f"{source.stem}.before.png"
        before.save(before_path)
        return before_path, after


def build_demo(upscaler: Upscaler) -> gr.Blocks:
    """The page: inputs, the run button, the before/after slider, the download and the status line."""
    defaults = upscaler.defaults
    settings = upscaler.pipe.sampling_settings(defaults)   # the page starts from what upscale.py would sample with

    # ``progress``: Gradio shows the tqdm bars of the call (the sampling steps) while it runs
    def run(upload, scale, w, num_inference_steps, seed, color_fix, tile_size, tile_overlap,
            progress=gr.Progress(track_tqdm=True)):
        if upload is None:
            raise gr.Error("upload an image first")
        request = Request(scale, w, num_inference_steps, seed, color_fix, tile_size, tile_overlap)
        try:
            before, after = upscaler.upscale(Path(upload), request)
        except (ValueError, ConfigError) as error:
            raise gr.Error(str(error)) from None
        except Exception as error:  # noqa: BLE001 - any failure of one request is shown; the server goes on
            raise gr.Error(f"{Path(upload).name}: {describe(error)}") from None
        with Image.open(after) as result:
            size = f"{result.width}x{result.height}"
        return (str(before), str(after)), str(after), f"{after.name}: {size}"

    with gr.Blocks(title="StableSR", delete_cache=(3600, 3600), analytics_enabled=False) as demo:
        gr.Markdown(f"# StableSR\nModel: `{defaults.model.name}`. Upload an image, choose the settings, upscale.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image", type="filepath", elem_id="upload")
                button = gr.Button("Upscale", variant="primary", elem_id="run")
                with gr.Row():
                    scale = gr.Number(value=settings.scale, label="scale", minimum=1, elem_id="scale")
                    seed = gr.Number(value=defaults.seed, precision=0, label="seed", elem_id="seed")
                w = gr.Slider(0, 1, value=settings.w, step=0.05, label="w (CFW: 0 quality, 1 fidelity)", elem_id="w")
                num_inference_steps = gr.Slider(1, 1000, value=settings.num_inference_steps, step=1,
                                                label="num_inference_steps", elem_id="num-inference-steps")
                color_fix = gr.Radio(list(COLOR_FIXES), value=settings.color_fix, label="colour fix")
                with gr.Row():
                    tile_size = gr.Number(value=settings.tile.size, precision=0, label="latent tile size",
                                          elem_id="tile-size")
                    tile_overlap = gr.Number(value=settings.tile.overlap, precision=0,
                                             label="latent tile overlap", elem_id="tile-overlap")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="before (nearest) / after", type="filepath", format="png",
                                        elem_id="compare")
                download = gr.File(label="download", elem_id="download")
                status = gr.Markdown(elem_id="status")
        button.click(run, [upload, scale, w, num_inference_steps, seed, color_fix, tile_size, tile_overlap],
                     [slider, download, status])
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sr.commands.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model preset or pipeline folder (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: %(default)s)")
    parser.add_argument("--max-memory", help="refuse images whose estimated peak memory exceeds this (e.g. 12GB)")
    args = parser.parse_args(argv)
    # the outputs of the server's lifetime, removed when it stops
    with tempfile.TemporaryDirectory(prefix="sr-app-") as work_dir, one_line_errors("sr.commands.app"):
        demo = build_demo(Upscaler(args.model, Path(work_dir), args.device, args.max_memory))
        demo.queue(default_concurrency_limit=1)   # one job at a time; the others wait their turn
        demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[work_dir], show_error=True,
                    ssr_mode=False)


if __name__ == "__main__":
    main()
