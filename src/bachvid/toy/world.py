"""A procedural text-to-video world whose truth is known.

Short clips of one character acting in front of a static background, seen by a static camera.
The text names three kinds: the background, the character and the action. Per-sample details are
*not* named (scenery layout, texture phase, the character's body pattern and belt colour, its start
position, a small size jitter, how far it walks or how high it jumps), so two seeds of one prompt
differ the way two samples of a real model do, and one seed is bit-identical every time.

Every clip carries its truth: the character mask, character-local (u, v) coordinates of each
character pixel (same u, v = same body point, across frames and across clips) and the background
alone. Sizes fit the toy model: 64 x 64 pixels, 13 frames -> 4 latent frames of 8 x 8 tokens
(CogVideoX VAE: x4 time, x4 space; patch 2 -> one token covers 8 x 8 pixels).

Kinds are separable by pixels: every character colour is far from every background colour, every
background has its own dominant colours and scenery, and the silhouettes differ (robot: boxy head,
body and legs; ghost: dome with a wavy hem; cat: head with ears on an oval body; blob: a ball).
`evaluate.py` reads clips back from pixels alone using the palette constants defined here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 64  # frames are SIZE x SIZE RGB
FRAMES = 13  # frames per clip (-> 4 latent frames through a CogVideoX VAE, temporal compression 4)
TOKEN = 8  # one video token of the model covers TOKEN x TOKEN pixels (VAE x4 spatial, patch 2)

BACKGROUNDS = {"meadow": "a green meadow", "desert": "a sandy desert", "ocean": "a blue ocean", "city": "a night city"}
CHARACTERS = {"robot": "a red robot", "ghost": "a white ghost", "cat": "a purple cat", "blob": "a cyan blob"}
ACTIONS = {"stand": "stands still", "left": "walks to the left", "right": "walks to the right", "jump": "jumps",
           "closer": "comes closer"}

# Colours ---------------------------------------------------------------------------------------
# (sky, ground) of each background; scenery colours follow in BACKGROUND_PALETTES.
BACKGROUND_COLOURS = {
    "meadow": ((150, 200, 240), (70, 165, 60)),
    "desert": ((245, 212, 150), (215, 172, 98)),
    "ocean": ((110, 160, 225), (25, 65, 155)),
    "city": ((15, 20, 50), (50, 50, 62)),
}
MEADOW_STRIPES = 0.08  # grass stripes modulate the ground colour by +-8%
BUSH = (35, 115, 45)
HILL = (115, 190, 95)
DUNE_SHADE = 0.88  # dunes darken the sand
SUN = (250, 235, 120)
WAVE = (50, 100, 190)
FAR_SEA = (70, 120, 200)
BUILDING = (60, 58, 85)
WINDOW = (240, 210, 80)
STAR = (130, 130, 180)
# Every colour a background pixel of each kind can take (texture modulation lies between these).
BACKGROUND_PALETTES = {
    "meadow": (BACKGROUND_COLOURS["meadow"][0], BACKGROUND_COLOURS["meadow"][1],
               tuple(round(c * (1 + MEADOW_STRIPES)) for c in BACKGROUND_COLOURS["meadow"][1]),
               tuple(round(c * (1 - MEADOW_STRIPES)) for c in BACKGROUND_COLOURS["meadow"][1]), BUSH, HILL),
    "desert": (BACKGROUND_COLOURS["desert"][0], BACKGROUND_COLOURS["desert"][1],
               tuple(round(c * DUNE_SHADE) for c in BACKGROUND_COLOURS["desert"][1]), SUN),
    "ocean": (BACKGROUND_COLOURS["ocean"][0], BACKGROUND_COLOURS["ocean"][1], WAVE, FAR_SEA),
    "city": (BACKGROUND_COLOURS["city"][0], BACKGROUND_COLOURS["city"][1], BUILDING, WINDOW, STAR),
}
CHARACTER_COLOURS = {"robot": (215, 35, 35), "ghost": (245, 245, 245), "cat": (150, 60, 210), "blob": (20, 215, 215)}
PATTERN_SHADE = 0.82  # stripes / dots on the body are the body colour times this
ACCESSORY_COLOURS = ((255, 140, 0), (255, 110, 190), (170, 255, 0), (255, 215, 0))  # the belt; never named
EYE = (10, 10, 10)

# Geometry (pixels) -----------------------------------------------------------------------------
HORIZON = 24  # sky above, ground below; +-3 per seed
FEET = 63  # the character's feet rest on this line (one row above the bottom edge)
BASE_HEIGHT = 38.0  # character box at scale 1 (times a per-seed jitter in SIZE_JITTER)
BASE_WIDTH = 36.0
SIZE_JITTER = (0.97, 1.03)
WALK = (20.0, 24.0)  # how far "left" / "right" walk over the clip
JUMP = (12.0, 16.0)  # how high "jump" lifts at its apex
BOB = 0.75  # idle bob of "stand"
GROWTH = 1.55  # "comes closer": scale 1 -> GROWTH, feet anchored
MARGIN = 1.0  # pixels kept free at the frame's left and right edges


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 (F, S, S, 3)
    mask: np.ndarray  # bool (F, S, S): character pixels
    coords: np.ndarray  # float32 (F, S, S, 2): character-local (u, v) in [0, 1]^2, NaN off the character
    background: np.ndarray  # uint8 (F, S, S, 3): the background alone
    background_kind: str
    character_kind: str
    action: str
    seed: int


# Vocabulary ------------------------------------------------------------------------------------
def _check(background: str, character: str, action: str) -> None:
    for key, table, name in ((background, BACKGROUNDS, "background"), (character, CHARACTERS, "character"),
                             (action, ACTIONS, "action")):
        if key not in table:
            raise ValueError(f"unknown {name} {key!r}; valid {name} keys: {', '.join(table)}")


def texts(background: str, character: str, action: str) -> tuple[str, str, str]:
    """The text phrases (background, character, action) of a combination of keys."""
    _check(background, character, action)
    return BACKGROUNDS[background], CHARACTERS[character], ACTIONS[action]


def all_combinations() -> list[tuple[str, str, str]]:
    return [(b, c, a) for b in BACKGROUNDS for c in CHARACTERS for a in ACTIONS]


def split_combinations(holdout_fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """(train, held_out) combinations, disjoint and sorted; every background, character and action
    kind still appears in train, so held-out combinations test composition, not new words."""
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must lie in [0, 1), got {holdout_fraction}")
    combos = all_combinations()
    target = round(holdout_fraction * len(combos))
    train, heldout = set(combos), []
    for i in np.random.default_rng(seed).permutation(len(combos)):
        if len(heldout) >= target:
            break
        combo = combos[i]
        rest = train - {combo}
        if all(any(c[k] == combo[k] for c in rest) for k in range(3)):
            train, heldout = rest, heldout + [combo]
    return sorted(train), sorted(heldout)


# Backgrounds -----------------------------------------------------------------------------------
def _grid(size: int):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y + 0.5, x + 0.5  # pixel centres


def render_background(kind: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """float32 (size, size, 3): one static background; its layout and texture phase come from rng."""
    y, x = _grid(size)
    s = size / SIZE
    sky_c, ground_c = (np.array(c, np.float32) for c in BACKGROUND_COLOURS[kind])
    horizon = (HORIZON + rng.integers(-3, 4)) * s
    sky, ground = y < horizon, y >= horizon
    image = np.where(sky[..., None], sky_c, ground_c).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "meadow":  # rolling hills on the horizon, grass stripes, bushes
        hills = sky & (y > horizon - 4 * s - 3 * s * np.sin(x / (s * rng.uniform(5, 9)) + phase))
        image[hills] = HILL
        freq = rng.uniform(0.6, 1.1) / s
        image *= (1 + MEADOW_STRIPES * np.sin(x * freq + y * 0.3 / s + phase) * ground)[..., None]
        for _ in range(rng.integers(2, 5)):
            cx, cy, r = rng.uniform(0, size), horizon + rng.uniform(-1, 5) * s, rng.uniform(3, 6) * s
            image[(x - cx) ** 2 + ((y - cy) * 1.4) ** 2 < r * r] = BUSH
    elif kind == "desert":  # a sun, far dunes, dune shadows on the sand
        cx, cy = rng.uniform(6, size - 6), rng.uniform(5, max(6, horizon - 8 * s))
        image[(x - cx) ** 2 + (y - cy) ** 2 < (4.5 * s) ** 2] = SUN
        wave = rng.uniform(0.08, 0.16) / s
        dune = horizon + (8 + 4 * np.sin(x * wave + phase)) * s
        far = sky & (y > horizon - 3 * s * (1 + np.sin(x * wave * 1.7 + 2 * phase)))
        image[(y > dune) | far] = image[(y > dune) | far] * DUNE_SHADE
    elif kind == "ocean":  # a swell of far sea on the horizon, diagonal waves on the sea
        image[sky & (y > horizon - 2.5 * s - 1.5 * s * np.sin(x * 0.2 / s + phase))] = FAR_SEA
        angle = rng.uniform(0.6, 1.2)
        waves = np.sin((x * 0.5 * angle + y * 0.9) / s + phase) > 0.75
        image[waves & ground] = WAVE
    elif kind == "city":  # buildings with lit windows, stars
        windows_lit = rng.random((size, size)) < 0.6
        for _ in range(rng.integers(4, 7)):
            left, width = rng.uniform(-4, size - 6), rng.uniform(7, 14) * s
            top = rng.uniform(6, horizon / s + 2) * s
            block = (x >= left) & (x < left + width) & (y >= top) & (y < horizon + 6 * s)
            image[block] = BUILDING
            image[block & ((x - left) % (4 * s) < s) & ((y - top) % (5 * s) < s) & windows_lit] = WINDOW
        stars = (rng.random((size, size)) < 0.012) & (y < min(horizon, 12 * s)) & (image[..., 2] < 60)
        image[stars] = STAR
    return np.clip(image, 0, 255)


# Characters ------------------------------------------------------------------------------------
def character_shape(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a character's silhouette in box-local (u, v) (v down, feet at v = 1)."""
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    du = np.abs(u - 0.5)
    if kind == "robot":  # square head, wide body, two legs
        head = (du < 0.3) & (v < 0.32)
        body = (du < 0.5) & (v >= 0.28) & (v < 0.84)
        legs = (np.abs(du - 0.26) < 0.15) & (v >= 0.8)
        return inside & (head | body | legs)
    if kind == "ghost":  # round dome, straight sides, wavy hem
        dome = du**2 + (v - 0.5) ** 2 < 0.25
        skirt = (du < 0.5) & (v >= 0.5) & (v < 0.93 + 0.07 * np.sin(u * 6 * np.pi + np.pi / 2))
        return inside & (dome | skirt)
    if kind == "cat":  # rounded body, round head, two pointed ears
        body = (du / 0.5) ** 3 + (np.abs(v - 0.67) / 0.33) ** 3 < 1
        head = du**2 + (v - 0.4) ** 2 < 0.33**2
        ears = (np.abs(du - 0.2) < 0.13 * v / 0.2) & (v < 0.2)
        return inside & (body | head | ears)
    if kind == "blob":  # a soft square ball
        return inside & ((du / 0.5) ** 2.6 + (np.abs(v - 0.5) / 0.5) ** 2.6 < 1)
    raise ValueError(f"unknown character {kind!r}; valid character keys: {', '.join(CHARACTERS)}")


