"""A procedural text-to-video world whose truth is known.

Short clips of a character acting over a static background. Kinds are named in text
(background, character, action); per-sample details are not (scenery layout, texture phase,
the character's pattern and accessory colour, start position, size), so two seeds of one prompt
differ the way two samples of a real model do. Every clip comes with its truth: the character
mask, character-local (u, v) coordinates of each character pixel (same u, v = same body point,
across frames and clips), and the background alone.

Sizes fit the toy model: 64 x 64 pixels, 17 frames -> 5 latent frames x 8 x 8 tokens of 8 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 64
FRAMES = 17
TOKEN = 8

BACKGROUNDS = {"meadow": "a green meadow", "desert": "a sandy desert", "ocean": "a blue ocean", "city": "a night city"}
CHARACTERS = {"robot": "a red robot", "ghost": "a white ghost", "cat": "a purple cat", "blob": "a cyan blob"}
ACTIONS = {"stand": "stands still", "left": "walks to the left", "right": "walks to the right", "jump": "jumps",
           "closer": "comes closer"}

# Dominant colours, chosen far apart so kinds are separable by pixels even when blurred.
CHARACTER_COLOURS = {"robot": (215, 35, 35), "ghost": (240, 240, 240), "cat": (150, 60, 210), "blob": (20, 215, 215)}
BACKGROUND_COLOURS = {
    "meadow": ((150, 200, 240), (60, 160, 60)),  # sky, ground
    "desert": ((240, 215, 170), (215, 175, 100)),
    "ocean": ((100, 150, 220), (25, 60, 150)),
    "city": ((15, 20, 50), (45, 45, 60)),
}
HORIZON = 22  # sky above, ground below (pixel rows)
BASE_SIZE = 38  # character box side at scale 1
FEET = 60  # baseline of the character's feet
WALK = 20  # pixels a walk covers
GROWTH = 0.4  # "comes closer" grows the character by 40%


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 (F, S, S, 3)
    mask: np.ndarray  # bool (F, S, S)
    coords: np.ndarray  # float32 (F, S, S, 2): character-local (u, v), NaN off the character
    background: np.ndarray  # uint8 (F, S, S, 3): the background alone
    background_kind: str
    character_kind: str
    action: str
    seed: int


def texts(background: str, character: str, action: str) -> tuple[str, str, str]:
    _check(background, character, action)
    return BACKGROUNDS[background], CHARACTERS[character], ACTIONS[action]


def all_combinations() -> list[tuple[str, str, str]]:
    return [(b, c, a) for b in BACKGROUNDS for c in CHARACTERS for a in ACTIONS]


def split_combinations(holdout_fraction: float = 0.2, seed: int = 0):
    """Train / held-out combinations; every background, character and action kind stays in train."""
    combos = all_combinations()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(combos))
    heldout, train = [], set(combos)
    for i in order:
        if len(heldout) >= round(holdout_fraction * len(combos)):
            break
        combo = combos[i]
        rest = train - {combo}
        if all(any(c[k] == combo[k] for c in rest) for k in range(3)):
            train, heldout = rest, heldout + [combo]
    return sorted(train), sorted(heldout)


def _check(background, character, action):
    for key, table, name in ((background, BACKGROUNDS, "background"), (character, CHARACTERS, "character"),
                             (action, ACTIONS, "action")):
        if key not in table:
            raise ValueError(f"unknown {name} {key!r}; valid: {', '.join(table)}")


def render_background(kind: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    sky, ground = (np.array(c, np.float32) for c in BACKGROUND_COLOURS[kind])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    horizon = HORIZON + rng.integers(-3, 4)
    image = np.where((y < horizon)[..., None], sky, ground)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "meadow":  # grass stripes + bushes
        image = image * (1 + 0.08 * np.sin(x * 0.9 + phase) * (y >= horizon))[..., None]
        for _ in range(rng.integers(2, 5)):
            cx, cy, r = rng.uniform(0, size), rng.uniform(horizon - 2, horizon + 6), rng.uniform(3, 6)
            image[(x - cx) ** 2 + ((y - cy) * 1.5) ** 2 < r * r] = (30, 110, 40)
    elif kind == "desert":  # dunes + a sun
        dune = horizon + 6 + 4 * np.sin(x * 0.12 + phase)
        image[(y > dune)] = image[(y > dune)] * 0.88
        cx = rng.uniform(8, size - 8)
        image[(x - cx) ** 2 + (y - 8) ** 2 < 25] = (250, 235, 120)
    elif kind == "ocean":  # waves
        waves = np.sin(x * 0.5 + y * 0.9 + phase) > 0.75
        image[waves & (y >= horizon)] = (60, 110, 200)
        image[(y < horizon) & (np.abs(y - horizon + 4 + 2 * np.sin(x * 0.2 + phase)) < 1)] = (130, 170, 230)
    elif kind == "city":  # buildings with lit windows, stars
        for _ in range(rng.integers(4, 7)):
            left, width, top = rng.integers(0, size - 8), rng.integers(7, 14), rng.integers(6, horizon + 4)
            block = (x >= left) & (x < left + width) & (y >= top) & (y < horizon + 8)
            image[block] = (55, 55, 75)
            windows = block & ((x - left) % 4 == 2) & ((y - top) % 5 == 2) & (rng.random((size, size)) < 0.6)
            image[windows] = (240, 210, 80)
        stars = (rng.random((size, size)) < 0.01) & (y < 10)
        image[stars] = (200, 200, 230)
    return np.clip(image, 0, 255)


def character_shape(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of the character's silhouette in box-local (u, v) in [0, 1]^2 (v down)."""
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if kind == "robot":  # square head on a wide body
        head = (np.abs(u - 0.5) < 0.28) & (v < 0.38)
        body = (np.abs(u - 0.5) < 0.46) & (v > 0.34)
        return inside & (head | body)
    if kind == "ghost":  # round top, wavy hem
        top = (u - 0.5) ** 2 + (v - 0.42) ** 2 < 0.42**2
        skirt = (np.abs(u - 0.5) < 0.42) & (v >= 0.42) & (v < 0.92 + 0.08 * np.sin(u * 6 * np.pi))
        return inside & (top | skirt)
    if kind == "cat":  # oval body with two ears
        body = ((u - 0.5) / 0.5) ** 2 + ((v - 0.6) / 0.42) ** 2 < 1
        ears = ((np.abs(u - 0.27) < 0.1 * (v - 0.05) / 0.25) | (np.abs(u - 0.73) < 0.1 * (v - 0.05) / 0.25)) & (
            v > 0.05) & (v < 0.3)
        return inside & (body | ears)
    if kind == "blob":  # a round ball, slightly squashed
        return inside & (((u - 0.5) / 0.5) ** 2 + ((v - 0.55) / 0.45) ** 2 < 1)
    raise ValueError(kind)


