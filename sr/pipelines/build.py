"""Build a ``StableSRPipeline`` from a model preset (``conf/model/*.yaml``, ``_target_: sr.pipelines.build_pipeline``).

Three sources, one result:

- ``pretrained`` is a folder written by ``StableSRPipeline.save_pretrained`` (or ``python -m sr.commands.convert``):
  loaded with ``StableSRPipeline.from_pretrained``;
- ``pretrained`` is a plain diffusers Stable Diffusion folder or hub id (``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``): its UNet and VAE, the empty prompt embedded once with its text encoder, and a time-aware encoder,
  SFT adapter and CFW with fresh weights from the configs (how stage 1 starts from SD-2.1);
- ``pretrained`` empty: everything with fresh weights from the configs (the ``tiny`` preset). The initialisation draws
  from the global torch RNG inside ``torch.random.fork_rng`` seeded with ``seed``, so it is reproducible and leaves
  the caller's RNG state untouched.

A ``pretrained`` that names a path (:func:`looks_like_a_path`) and does not exist, or a local folder that is neither
a pipeline folder (``model_index.json``) nor a Stable Diffusion folder (``SD_FOLDER_PARTS``), is refused with one line
naming it, before any library is asked to load it.

Then ``stage1_weights`` / ``cfw_weights`` (files written by ``StableSR.save_trainable``) replace the encoder + SFT /
CFW weights, and the preset's ``latent_tile`` and ``sampling`` block become the pipeline's defaults.
"""

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from safetensors import safe_open

from sr.models.cfw import CFW
from sr.models.encoder import TimeAwareEncoder
from sr.models.prompt import PromptEmbedding, embed_prompts
from sr.models.sft import SFTAdapter
from sr.pipelines.stablesr import StableSRPipeline
from sr.sampling.aggregation import fresh_scheduler
from sr.sampling.settings import legacy_names_mapped

PIPELINE_INDEX = "model_index.json"
# the subfolders a plain Stable Diffusion folder (no model_index.json) is read from
SD_FOLDER_PARTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")


def build_pipeline(
    pretrained: str | os.PathLike | None = None,
    unet: dict | None = None,
    vae: dict | None = None,
    encoder: dict | None = None,
    cfw: dict | None = None,
    sft: dict | None = None,
    scheduler: dict | None = None,
    prompt_length: int = 77,
    seed: int = 0,
    stage1_weights: str | None = None,
    cfw_weights: str | None = None,
    torch_dtype: str | None = None,
    name: str = "custom",
    latent_tile: int = 64,
    sampling: dict | None = None,
) -> StableSRPipeline:
    """A pipeline from a preset's keys (module docstring); ``scheduler`` (a ``DDPMScheduler`` config) replaces a
    loaded folder's schedule. ``name`` is the preset's name (run configs read it as ``cfg.model.name``)."""
    dtype = getattr(torch, torch_dtype) if torch_dtype else None
    if pretrained:
        pipe = _load(pretrained, encoder, cfw, sft, dtype)
        if scheduler:
            pipe.scheduler = DDPMScheduler(**scheduler)
    else:
        if unet is None or vae is None:
            raise ValueError("a model preset needs either `pretrained` or both `unet` and `vae` configs")
        pipe = from_configs(unet, vae, encoder or {}, cfw or {}, scheduler or {}, sft, prompt_length, seed)
        if dtype:
            pipe.to(dtype=dtype)
    if stage1_weights:
        pipe.load_trainable(stage1_weights, parts=("encoder", "sft"))
    if cfw_weights:
        pipe.load_trainable(cfw_weights, parts=("cfw",))
    pipe.register_to_config(latent_tile=latent_tile, sampling=legacy_names_mapped(sampling))
    return pipe


def use_scheduler(pipe: StableSRPipeline, scheduler) -> StableSRPipeline:
    """Sample ``pipe`` with ``scheduler``'s class and config (e.g. DDIM from ``conf/scheduler``), keeping the model's
    ``prediction_type``; returns ``pipe``."""
    pipe.scheduler = fresh_scheduler(scheduler, pipe.scheduler.config.prediction_type)
    return pipe