def _start_range(action: str, width: float, size: int, walk: float, margin: float) -> tuple[float, float]:
    """Where the box's left edge may start so the character stays inside for the whole action."""
    lo, hi = margin, size - margin - width
    if action == "left":
        return lo + walk, hi
    if action == "right":
        return lo, hi - walk
    if action == "closer":  # grows around its centre: the final box must fit
        end = width * GROWTH
        return lo + (end - width) / 2, size - margin - end + (end - width) / 2
    return lo, hi


def _motion(action: str, t: np.ndarray, left: float, width: float, height: float, walk: float, jump: float,
            size: int):
    """Per frame: box left x, box top y, box width, box height (float32 arrays of len(t))."""
    s = size / SIZE
    scale = np.ones_like(t)
    x = np.full_like(t, left)
    lift = np.zeros_like(t)
    if action == "stand":
        lift = BOB * s * (1 - np.cos(2 * np.pi * t)) / 2
    elif action == "left":
        x = left - walk * t
    elif action == "right":
        x = left + walk * t
    elif action == "jump":
        lift = jump * np.sin(np.pi * t)
    elif action == "closer":
        scale = 1 + (GROWTH - 1) * t
        x = left + width / 2 - width * scale / 2
    w, h = width * scale, height * scale
    return x, FEET * s - h - lift, w, h


