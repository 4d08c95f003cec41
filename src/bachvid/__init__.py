"""bachvid: training-free consistent multi-shot video generation (BachVid) on diffusers."""

__version__ = "0.1.0"
