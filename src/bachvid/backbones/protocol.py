"""What the method and the pipeline ask of a backbone: the whole interface a new one implements.

Method code never imports a model; `BachVidPipeline` and its modes talk to the backbone through these
members only. `CogVideoXBackbone` (cogvideox.py) is the reference implementation; `WanBackbone`
(wan.py) the second. A new backbone (one module, registered in `backbones.BACKBONES`) implements
every member below; `tests/test_backbone_protocol.py` checks the registered ones do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..method.controller import Controller, VideoState
from ..method.plan import Layers


@runtime_checkable
class Backbone(Protocol):
    name: str
    """Short name, as `bachvid info` and the benchmarks print it."""
    pipeline_classes: tuple[str, ...]
    """The diffusers pipeline class names this backbone serves."""
    pipe: object
    """The loaded diffusers pipeline."""

    # The model's shape
    @property
    def transformer(self) -> torch.nn.Module: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def text_length(self) -> int:
        """Text tokens the prompt is encoded to (masks read over the real ones)."""
    @property
    def joint_text_length(self) -> int:
        """Text tokens in front of the video tokens in joint attention (0 with cross-attention)."""
    @property
    def inner_dim(self) -> int: ...
    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this."""
    @property
    def max_inference_steps(self) -> int: ...

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(latent frames, h, w) of the video tokens: the grid masks and matches live on."""
    def latent_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """A video's latents as (tokens, channels) in the token grid's order."""
    def tokens_to_latents(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of `latent_tokens`, shaped like `like`."""
    def activation_bytes(self, num_frames: int, height: int, width: int, branches: int) -> int:
        """Peak activation memory of one forward, for the memory budget."""

    # Defaults
    def default_layers(self) -> Layers: ...
    def default_settings(self) -> dict:
        """The stock pipeline's sampling defaults (steps, guidance, frames, size)."""

    # Running
    def install(self, controller: Controller) -> None:
        """Put BachVid's attention processors in place, driven by `controller`."""
    def uninstall(self) -> None:
        """Give the model its stock processors back."""
    def encode(self, prompt: str, do_cfg: bool, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor | None]: ...
    def generator(self, seed: int) -> torch.Generator:
        """The generator the stock pipeline would be given for this seed."""
    def initial_noise(self, generator: torch.Generator, num_frames: int, height: int, width: int,
                      dtype) -> torch.Tensor:
        """The initial latents the stock pipeline draws from `generator`."""
    def denoise(self, videos: list, *, num_frames: int, height: int, width: int, num_inference_steps: int,
                guidance_scale: float, step_states: Callable[[int], list[tuple[VideoState, int | None]]],
                run_steps: int | None = None,
                on_step_end: Callable[[int, list[torch.Tensor | None]], None] | None = None,
                progress: bool | str = False, apart: bool = False) -> list[torch.Tensor | None]:
        """Denoise a batch of videos (`BatchVideo`s) step for step as the stock pipeline does each
        alone; `step_states(i)` gives each video's controller state at step i."""
    def decode(self, latents: torch.Tensor, num_frames: int) -> np.ndarray:
        """uint8 frames (F, H, W, 3) of a video's final latents."""
