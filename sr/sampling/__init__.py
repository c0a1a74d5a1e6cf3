"""Sampling math: progressive aggregation (latent tiles fused every step), padding and output sizes.

``sr.pipelines.StableSRPipeline`` is the one caller that assembles these into an upscale.
"""

from sr.sampling.aggregation import TileFusion, denoise, fresh_scheduler, initial_latent, padded_size
from sr.sampling.padding import output_size, reflect_pad_to, round_up, working_scale

__all__ = [
    "TileFusion",
    "denoise",
    "fresh_scheduler",
    "initial_latent",
    "output_size",
    "padded_size",
    "reflect_pad_to",
    "round_up",
    "working_scale",
]
