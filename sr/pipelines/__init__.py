"""Inference pipelines: ``StableSRPipeline`` (diffusers ``DiffusionPipeline``) and the preset builder.

Nothing below ``sr.pipelines`` (``sr.models``, ``sr.sampling``, ``sr.ops``, ...) imports it; it imports them.
"""

from sr.pipelines.build import build_pipeline, use_scheduler
from sr.pipelines.stablesr import StableSRPipeline, StableSRPipelineOutput
from sr.sampling.settings import (
    SamplingSettings,
    TileSettings,
    VaeTileSettings,
    resolved_settings,
)

__all__ = [
    "SamplingSettings",
    "StableSRPipeline",
    "StableSRPipelineOutput",
    "TileSettings",
    "VaeTileSettings",
    "build_pipeline",
    "resolved_settings",
    "use_scheduler",
]
