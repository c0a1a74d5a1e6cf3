"""The cached text conditioning: StableSR always conditions the UNet on the empty prompt's embedding (docs/method.md#text-conditioning).

It is computed once (with the SD folder's text encoder, or by the converter from the released OpenCLIP weights) and
kept as a pipeline component, so a model folder needs no text encoder.
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class PromptEmbedding(ModelMixin, ConfigMixin):
    """Holds ``prompt_embeds [1, length, dim]`` (a buffer: saved, moved and cast with the module, never trained)."""

    @register_to_config
    def __init__(self, length: int = 77, dim: int = 1024):
        super().__init__()
        self.register_buffer("prompt_embeds", torch.zeros(1, length, dim))

    @classmethod
    def of(cls, prompt_embeds: torch.Tensor) -> "PromptEmbedding":
        """A module holding a copy of ``prompt_embeds [1, L, D]``."""
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 1:
            raise ValueError(f"prompt_embeds must be [1, L, D], got shape {tuple(prompt_embeds.shape)}")
        module = cls(prompt_embeds.shape[1], prompt_embeds.shape[2])
        module.prompt_embeds = prompt_embeds.detach().clone()
        return module

    def forward(self) -> torch.Tensor:
        return self.prompt_embeds


def embed_prompts(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Text-encoder embeddings ``[len(prompts), L, D]`` of ``prompts`` padded to the tokenizer's maximum length."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return text_encoder(tokens.to(text_encoder.device))[0]
