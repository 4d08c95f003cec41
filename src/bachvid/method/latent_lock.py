"""Beyond the paper: locks that set some of a shot's latents to the identity's in the first steps.

The paper keeps the identity through attention alone (its keys and values, then a token merge). On
the toy model the injected keys get no more weight than the shot's own and the injection changes
little (docs/DIAGNOSIS.md): a shot's layout and colours are settled in the first steps, and by the
time attention could pull them back the shot has drawn its own. A lock acts where they are made:
after each of the first steps, chosen latent tokens of the shot become the identity's latent tokens
of the same step (as blended-latent inpainting does); once it ends, the model denoises everything
freely and heals the seams.

- `background_lock`: background-in-both tokens (outside the identity's mask and the shot's own) take
  the identity's token at the same position (`background_latents_until`; assumes a still camera,
  as `background_merge` does).
  With `background_lock_agreement` a > 0 it holds instead the tokens whose latents the shot's
  pre-run already shares with the identity (`agreeing_tokens`): no mask is read for it.
- `character_lock`: the shot's matched character tokens take the identity's tokens they match
  (`character_latents_until`): the identity's character, moved to where the shot puts it.

Latents are handled as tokens through the backbone's `latent_tokens` / `tokens_to_latents` (one row
per video token, in the token sequence's order), so this module knows no latent layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import BachVidConfig, step_index
from .match import Matches

SUGGESTED_BACKGROUND_LOCK = 0.5
"""The background lock chosen on the toy model's diagnosis stories (docs/DIAGNOSIS.md, "Latent locks"):
what the studio's "Lock the background" box and `bachvid toy results`' bg-lock condition use. Longer
locks keep more background and break more actions."""

MILD_BACKGROUND_LOCK = (0.5, 0.5)
"""(background_latents_until, background_latents_weight) of the mild soft lock: half-way toward the
identity's latents after each step, for the first half of the steps. The largest background gain on the
toy model's diagnosis stories that loses no action among the mask-based locks (docs/DIAGNOSIS.md, "A mild
soft lock"); `bachvid toy results`' bg-mild."""

AGREEMENT_LOCK = (1.0, 0.25, 1.0)
"""(background_latents_until, background_latents_weight, background_lock_agreement) of the agreement
lock: a quarter of the way toward the identity's latents after every step, to the end, on the tokens the
shot's pre-run already shares with the identity. The largest background gain on the toy model's diagnosis
stories that loses no action; the toy CogVideoX model's default (docs/DIAGNOSIS.md, "An agreement lock")."""

SUGGESTED_SOFT_BACKGROUND_LOCK = (1.0, 0.1)
"""(background_latents_until, background_latents_weight) of the soft background lock chosen on the toy
model's diagnosis stories by the same rule (docs/DIAGNOSIS.md, "A soft background lock"): a tenth of the
way toward the identity's latents after every step, to the end. `bachvid toy results`' bg-soft."""


@dataclass(frozen=True)
class LatentLock:
    """Shot tokens that take the identity's latent tokens after each of the first `steps` steps
    (`weight` < 1: move that share of the way toward them)."""

    current: torch.Tensor  # long (P,) the shot's video tokens
    identity: torch.Tensor  # long (P,) the identity's video tokens they take
    steps: int
    weight: float = 1.0

    def apply(self, step: int, shot: torch.Tensor, identity: torch.Tensor, view) -> torch.Tensor:
        """The shot's latents after `step`. `view`: the backbone (latent_tokens, tokens_to_latents)."""
        if step >= self.steps:
            return shot
        tokens = view.latent_tokens(shot).clone()
        source = view.latent_tokens(identity.to(shot.device, shot.dtype))
        current = self.current.to(shot.device)
        target = source[self.identity.to(shot.device)]
        tokens[current] = target if self.weight == 1.0 else torch.lerp(tokens[current], target, self.weight)
        return view.tokens_to_latents(tokens, shot)


def agreeing_tokens(shot: torch.Tensor, identity: torch.Tensor, view, factor: float) -> torch.Tensor:
    """(video tokens,) bool on the host: tokens whose shot latent lies within `factor` x the median
    token distance (L2 over channels) of the identity's latent of the same step. `view`: the backbone."""
    ours = view.latent_tokens(shot.float())
    theirs = view.latent_tokens(identity.to(shot.device).float())
    distance = (ours - theirs).norm(dim=-1)
    return (distance <= factor * distance.median()).cpu()


def background_lock(config: BachVidConfig, identity_fg: torch.Tensor, shot_fg: torch.Tensor,
                    num_steps: int, agreeing: torch.Tensor | None = None) -> LatentLock | None:
    """The background-in-both tokens (or, with `background_lock_agreement`, the `agreeing` tokens;
    None: the shot agrees nowhere, as on other noise), each from the same position; None where the
    config has no background lock (the paper), the story switches backgrounds or nothing agrees."""
    steps = step_index(config.background_latents_until, num_steps)
    if not config.shared_background or steps == 0:
        return None
    if config.background_lock_agreement > 0:
        held = torch.zeros(0, dtype=torch.long) if agreeing is None else agreeing.reshape(-1).nonzero(as_tuple=True)[0]
        if held.numel() == 0:
            return None
    else:
        held = (~(identity_fg.bool() | shot_fg.bool())).reshape(-1).nonzero(as_tuple=True)[0]
    return LatentLock(held, held, steps, config.background_latents_weight)


def character_lock(config: BachVidConfig, identity_fg: torch.Tensor, shot_fg: torch.Tensor, matches: Matches,
                   num_steps: int) -> LatentLock | None:
    """The shot's matched character tokens, each from its identity match; None without a character lock."""
    steps = step_index(config.character_latents_until, num_steps)
    if steps == 0:
        return None
    current, identity, _ = matches.foreground_pairs(shot_fg, identity_fg, config.match_threshold)
    return LatentLock(current, identity, steps) if current.numel() else None


def shot_locks(config: BachVidConfig, identity_fg: torch.Tensor, shot_fg: torch.Tensor, matches: Matches,
               num_steps: int, agreeing: torch.Tensor | None = None) -> list[LatentLock]:
    """Every lock of one shot (none in the paper's config)."""
    locks = (background_lock(config, identity_fg, shot_fg, num_steps, agreeing),
             character_lock(config, identity_fg, shot_fg, matches, num_steps))
    return [lock for lock in locks if lock is not None]


class LatentLocks:
    """A batch's locks as a backbone's `on_step_end` hook: row -> (its locks, the identity's latent
    after a step, given the step and the batch's latents)."""

    def __init__(self, rows: dict[int, tuple[list[LatentLock], Callable[[int, list], torch.Tensor]]], view):
        self.rows, self.view = rows, view

    def __bool__(self) -> bool:
        return bool(self.rows)

    def __call__(self, step: int, latents: list) -> None:
        for row, (locks, identity_after) in self.rows.items():
            identity = identity_after(step, latents)
            for lock in locks:
                latents[row] = lock.apply(step, latents[row], identity, self.view)
