"""The StableSR model: frozen SD UNet + VAE, time-aware encoder + SFT (stage 1), CFW (stage 2).

One class and one loading path serve every preset: ``StableSR.from_pretrained(folder_or_hub_id, ...)`` reads a
diffusers Stable Diffusion folder (``unet/``, ``vae/`` and a text encoder for the empty prompt), or a folder this
project wrote, which adds the StableSR parts::

    unet/ vae/ scheduler/                  plain diffusers models (no SPADE keys in unet/)
    time_aware_encoder/                    TimeAwareEncoder.save_pretrained
    sft/config.json + sft/sft.safetensors  SPADE weights under their diffusers paths
    cfw/                                   CFW.save_pretrained
    prompt_embeds.safetensors              {"prompt_embeds": [1, L, C]}, the cached empty-prompt embedding
    stablesr.json                          {"cfw_trained": bool} (absent: CFW counts as trained if cfw/ exists)

``StableSR.from_config`` builds the same thing with random weights (the ``tiny`` preset).
"""

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from sr.io import write_bytes_atomic
from sr.models.cfw import CFW, decode_latent, encoder_features
from sr.models.encoder import TimeAwareEncoder
from sr.models.sft import attach_sft, is_sft_parameter, set_sft_features, sft_state_dict

PROMPT_EMBEDS_FILE = "prompt_embeds.safetensors"
STATUS_FILE = "stablesr.json"
SFT_WEIGHTS_FILE = "sft.safetensors"
TRAINABLE_PARTS = {"stage1": ("encoder", "sft"), "stage2": ("cfw",)}


