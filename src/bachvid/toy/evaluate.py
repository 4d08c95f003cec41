"""Score toy-world videos from their pixels alone: which background, which character, which action,
and where the character is.

The scorer knows the world's palette (as a viewer knows what a meadow looks like: the colour
constants of `world`) but never the truth of the clip it scores, so the same code reads rendered
clips and generated ones. Steps:

1. every pixel goes to its nearest palette colour (background scenery, character bodies, belts);
2. background kind = the kind whose colours hold most pixels; character kind = likewise among
   the character body colours;
3. mask = pixels nearer to the winning character's colours (or a belt colour) than to the winning
   background's colours, cleaned per frame: isolated specks dropped, holes (eyes) filled, a
   3 x 3 closing;
4. action from the mask's track over time: area growth (closer), centroid x shift (left/right),
   centroid rise in the middle of the clip (jump), else stand.

Thresholds are in units of a 64-pixel frame and scale with the frame's width. Nothing is fitted:
the result is deterministic, and blur (sigma ~1 px) and noise (std ~8) change little.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import world

BACKGROUND_KINDS = list(world.BACKGROUNDS)
CHARACTER_KINDS = list(world.CHARACTERS)

# Action thresholds (pixels of a 64-pixel-wide frame; growth is an area ratio).
GROWTH_CLOSER = 1.5  # "closer" grows the area by GROWTH**2 ~ 2.4
SHIFT_WALK = 8.0  # walks shift the centroid by 20-24 px
LIFT_JUMP = 5.0  # jumps lift the centroid by 12-16 px; "stand" bobs by < 1 px
BAND = 5  # vertical gaps up to 2 * BAND px inside the mask are bridged
MIN_AREA = 0.01  # a frame whose mask covers less than this fraction holds no character


def _palette():
    colours, bg_kind, ch_kind = [], [], []
    for i, kind in enumerate(BACKGROUND_KINDS):
        for c in world.BACKGROUND_PALETTES[kind]:
            colours.append(c), bg_kind.append(i), ch_kind.append(-1)
    for i, kind in enumerate(CHARACTER_KINDS):
        base = np.array(world.CHARACTER_COLOURS[kind], np.float32)
        for c in (base, base * world.PATTERN_SHADE):
            colours.append(c), bg_kind.append(-1), ch_kind.append(i)
    for c in world.ACCESSORY_COLOURS:  # belts: part of a character, of no kind
        colours.append(c), bg_kind.append(-1), ch_kind.append(-2)
    return np.array(colours, np.float32), np.array(bg_kind), np.array(ch_kind)


PALETTE, PALETTE_BACKGROUND, PALETTE_CHARACTER = _palette()


@dataclass
class ClipScore:
    background_kind: str
    character_kind: str
    action: str
    mask: np.ndarray  # bool (F, H, W): where the character is
    background_share: float  # fraction of all pixels whose nearest colour is the winning background's
    character_share: float  # fraction of all pixels whose nearest colour is the winning character's
    background_purity: float  # of the pixels voting for any background, the winner's fraction
    character_purity: float  # of the pixels voting for any character, the winner's fraction (0: none)
    character_area: float  # mean fraction of the frame the mask covers (0: no character found)
    action_margin: float  # how far the deciding feature lies past its threshold, relative (>= 0)
    track: dict = field(default_factory=dict)  # measured motion: dx, lift, growth (64-px units)

    @property
    def found(self) -> bool:
        """Whether a character was seen at all (in at least half of the frames)."""
        return bool(self.track.get("present", 0.0) >= 0.5)


# Pixels ----------------------------------------------------------------------------------------
def _squared_distances(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, P) squared distance of every pixel to every palette colour."""
    pixels = frames.astype(np.float32)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2 keeps it one matrix product.
    cross = pixels @ PALETTE.T
    return (pixels**2).sum(-1, keepdims=True) - 2 * cross + (PALETTE**2).sum(-1)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """mask shifted by (dy, dx) per frame, False shifted in."""
    out = np.zeros_like(mask)
    h, w = mask.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        mask[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _neighbours(mask: np.ndarray) -> np.ndarray:
    """Count of the 8 neighbours that are set."""
    count = np.zeros(mask.shape, np.uint8)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                count += _shift(mask, dy, dx)
    return count


def _dilate(mask: np.ndarray) -> np.ndarray:
    return (_neighbours(mask) > 0) | mask


def _erode(mask: np.ndarray) -> np.ndarray:
    return mask & (_neighbours(mask) == 8)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not reach the frame's border (4-connected flood fill)."""
    outside = ~mask
    reach = np.zeros_like(mask)
    reach[..., 0, :], reach[..., -1, :], reach[..., :, 0], reach[..., :, -1] = (
        outside[..., 0, :], outside[..., -1, :], outside[..., :, 0], outside[..., :, -1])
    while True:
        grown = reach | _shift(reach, 1, 0) | _shift(reach, -1, 0) | _shift(reach, 0, 1) | _shift(reach, 0, -1)
        grown &= outside
        if np.array_equal(grown, reach):
            return ~reach
        reach = grown


def _close_vertical(mask: np.ndarray, radius: int) -> np.ndarray:
    """Set pixels that have the mask within `radius` both above and below (bridges horizontal bands)."""
    above, below = np.zeros_like(mask), np.zeros_like(mask)
    for d in range(1, radius + 1):
        above |= _shift(mask, d, 0)
        below |= _shift(mask, -d, 0)
    return mask | (above & below)


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Per frame: drop specks (fewer than 3 of 8 neighbours set), close 3 x 3, bridge horizontal
    bands up to 10 px tall (a belt that blur pulled towards the background), fill holes (eyes)."""
    mask = mask & (_neighbours(mask) >= 3)
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))  # closing must not glue the mask to the border
    closed = _erode(_dilate(padded))[:, 1:-1, 1:-1] | mask
    return _fill_holes(_close_vertical(closed, BAND))


# Motion ----------------------------------------------------------------------------------------
def measure_track(mask: np.ndarray) -> dict:
    """Centroid shift, mid-clip rise and area growth of a mask over time, in 64-pixel units."""
    frames, h, w = mask.shape
    unit = w / world.SIZE
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    present = area >= MIN_AREA * h * w
    track = {"dx": 0.0, "lift": 0.0, "growth": 1.0, "present": float(present.mean())}
    if present.sum() < 3:
        return track
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    cx = (mask.sum(1) * xs).sum(-1) / np.maximum(area, 1)
    cy = (mask.sum(2) * ys).sum(-1) / np.maximum(area, 1)
    idx = np.flatnonzero(present)
    k = max(1, len(idx) // 4)
    first, last = idx[:k], idx[-k:]
    middle = idx[len(idx) // 4: len(idx) - len(idx) // 4] if len(idx) >= 4 else idx
    rest = float(np.median(np.concatenate([cy[first], cy[last]])))
    track.update(
        dx=float(np.median(cx[last]) - np.median(cx[first])) / unit,
        lift=float(rest - cy[middle].min()) / unit,
        growth=float(np.median(area[last]) / max(np.median(area[first]), 1.0)),
    )
    return track


def action_of(track: dict) -> tuple[str, float]:
    """(action, margin): the action a track shows and how clearly (relative distance past the
    threshold of the deciding feature, 0 at the threshold)."""
    growth, dx, lift = track["growth"], track["dx"], track["lift"]
    if growth > GROWTH_CLOSER:
        return "closer", growth / GROWTH_CLOSER - 1
    if abs(dx) > SHIFT_WALK:
        return ("right" if dx > 0 else "left"), abs(dx) / SHIFT_WALK - 1
    if lift > LIFT_JUMP:
        return "jump", lift / LIFT_JUMP - 1
    # stand: how far below every threshold it stays
    return "stand", float(min(1 - growth / GROWTH_CLOSER if growth >= 1 else 1 - 1 / (growth * GROWTH_CLOSER),
                              1 - abs(dx) / SHIFT_WALK, 1 - max(lift, 0) / LIFT_JUMP))


# Scoring ---------------------------------------------------------------------------------------
def score_clip(frames: np.ndarray) -> ClipScore:
    """Score one video, uint8 (F, H, W, 3) with F >= 5 (float input in [0, 255] is accepted)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 5 or min(frames.shape[1:3]) < 16:
        raise ValueError(f"expected frames of shape (F >= 5, H, W, 3) with H, W >= 16, got {frames.shape}")
    distances = _squared_distances(frames)
    nearest = distances.argmin(-1)

    bg_of = PALETTE_BACKGROUND[nearest]
    bg_votes = np.bincount(bg_of[bg_of >= 0], minlength=len(BACKGROUND_KINDS))
    background = int(bg_votes.argmax())
    ch_of = PALETTE_CHARACTER[nearest]
    ch_votes = np.bincount(ch_of[ch_of >= 0], minlength=len(CHARACTER_KINDS))
    character = int(ch_votes.argmax())

    # Foreground: nearer to the winning character's colours or a belt than to the winning background's.
    fg_colours = (PALETTE_CHARACTER == character) | (PALETTE_CHARACTER == -2)
    bg_colours = PALETTE_BACKGROUND == background
    raw = distances[..., fg_colours].min(-1) < distances[..., bg_colours].min(-1)
    mask = clean_mask(raw)
    track = measure_track(mask)
    action, margin = action_of(track)
    return ClipScore(
        background_kind=BACKGROUND_KINDS[background],
        character_kind=CHARACTER_KINDS[character],
        action=action,
        mask=mask,
        background_share=float(bg_votes[background] / nearest.size),
        character_share=float(ch_votes[character] / nearest.size),
        background_purity=float(bg_votes[background] / max(bg_votes.sum(), 1)),
        character_purity=float(ch_votes[character] / max(ch_votes.sum(), 1)),
        character_area=float(mask.mean()),
        action_margin=float(margin),
        track=track,
    )


def score_many(videos) -> list[ClipScore]:
    return [score_clip(v) for v in videos]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def degrade(frames: np.ndarray, rng: np.random.Generator, blur: float = 1.0, noise: float = 8.0) -> np.ndarray:
    """Gaussian blur (sigma in pixels, per frame, edge-clamped) plus Gaussian noise: a stand-in for
    the softness of generated videos, for tolerance tests."""
    video = np.asarray(frames, np.float32)
    if blur > 0:
        radius = max(1, int(np.ceil(3 * blur)))
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / blur) ** 2)
        kernel /= kernel.sum()
        for axis in (1, 2):
            padded = np.pad(video, [(radius, radius) if a == axis else (0, 0) for a in range(4)], mode="edge")
            n = video.shape[axis]
            video = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    if noise > 0:
        video = video + rng.normal(0, noise, video.shape)
    return np.clip(video, 0, 255).round().astype(np.uint8)