def from_configs(
    unet: dict,
    vae: dict,
    encoder: dict,
    cfw: dict,
    scheduler: dict,
    sft: dict | None = None,
    prompt_length: int = 77,
    seed: int = 0,
) -> StableSRPipeline:
    """Fresh weights from explicit configs; the prompt embedding is ``randn`` from ``Generator().manual_seed(seed)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_model = UNet2DConditionModel(**unet)
        prompt = torch.randn(1, prompt_length, unet_model.config.cross_attention_dim,
                             generator=torch.Generator().manual_seed(seed))
        vae_model, encoder_model, cfw_model = AutoencoderKL(**vae), TimeAwareEncoder(**encoder), CFW(**cfw)
        adapter = new_sft_adapter(unet_model, encoder_model, sft)
    return _in_eval_mode(StableSRPipeline(unet_model, vae_model, encoder_model, adapter, cfw_model,
                                          DDPMScheduler(**scheduler), PromptEmbedding.of(prompt)))


def new_sft_adapter(unet: UNet2DConditionModel, encoder: TimeAwareEncoder, sft: dict | None) -> SFTAdapter:
    """Fresh SPADE layers for every residual block of ``unet``, conditioned on ``encoder``'s output width."""
    options = {"cond_channels": encoder.config.out_channels, "hidden_channels": 128, "norm_groups": 32, **(sft or {})}
    return SFTAdapter.for_unet(unet, **options)


@contextmanager
def _no_loading_bar():
    """diffusers' "Loading pipeline components" bar off while a preset's folder loads (it is a global switch, so it is
    restored after): a command's first line is its own, and loading a folder takes a moment."""
    was_enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            diffusers_logging.enable_progress_bar()


def _load(pretrained, encoder: dict | None, cfw: dict | None, sft: dict | None,
          dtype: torch.dtype | None) -> StableSRPipeline:
    source = str(pretrained)
    local = Path(source)
    kwargs = {"torch_dtype": dtype} if dtype else {}
    if (local / PIPELINE_INDEX).is_file():
        try:
            with _no_loading_bar():
                pipe = StableSRPipeline.from_pretrained(local, **kwargs)
        except Exception as error:  # diffusers names no file for a damaged one: find it, else the error stands
            if damaged := unreadable_weights(local):
                raise ValueError(damaged) from error
            raise
        if pipe.cfw is None and cfw is not None:  # a converted stage-1 folder without CFW: stage 2 starts here
            pipe.register_modules(cfw=CFW(**cfw).to(device=pipe.device, dtype=pipe.vae.dtype).eval())
        return pipe
    if local.exists():
        missing = [name for name in SD_FOLDER_PARTS if not (local / name).is_dir()]
        if missing:
            raise FileNotFoundError(f"{local}: not a diffusers pipeline folder (no {PIPELINE_INDEX}), nor a Stable "
                                    f"Diffusion folder (no {', '.join(name + '/' for name in missing)})")
    elif looks_like_a_path(source):
        raise FileNotFoundError(f"no model folder at {source}")
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs)
    except (OSError, ValueError) as error:  # ValueError: huggingface_hub's HFValidationError of a malformed id
        raise FileNotFoundError(
            f"{source}: not a local model folder, and not loadable as a hub id ({str(error).splitlines()[0]})"
        ) from error
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
    prompt = embed_prompts(*_load_text_encoder(source), [""])
    encoder_model = TimeAwareEncoder(**(encoder or {}))
    pipe = StableSRPipeline(unet, vae, encoder_model, new_sft_adapter(unet, encoder_model, sft), CFW(**(cfw or {})),
                            scheduler, PromptEmbedding.of(prompt))
    if dtype:
        pipe.to(dtype=dtype)
    return _in_eval_mode(pipe)


def unreadable_weights(folder: Path) -> str | None:
    """``"<file>: not a readable safetensors file ..."`` for the first ``*.safetensors`` file below ``folder`` whose
    header cannot be read (truncated or corrupt), or None when all can."""
    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except Exception as error:  # noqa: BLE001 - safetensors raises several types for a damaged header
            return f"{path}: not a readable safetensors file (truncated or corrupt?): {error}"
    return None


def looks_like_a_path(source: str) -> bool:
    """Whether ``pretrained`` names a local path rather than a hub id (``org/name``): absolute, relative to ``.``,
    ``..`` or ``~``, or with more than one ``/``."""
    return Path(source).is_absolute() or source.startswith((".", "~")) or source.count("/") > 1


def _in_eval_mode(pipe: StableSRPipeline) -> StableSRPipeline:
    """Every module component in eval mode, as ``from_pretrained`` leaves them (training modules switch back)."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def _load_text_encoder(source: str):
    """The SD folder's own text encoder and tokenizer (used once, to embed the empty prompt)."""
    from transformers import AutoTokenizer, CLIPTextModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder")
    except (OSError, ValueError) as error:  # ValueError: a tokenizer/ whose files cannot build a tokenizer
        raise FileNotFoundError(
            f"{source}: no prompt embedding and no loadable text_encoder/ + tokenizer/ to compute the empty-prompt "
            f"embedding ({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__})"
        ) from error
    return text_encoder.eval(), tokenizer
