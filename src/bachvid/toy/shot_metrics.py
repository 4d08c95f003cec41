"""How well a shot keeps its identity, from pixels only (the toy evaluator's palette and masks).

Shared by `python -m bachvid.toy.results` (the benchmark) and `bachvid evaluate` (a folder of
generated stories). For an identity video and one shot:

- `background_psnr`: PSNR (dB, peak 255) of the shot against the identity over the pixels that
  are background in both (the evaluator's character masks); only meaningful when the shot was
  asked for the identity's background;
- `histogram_distance`: 1 - intersection of the character pixels' colour histograms (6 bins per
  channel; 0 = the same colours);
- `belt_kept`: the shot's character still wears the identity's accessory (belt) colour. The world
  draws that colour per seed from `ACCESSORY_COLOURS` and the text never names it. It is read
  from pixels where the world puts it: per frame, among the rows of the character's box between
  42% and 66% of its height, the row whose inner pixels' median colour lies farthest from the
  character's body colours; the video's belt colour is the median over frames. Kept: the shot's
  belt colour lies within BELT_MATCH (RGB distance) of the identity's; the model draws a colour
  the same way in both, so no palette class is needed. None when the identity's belt is
  unreadable (no row differs from the body by BELT_MIN_CONTRAST);
- `action_right`: the evaluator reads the action that was asked for.
"""

from __future__ import annotations

import numpy as np

from . import world
from .evaluate import SHADE, ClipScore, score_clip

# The accessory colours world.render_clip draws from (kept in step by tests/test_toy_results.py).
ACCESSORY_COLOURS = ((30, 30, 30), (250, 200, 0), (0, 120, 40), (240, 120, 160))
ACCESSORY_NAMES = ("black", "yellow", "green", "pink")
BELT_BAND = (0.42, 0.66)  # where in the character's box (share of its height) the belt row is looked for
BELT_MIN_CONTRAST = 40.0  # RGB distance from the body colours a belt must have
BELT_MATCH = 50.0  # RGB distance within which the shot's belt is the identity's colour


def colour_histogram(frames: np.ndarray, mask: np.ndarray, bins: int = 6) -> np.ndarray:
    pixels = np.asarray(frames)[mask].astype(np.int64) * bins // 256
    index = (pixels[:, 0] * bins + pixels[:, 1]) * bins + pixels[:, 2]
    hist = np.bincount(index, minlength=bins**3).astype(np.float64)
    return hist / max(hist.sum(), 1)


def belt_colour(frames: np.ndarray, mask: np.ndarray, character_kind: str) -> np.ndarray | None:
    """The character's belt colour (float RGB), or None when no row of the belt band stands out
    from the body colours (see the module docstring)."""
    frames, mask = np.asarray(frames), np.asarray(mask, bool)
    body = np.array(world.CHARACTER_COLOURS[character_kind], np.float32)
    bodies = np.stack([body, body * SHADE])
    colours = []
    for frame, m in zip(frames, mask):
        ys = np.nonzero(m.any(axis=1))[0]
        if len(ys) < 8:
            continue
        top, height = ys.min(), ys.max() + 1 - ys.min()
        best = None
        for y in range(top + int(BELT_BAND[0] * height), top + int(BELT_BAND[1] * height) + 1):
            row = np.nonzero(m[y])[0]
            inner = row[(row > row.min() + 1) & (row < row.max() - 1)] if len(row) else row
            if len(inner) < 3:
                continue
            colour = np.median(frame[y, inner].astype(np.float32), axis=0)
            contrast = float(np.sqrt(((bodies - colour) ** 2).sum(-1)).min())
            if best is None or contrast > best[0]:
                best = (contrast, colour)
        if best is not None:
            colours.append(best)
    if not colours:
        return None
    colour = np.median(np.array([c for _, c in colours]), axis=0)
    contrast = float(np.sqrt(((bodies - colour) ** 2).sum(-1)).min())
    return colour if contrast >= BELT_MIN_CONTRAST else None


def belt_distance(identity_belt, shot_belt) -> float | None:
    """RGB distance between two read belt colours (None when either is unreadable); kept when <= BELT_MATCH."""
    if identity_belt is None or shot_belt is None:
        return None
    return float(np.sqrt(((shot_belt - identity_belt) ** 2).sum()))


def belt_name(colour) -> str | None:
    """The world's accessory colour nearest to a read belt colour (for reports)."""
    if colour is None:
        return None
    return ACCESSORY_NAMES[int(((np.array(ACCESSORY_COLOURS, np.float32) - colour) ** 2).sum(-1).argmin())]


def background_psnr(identity_frames, shot_frames, identity_mask, shot_mask) -> float | None:
    both = ~np.asarray(identity_mask, bool) & ~np.asarray(shot_mask, bool)
    if not both.any():
        return None
    diff = np.asarray(identity_frames, np.float32)[both] - np.asarray(shot_frames, np.float32)[both]
    mse = float((diff**2).mean())
    return float(10 * np.log10(255.0**2 / max(mse, 1e-3)))


def compare(identity_frames: np.ndarray, shot_frames: np.ndarray, action: str | None, shared_background: bool,
            identity_score: ClipScore | None = None, identity_belt="read") -> dict:
    """The metrics of one shot against its identity. action: the world's action key asked for
    (None: not scored); identity_belt: the identity's belt colour ("read": read it here; None:
    unreadable)."""
    ident = identity_score or score_clip(identity_frames)
    shot = score_clip(shot_frames)
    if isinstance(identity_belt, str):
        identity_belt = belt_colour(identity_frames, ident.mask, ident.character_kind)
    shot_belt = belt_colour(shot_frames, shot.mask, ident.character_kind)
    distance = belt_distance(identity_belt, shot_belt)
    similarity = float(np.minimum(colour_histogram(identity_frames, ident.mask),
                                  colour_histogram(shot_frames, shot.mask)).sum())
    return {
        "background_psnr": background_psnr(identity_frames, shot_frames, ident.mask, shot.mask)
        if shared_background else None,
        "histogram_distance": 1.0 - similarity,
        "belt_kept": None if identity_belt is None else float(distance is not None and distance <= BELT_MATCH),
        "belt_distance": distance,
        "identity_belt": belt_name(identity_belt),
        "shot_belt": belt_name(shot_belt),
        "action_right": None if action is None else float(shot.action == action),
        "action_read": shot.action,
        "character_kept": float(shot.character_kind == ident.character_kind),
    }


METRICS = ("background_psnr", "histogram_distance", "belt_kept", "action_right")
