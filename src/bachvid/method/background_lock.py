"""Beyond the paper: a shot's background latents follow the identity's for the first steps.

The paper keeps a shared background through attention alone (the identity's background keys and
values). On the toy model that injection gets no more weight than the shot's own keys and changes
nothing measurable (docs/DIAGNOSIS.md): a shot's layout is settled in the first steps, and by the
time attention could pull the background back the shot has drawn its own. The lock acts where the
layout is made: after each of the first steps, a shot's latents at background-in-both tokens
(outside the identity's mask and the shot's own mask) become the identity's latents at the same
step, as blended-latent inpainting does. Once it ends, the model denoises everything freely and
heals the seams. Same positions, so it assumes a still camera, as `background_merge` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import BachVidConfig, step_index


@dataclass(frozen=True)
class BackgroundLock:
    """Which latents of one shot follow the identity, and for how many steps."""

    keep: torch.Tensor  # bool (F, h, w) token grid: background in both videos
    steps: int  # locked after steps 0 .. steps-1

    def apply(self, step: int, shot: torch.Tensor, identity: torch.Tensor, to_latents) -> torch.Tensor:
        """The shot's latents after `step`: the identity's at locked tokens while the lock lasts.
        `to_latents` (a backbone's) turns the token-grid mask into one broadcastable to latents."""
        if step >= self.steps:
            return shot
        keep = to_latents(self.keep).to(shot.device)
        return torch.where(keep, identity.to(shot.device, shot.dtype), shot)


def background_lock(config: BachVidConfig, identity_fg: torch.Tensor, shot_fg: torch.Tensor,
                    num_steps: int) -> BackgroundLock | None:
    """The lock of one shot, or None where the config has none (the paper) or backgrounds differ."""
    steps = step_index(config.background_latents_until, num_steps)
    if not config.shared_background or steps == 0:
        return None
    return BackgroundLock(~(identity_fg.bool() | shot_fg.bool()), steps)


class BackgroundLocks:
    """A batch's locks as a backbone's `on_step_end` hook: row -> (its lock, the identity's latent
    after a step, given the step and the batch's latents)."""

    def __init__(self, rows: dict[int, tuple[BackgroundLock, Callable[[int, list], torch.Tensor]]], to_latents):
        self.rows, self.to_latents = rows, to_latents

    def __bool__(self) -> bool:
        return bool(self.rows)

    def __call__(self, step: int, latents: list) -> None:
        for row, (lock, identity_after) in self.rows.items():
            latents[row] = lock.apply(step, latents[row], identity_after(step, latents), self.to_latents)