def _motion(action: str, t: np.ndarray, start_x: float, size: float):
    """Box left x, box top y and box side per frame."""
    side = np.full_like(t, size)
    x = np.full_like(t, start_x)
    lift = np.zeros_like(t)
    if action == "stand":
        lift = 0.8 * np.sin(t * 2 * np.pi)
    elif action == "left":
        x = start_x - WALK * t
    elif action == "right":
        x = start_x + WALK * t
    elif action == "jump":
        lift = 14 * np.sin(np.pi * t)
    elif action == "closer":
        side = size * (1 + GROWTH * t)
        x = start_x + size / 2 - side / 2  # grows around its centre, feet on the ground
    top = FEET - side - lift
    return x, top, side


def _start_range(action: str, box: float, size: int) -> tuple[float, float]:
    """Where the box may start so the character stays inside the frame for the whole action."""
    if action == "left":
        return size - box - 2, size - box - 1
    if action == "right":
        return 1, 2
    if action == "closer":
        end = box * (1 + GROWTH)
        centre = (size / 2 - 2, size / 2 + 2) if end < size - 4 else (size / 2, size / 2)
        return centre[0] - box / 2, centre[1] - box / 2
    return 2, size - box - 2


def render_clip(background: str, character: str, action: str, seed: int, frames: int = FRAMES,
                size: int = SIZE) -> Clip:
    _check(background, character, action)
    rng = np.random.default_rng([seed, list(BACKGROUNDS).index(background), list(CHARACTERS).index(character),
                                 list(ACTIONS).index(action)])
    scenery = render_background(background, rng, size)
    box = BASE_SIZE * rng.uniform(1.0, 1.08)
    start_x = rng.uniform(*_start_range(action, box, size))
    colour = np.array(CHARACTER_COLOURS[character], np.float32)
    pattern_freq, pattern_phase = rng.uniform(8, 14), rng.uniform(0, 2 * np.pi)
    pattern_kind = rng.integers(0, 2)  # stripes or dots
    accessory = rng.choice([(30, 30, 30), (250, 200, 0), (0, 120, 40), (240, 120, 160)]).astype(np.float32)

    t = np.linspace(0, 1, frames)
    xs, tops, sides = _motion(action, t, start_x, box)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    video = np.empty((frames, size, size, 3), np.float32)
    mask = np.empty((frames, size, size), bool)
    coords = np.full((frames, size, size, 2), np.nan, np.float32)
    for f in range(frames):
        u, v = (x - xs[f]) / sides[f], (y - tops[f]) / sides[f]
        inside = character_shape(character, u, v)
        shade = np.where(
            (np.sin(u * pattern_freq + pattern_phase) > 0.6) if pattern_kind == 0
            else ((np.sin(u * pattern_freq + pattern_phase) * np.sin(v * pattern_freq)) > 0.55), 0.78, 1.0)
        body = colour * shade[..., None]
        eyes = ((u - 0.38) ** 2 + (v - 0.25) ** 2 < 0.004) | ((u - 0.62) ** 2 + (v - 0.25) ** 2 < 0.004)
        band = (v > 0.5) & (v < 0.58)  # a belt/collar whose colour the text never names
        body = np.where(eyes[..., None], (10, 10, 10), np.where(band[..., None], accessory, body))
        video[f] = np.where(inside[..., None], body, scenery)
        mask[f] = inside
        coords[f][inside] = np.stack([u[inside], v[inside]], -1)
    frames_u8 = np.clip(video, 0, 255).round().astype(np.uint8)
    backdrop = np.broadcast_to(np.clip(scenery, 0, 255).round().astype(np.uint8), frames_u8.shape).copy()
    return Clip(frames_u8, mask, coords, backdrop, background, character, action, seed)


def token_mask(mask: np.ndarray, token: int = TOKEN) -> np.ndarray:
    """(F, S/token, S/token): a token is foreground when the character covers >= 50% of it."""
    f, h, w = mask.shape
    cover = mask.reshape(f, h // token, token, w // token, token).mean(axis=(2, 4))
    return cover >= 0.5


def latent_token_mask(mask: np.ndarray, token: int = TOKEN, temporal: int = 4) -> np.ndarray:
    """(latent frames, S/token, S/token): the character mask on the video token grid the model sees.

    The CogVideoX VAE turns frame 0 into latent frame 0 and frames 4k-3..4k into latent frame k; a
    token is foreground when the character covers >= 50% of its pixels over those frames."""
    f, h, w = mask.shape
    groups = [mask[:1]] + [mask[start : start + temporal] for start in range(1, f, temporal)]
    cover = np.stack([g.reshape(len(g), h // token, token, w // token, token).mean(axis=(0, 2, 4)) for g in groups])
    return cover >= 0.5