class StableSR(nn.Module):
    """Container with the operations every stage needs; owns no training or sampling loop."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        encoder: TimeAwareEncoder,
        cfw: CFW,
        prompt_embeds: torch.Tensor,
        noise_scheduler: DDPMScheduler,
        sft_config: dict | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer=None,
    ):
        super().__init__()
        self.unet, self.vae, self.encoder, self.cfw = unet, vae, encoder, cfw
        self.sft_config = {"cond_channels": encoder.config.out_channels, "hidden_channels": 128, "norm_groups": 32}
        self.sft_config.update(sft_config or {})
        self.num_sft_layers = attach_sft(unet, **self.sft_config)
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        self.noise_scheduler = noise_scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.scaling_factor = vae.config.scaling_factor
        self.cfw_is_untrained = True  # cleared when CFW weights are loaded

    # ------------------------------------------------------------------ parts and freezing
    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def parameters_of(self, stage: str) -> list[nn.Parameter]:
        """Trainable parameters of ``stage1`` (encoder + SFT) or ``stage2`` (CFW fusion layers)."""
        if stage == "stage1":
            sft = [p for n, p in self.unet.named_parameters() if is_sft_parameter(n)]
            return list(self.encoder.parameters()) + sft
        if stage == "stage2":
            return list(self.cfw.parameters())
        raise ValueError(f"unknown stage {stage!r}; expected 'stage1' or 'stage2'")

    def freeze_except(self, stage: str | None) -> None:
        """``requires_grad`` only on ``stage``'s parameters (None freezes everything)."""
        self.requires_grad_(False)
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(False)
        for parameter in self.parameters_of(stage) if stage else []:
            parameter.requires_grad_(True)

    # ------------------------------------------------------------------ the model's operations
    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
        """``image`` in [-1, 1] -> (scaled latent ``0.18215 * E(x).sample()``, CFW encoder features [f1, f2])."""
        moments, features = encoder_features(self.vae, image)
        posterior = DiagonalGaussianDistribution(moments)
        latent = posterior.sample(generator=generator) if sample else posterior.mode()
        return latent * self.scaling_factor, features

    def predict(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, z_lr: torch.Tensor, prompt_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """UNet output (eps or v) for ``x_t`` at original timesteps ``t``, steered by ``encoder(z_lr, t)``."""
        timesteps = torch.as_tensor(timesteps, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        set_sft_features(self.unet, self.encoder(z_lr, timesteps))
        context = self.prompt_embeds if prompt_embeds is None else prompt_embeds
        context = context.to(x_t.dtype).expand(x_t.shape[0], -1, -1)
        return self.unet(x_t, timesteps, encoder_hidden_states=context).sample

    def decode(self, latent: torch.Tensor, enc_features: list[torch.Tensor] | None = None, w: float = 0.0):
        """Scaled latent -> image in about [-1, 1]; CFW fusion strength ``w`` in [0, 1] (0 = plain SD decoder)."""
        if w > 0 and self.cfw_is_untrained:
            warnings.warn("decoding with w > 0 but the CFW fusion layers were never loaded or trained (random init)")
        return decode_latent(self.vae, self.cfw, latent / self.scaling_factor, enc_features, w)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings for other prompts (needs the text encoder; the empty prompt is always cached)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError("this model has no text encoder; only the cached empty-prompt embedding is available")
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.prompt_embeds.device)
        with torch.no_grad():
            return self.text_encoder(tokens)[0]

    # ------------------------------------------------------------------ building and loading
    @classmethod
    def from_config(
        cls,
        unet: dict,
        vae: dict,
        encoder: dict,
        cfw: dict,
        scheduler: dict,
        sft: dict | None = None,
        prompt_length: int = 77,
        seed: int = 0,
    ) -> "StableSR":
        """Random weights from explicit configs (the ``tiny`` preset); the prompt embedding is a seeded constant."""
        torch.manual_seed(seed)
        unet_model = UNet2DConditionModel(**unet)
        prompt = torch.randn(1, prompt_length, unet_model.config.cross_attention_dim, generator=torch.Generator().manual_seed(seed))
        return cls(
            unet_model, AutoencoderKL(**vae), TimeAwareEncoder(**encoder), CFW(**cfw), prompt,
            DDPMScheduler(**scheduler), sft,
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | os.PathLike,
        encoder: dict | None = None,
        cfw: dict | None = None,
        sft: dict | None = None,
        scheduler: dict | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> "StableSR":
        """Load a diffusers SD folder / hub id, or a folder written by ``save_pretrained``.

        Parts missing from the folder (time-aware encoder, SFT, CFW) are built from the given configs with random
        weights: that is how stage 1 starts from plain SD-2.1.
        """
        source = str(pretrained)
        local = Path(source)
        if local.exists() and not (local / "unet").is_dir():
            raise FileNotFoundError(f"{local}: not a model folder (no unet/ subfolder)")
        kwargs = {"torch_dtype": torch_dtype} if torch_dtype else {}
        try:
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs)
        except OSError as error:
            raise FileNotFoundError(
                f"{source}: not a local model folder, and not loadable as a hub id ({str(error).splitlines()[0]})"
            ) from error
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
        noise_scheduler = (
            DDPMScheduler(**scheduler) if scheduler else DDPMScheduler.from_pretrained(source, subfolder="scheduler")
        )
        has = (lambda name: (local / name).exists()) if local.exists() else (lambda name: False)
        if has("time_aware_encoder"):
            encoder_model = TimeAwareEncoder.from_pretrained(local / "time_aware_encoder", **kwargs)
        else:
            encoder_model = TimeAwareEncoder(**(encoder or {}))
        cfw_model = CFW.from_pretrained(local / "cfw", **kwargs) if has("cfw") else CFW(**(cfw or {}))
        sft_config = json.loads((local / "sft" / "config.json").read_text()) if has("sft") else sft
        text_encoder = tokenizer = None
        if has(PROMPT_EMBEDS_FILE):
            prompt = _load_tensors(local / PROMPT_EMBEDS_FILE, ["prompt_embeds"])["prompt_embeds"]
        else:
            text_encoder, tokenizer = _load_text_encoder(source)
            prompt = None
        model = cls(unet, vae, encoder_model, cfw_model, torch.zeros(1), noise_scheduler, sft_config, text_encoder, tokenizer)
        model.prompt_embeds = prompt if prompt is not None else model.encode_prompt([""])
        if has("sft"):
            model.load_trainable(local / "sft" / SFT_WEIGHTS_FILE, parts=("sft",))
        status = json.loads((local / STATUS_FILE).read_text()) if has(STATUS_FILE) else {}
        model.cfw_is_untrained = not has("cfw") or not status.get("cfw_trained", True)
        if torch_dtype:
            model.to(torch_dtype)
        return model

    def save_pretrained(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the whole model (layout in the module docstring) atomically: temp folder, then rename."""
        folder = Path(folder)
        if folder.exists() and not overwrite:
            raise FileExistsError(f"{folder}: already exists (pass overwrite=True to replace it)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            unet_dir = staging / "unet"
            self.unet.save_config(unet_dir)
            base = {k: v.contiguous() for k, v in self.unet.state_dict().items() if not is_sft_parameter(k)}
            save_file(base, unet_dir / "diffusion_pytorch_model.safetensors")
            self.vae.save_pretrained(staging / "vae")
            self.noise_scheduler.save_pretrained(staging / "scheduler")
            self.encoder.save_pretrained(staging / "time_aware_encoder")
            self.cfw.save_pretrained(staging / "cfw")
            (staging / "sft").mkdir()
            (staging / "sft" / "config.json").write_text(json.dumps(self.sft_config, indent=2))
            self.save_trainable(staging / "sft" / SFT_WEIGHTS_FILE, parts=("sft",))
            save_file({"prompt_embeds": self.prompt_embeds.detach().cpu().contiguous()}, staging / PROMPT_EMBEDS_FILE)
            (staging / STATUS_FILE).write_text(json.dumps({"cfw_trained": not self.cfw_is_untrained}))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    # ------------------------------------------------------------------ trainable weights only
    def trainable_state_dict(self, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """``encoder.*``, ``sft.<diffusers path>.spade.*`` and/or ``cfw.*`` tensors (the small checkpoints)."""
        state = {}
        for part in parts:
            if part == "encoder":
                source = self.encoder.state_dict()
            elif part == "sft":
                source = sft_state_dict(self.unet)
            elif part == "cfw":
                source = self.cfw.state_dict()
            else:
                raise ValueError(f"unknown part {part!r}; expected encoder, sft or cfw")
            state.update({f"{part}.{k}": v for k, v in source.items()})
        return state

    def save_trainable(self, path: str | os.PathLike, parts: tuple[str, ...] = TRAINABLE_PARTS["stage1"]) -> Path:
        """Save ``parts`` as one safetensors file (written to a temp name, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict(parts).items()}
        metadata = {"parts": ",".join(parts), "encoder_config": json.dumps(_public(self.encoder.config)),
                    "cfw_config": json.dumps(_public(self.cfw.config)), "sft_config": json.dumps(self.sft_config)}
        return write_bytes_atomic(path, safetensors_bytes(tensors, metadata=metadata), overwrite=True)

    def load_trainable(self, path: str | os.PathLike, parts: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """Load a file written by ``save_trainable``; every expected tensor must be present with the right shape."""
        path = Path(path)
        tensors = _load_tensors(path)
        stored_parts = tuple(sorted({key.split(".", 1)[0] for key in tensors}))
        parts = stored_parts if parts is None else parts
        expected = self.trainable_state_dict(parts)
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise KeyError(f"{path}: missing {len(missing)} tensors for parts {parts}, e.g. {missing[:3]}")
        for key, reference in expected.items():
            if tensors[key].shape != reference.shape:
                raise ValueError(
                    f"{path}: {key} has shape {tuple(tensors[key].shape)}, model expects {tuple(reference.shape)}"
                )
        with torch.no_grad():
            for key, reference in expected.items():
                reference.copy_(tensors[key])
        if "cfw" in parts:
            self.cfw_is_untrained = False
        return parts


def _public(config) -> dict:
    """A diffusers config without its private entries (``_name_or_path`` may be a Path, not JSON)."""
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def _load_tensors(path: Path, required: list[str] | None = None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        tensors = load_file(path)
    except Exception as error:  # safetensors raises several types for a damaged header
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    for key in required or []:
        if key not in tensors:
            raise KeyError(f"{path}: has no tensor named {key!r}")
    return tensors


def _load_text_encoder(source: str):
    """The SD folder's own text encoder and tokenizer (used once, to embed the empty prompt)."""
    from transformers import AutoTokenizer, CLIPTextModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder")
    except OSError as error:
        raise FileNotFoundError(
            f"{source}: no {PROMPT_EMBEDS_FILE} and no text_encoder/ + tokenizer/ to compute the empty-prompt embedding"
        ) from error
    return text_encoder.eval(), tokenizer
