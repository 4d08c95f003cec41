"""One module per backbone; this registry picks the module for a loaded diffusers pipeline.

What a backbone implements: `protocol.Backbone`."""

from __future__ import annotations

from .cogvideox import BatchVideo, CogVideoXBackbone
from .wan import WanBackbone

__all__ = ["BACKBONES", "BatchVideo", "backbone_for", "supported_pipeline"]

BACKBONES = (CogVideoXBackbone, WanBackbone)


def supported_pipeline(name: str):
    """The backbone class for a diffusers pipeline class name, or a clear error naming what is supported."""
    for backbone in BACKBONES:
        if name in backbone.pipeline_classes:
            return backbone
    supported = ", ".join(c for b in BACKBONES for c in b.pipeline_classes)
    raise ValueError(f"bachvid does not support {name} yet; supported pipelines: {supported}")


def backbone_for(pipe):
    """The backbone adapter for a diffusers pipeline, or a clear error naming what is supported."""
    return supported_pipeline(type(pipe).__name__)(pipe)
