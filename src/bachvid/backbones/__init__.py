"""One module per backbone; this registry picks the module for a loaded diffusers pipeline."""

from __future__ import annotations

from .cogvideox import BatchVideo, CogVideoXBackbone

__all__ = ["BACKBONES", "BatchVideo", "backbone_for"]

BACKBONES = (CogVideoXBackbone,)


def backbone_for(pipe):
    """The backbone adapter for a diffusers pipeline, or a clear error naming what is supported."""
    name = type(pipe).__name__
    for backbone in BACKBONES:
        if name in backbone.pipeline_classes:
            return backbone(pipe)
    supported = ", ".join(c for b in BACKBONES for c in b.pipeline_classes)
    raise ValueError(f"bachvid does not support {name} yet; supported pipelines: {supported}")
