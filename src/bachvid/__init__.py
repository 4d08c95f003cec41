"""bachvid: training-free consistent multi-shot video generation (BachVid) on diffusers."""

__version__ = "0.1.0"

from .io.story import Shot, Story, StoryError, load_stories  # noqa: E402
from .method.config import BachVidConfig  # noqa: E402


def __getattr__(name):
    # The pipeline pulls in diffusers and torch models: import it on first use only.
    if name in ("BachVidPipeline", "GenerationSettings", "ShotResult", "StoryResult"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)


__all__ = ["BachVidConfig", "BachVidPipeline", "GenerationSettings", "Shot", "Story", "StoryError", "load_stories"]
