"""Sampling: progressive-aggregation sampler (latent tiles) and the any-size upscaling pipeline."""

from sr.sampling.aggregation import AggregationSampler, TileFusion, fresh_scheduler, noised_latent
from sr.sampling.padding import reflect_pad_to, round_up
from sr.sampling.upscale import Upscaler, build_sampler, build_upscaler, output_size, working_scale

__all__ = [
    "AggregationSampler",
    "TileFusion",
    "Upscaler",
    "build_sampler",
    "build_upscaler",
    "fresh_scheduler",
    "noised_latent",
    "output_size",
    "reflect_pad_to",
    "round_up",
    "working_scale",
]
