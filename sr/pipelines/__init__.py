"""Inference pipelines: ``StableSRPipeline`` (diffusers ``DiffusionPipeline``) and the preset builder.

Nothing below ``sr.pipelines`` (``sr.models``, ``sr.sampling``, ``sr.ops``, ...) imports it; it imports them.
"""

from sr.pipelines.build import build_pipeline, resolved_settings, sampling_arguments, use_scheduler
from sr.pipelines.stablesr import SamplingSettings, StableSRPipeline, StableSRPipelineOutput

__all__ = [
    "SamplingSettings",
    "StableSRPipeline",
    "StableSRPipelineOutput",
    "build_pipeline",
    "resolved_settings",
    "sampling_arguments",
    "use_scheduler",
]