def render_clip(background: str, character: str, action: str, seed: int, frames: int = FRAMES,
                size: int = SIZE) -> Clip:
    """One clip of `character` doing `action` in front of `background` (keys of the vocabulary dicts).

    Deterministic in all arguments; unnamed details (scenery, pattern, belt colour, start position,
    size, walk length, jump height) are drawn from `seed`."""
    _check(background, character, action)
    if frames < 2 or size < 16:
        raise ValueError(f"need frames >= 2 and size >= 16, got frames={frames}, size={size}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, list(BACKGROUNDS).index(background),
                                 list(CHARACTERS).index(character), list(ACTIONS).index(action)])
    scenery = render_background(background, rng, size)
    s = size / SIZE
    jitter = rng.uniform(*SIZE_JITTER)
    height, width = BASE_HEIGHT * jitter * s, BASE_WIDTH * jitter * s
    walk, jump = rng.uniform(*WALK) * s, rng.uniform(*JUMP) * s
    left = rng.uniform(*_start_range(action, width, size, walk, MARGIN * s))
    pattern = rng.integers(0, 4)  # plain, vertical stripes, horizontal stripes, dots
    freq, phase_u, phase_v = rng.uniform(14, 24), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
    accessory = np.array(ACCESSORY_COLOURS[rng.integers(len(ACCESSORY_COLOURS))], np.float32)
    belt = rng.uniform(0.5, 0.6)

    t = np.linspace(0, 1, frames, dtype=np.float32)
    xs, tops, ws, hs = _motion(action, t, left, width, height, walk, jump, size)
    centres = np.arange(size, dtype=np.float32) + 0.5
    u = (centres[None, None, :] - xs[:, None, None]) / ws[:, None, None]  # (F, 1, S): separable,
    v = (centres[None, :, None] - tops[:, None, None]) / hs[:, None, None]  # (F, S, 1): broadcast late
    inside = character_shape(character, u, v)  # (F, S, S)
    if pattern == 0:
        shaded = np.zeros((1, 1, 1), bool)
    elif pattern == 1:
        shaded = np.sin(u * freq + phase_u) > 0.5
    elif pattern == 2:
        shaded = np.sin(v * freq + phase_v) > 0.5
    else:
        shaded = np.sin(u * freq + phase_u) * np.sin(v * freq + phase_v) > 0.5
    # Paint by label (0 background, 1 body, 2 shaded body, 3 belt, 4 eye) through a colour table.
    colour = np.array(CHARACTER_COLOURS[character], np.float32)
    table = np.array([(0, 0, 0), colour, colour * PATTERN_SHADE, accessory, EYE], np.float32).round().astype(np.uint8)
    eyes = ((np.abs(u - 0.5) - 0.12) ** 2 + ((v - 0.2) * (width / height)) ** 2) < 0.055**2
    belt_band = (v >= belt) & (v < belt + 0.08)
    label = np.where(eyes, 4, np.where(belt_band, 3, np.where(shaded, 2, 1))).astype(np.uint8)
    label = np.where(inside, label, np.uint8(0))
    backdrop = np.clip(scenery, 0, 255).round().astype(np.uint8)
    video = np.where(inside[..., None], table[label], backdrop[None])
    coords = np.empty(inside.shape + (2,), np.float32)
    coords[..., 0] = np.where(inside, u, np.nan)
    coords[..., 1] = np.where(inside, v, np.nan)
    return Clip(frames=video, mask=inside, coords=coords,
                background=np.ascontiguousarray(np.broadcast_to(backdrop, video.shape)),
                background_kind=background, character_kind=character, action=action, seed=int(seed))


def token_mask(mask: np.ndarray, token: int = TOKEN) -> np.ndarray:
    """(F, H/token, W/token) bool: a token is foreground when the character covers >= 50% of it."""
    mask = np.asarray(mask, bool)
    f, h, w = mask.shape
    if h % token or w % token:
        raise ValueError(f"mask size {h}x{w} is not a multiple of token {token}")
    cover = mask.reshape(f, h // token, token, w // token, token).mean(axis=(2, 4))
    return cover >= 0.5
