"""Score toy videos from their pixels alone: which background, which character, which action,
and where the character is.

It knows the world's palette (as a viewer knows what a meadow looks like) but never the truth of
the clip it scores, so the same scorer reads rendered clips and generated ones. Every pixel is
given to its nearest palette colour; the background kind with the most pixels wins, the
character kind with the most pixels wins, the character's pixels (closed over its eyes and belt)
form the mask, and the mask's track through time tells the action.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import world

SHADE = 0.78  # the darker pattern on the character's body


def _palette(spec: world.WorldSpec = world.V1):
    colours, owners = [], []
    for kind, (sky, ground) in world.BACKGROUND_COLOURS.items():
        extra = {
            "meadow": [tuple(np.array(ground) * 1.08), tuple(np.array(ground) * 0.92), (30, 110, 40)],
            "desert": [tuple(np.array(ground) * 0.88), (250, 235, 120)],
            "ocean": [(60, 110, 200), (130, 170, 230)],
            "city": [(55, 55, 75), (240, 210, 80), (200, 200, 230)],
        }[kind]
        if spec.scenery == "v2":  # the scenery objects' colours vote for their background kind
            extra += [c for variants in world.SCENERY_COLOURS[kind].values() for c in variants if c not in extra]
        for colour in (sky, ground, *extra):
            colours.append(colour)
            owners.append(("background", kind))
    for kind, colour in world.CHARACTER_COLOURS.items():
        for c in (colour, tuple(np.array(colour) * SHADE)):
            colours.append(c)
            owners.append(("character", kind))
    return np.array(colours, np.float32), owners


def _tables(spec: world.WorldSpec):
    palette, owners = _palette(spec)
    background_of = np.array([list(world.BACKGROUNDS).index(k) if role == "background" else -1 for role, k in owners])
    character_of = np.array([list(world.CHARACTERS).index(k) if role == "character" else -1 for role, k in owners])
    return palette, owners, background_of, character_of


PALETTE, OWNERS, BACKGROUND_OF, CHARACTER_OF = _tables(world.V1)  # V1's, under the old names
TABLES = {spec.name: _tables(spec) for spec in world.WORLDS.values()}


@dataclass
class ClipScore:
    background_kind: str
    character_kind: str
    action: str
    mask: np.ndarray  # bool (F, H, W)
    background_share: float  # fraction of pixels voting for the winning background
    character_share: float  # fraction of pixels voting for the winning character
    track: dict  # the measured motion: dx, lift, growth


def _nearest(frames: np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    pixels = frames.reshape(-1, 3).astype(np.float32)
    distance = ((pixels[:, None, :] - palette[None]) ** 2).sum(-1)
    return distance.argmin(-1).reshape(frames.shape[:-1])


def _close(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """Binary closing per frame (dilate then erode) with a square window: fills eyes and belt."""
    def dilate(m):
        out = m.copy()
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                out |= np.roll(np.roll(m, dy, axis=-2), dx, axis=-1)
        return out

    return ~dilate(~dilate(mask))


def _track(mask: np.ndarray) -> dict:
    frames = mask.shape[0]
    ys, xs = np.mgrid[0 : mask.shape[1], 0 : mask.shape[2]]
    area = mask.sum(axis=(1, 2)).astype(np.float32)
    safe = np.maximum(area, 1)
    cx = (mask * xs).sum(axis=(1, 2)) / safe
    bottom = np.array([ys[m].max() if m.any() else np.nan for m in mask], np.float32)
    k = max(1, frames // 6)
    first, last = slice(0, k), slice(frames - k, frames)
    middle = slice(frames // 3, frames - frames // 3)
    return {
        "dx": float(np.nanmean(cx[last]) - np.nanmean(cx[first])),
        "lift": float(np.nanmean(bottom[first]) - np.nanmin(bottom[middle])) if np.isfinite(bottom[middle]).any() else 0.0,
        "growth": float(area[last].mean() / max(area[first].mean(), 1.0)),
    }


def action_of(track: dict, scale: float = 1.0) -> str:
    """The action from the mask's track; scale multiplies the pixel thresholds (frame side / 64)."""
    if track["growth"] > 1.35:
        return "closer"
    if abs(track["dx"]) > 8 * scale:
        return "right" if track["dx"] > 0 else "left"
    if track["lift"] > 5 * scale:
        return "jump"
    return "stand"


def score_clip(frames: np.ndarray, spec: world.WorldSpec | str | None = None) -> ClipScore:
    """Score one clip (uint8 (F, H, W, 3)). The world's palette and thresholds follow `spec`, or the
    frame size when it is None (96 px: V2, else V1)."""
    frames = np.asarray(frames)
    spec = world.world_of_size(frames.shape[1]) if spec is None else world.get_world(spec)
    PALETTE, OWNERS, BACKGROUND_OF, CHARACTER_OF = TABLES[spec.name]  # noqa: N806
    nearest = _nearest(frames, PALETTE)
    bg_votes = np.bincount(BACKGROUND_OF[nearest][BACKGROUND_OF[nearest] >= 0], minlength=len(world.BACKGROUNDS))
    ch_votes = np.bincount(CHARACTER_OF[nearest][CHARACTER_OF[nearest] >= 0], minlength=len(world.CHARACTERS))
    background = int(bg_votes.argmax())
    character = int(ch_votes.argmax())
    mask = _close(CHARACTER_OF[nearest] == character)
    track = _track(mask)
    total = nearest.size
    return ClipScore(
        background_kind=list(world.BACKGROUNDS)[background],
        character_kind=list(world.CHARACTERS)[character],
        action=action_of(track, 1.0 if spec is world.V1 else spec.size / world.V1.size),
        mask=mask,
        background_share=float(bg_votes[background] / total),
        character_share=float(ch_votes[character] / total),
        track=track,
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
