"""A procedural text-to-video world whose truth is known.

Short clips of a character acting over a static background. Kinds are named in text
(background, character, action); per-sample details are not (scenery layout, texture phase,
the character's pattern and accessory colour, start position, size), so two seeds of one prompt
differ the way two samples of a real model do. Every clip comes with its truth: the character
mask, character-local (u, v) coordinates of each character pixel (same u, v = same body point,
across frames and clips), and the background alone.

Two worlds share kinds, palette and shapes; a `WorldSpec` holds what differs:
- `V1` (the default, the shipped model's): 64 x 64 pixels, 17 frames -> 5 latent frames x 8 x 8
  tokens of 8 px; a large character over a nearly flat backdrop;
- `V2`: 96 x 96 pixels, 17 frames -> 5 x 12 x 12 tokens; a smaller character over per-seed
  scenery (3-6 objects per clip: trees, fences, cacti, boats, buildings, lamps...) whose layout,
  sizes and colour variants the text never names, so a consistent background is not free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorldSpec:
    """Everything about a world's geometry; kinds, palette and shapes are shared."""

    name: str
    size: int  # frame side in pixels
    frames: int  # frames per clip (4k + 1)
    token: int  # pixels per video token side (VAE x4 times patch 2)
    horizon: int  # sky above, ground below (pixel rows), +-3 per seed
    base_size: float  # character box side at scale 1
    feet: int  # baseline of the character's feet
    walk: float  # pixels a walk covers
    growth: float  # "comes closer" grows the character by this fraction
    jump: float  # jump height in pixels
    size_jitter: float = 0.08  # box side drawn in base_size * [1, 1 + size_jitter]
    scenery: str = "v1"  # which background renderer: "v1" flat backdrop, "v2" per-seed objects

    @property
    def grid(self) -> int:
        return self.size // self.token


V1 = WorldSpec("v1", size=64, frames=17, token=8, horizon=22, base_size=38, feet=60, walk=20, growth=0.4, jump=14)
V2 = WorldSpec("v2", size=96, frames=17, token=8, horizon=38, base_size=38, feet=90, walk=40, growth=0.4, jump=18,
               size_jitter=0.06, scenery="v2")
WORLDS = {w.name: w for w in (V1, V2)}


def get_world(world: "WorldSpec | str | None" = None) -> WorldSpec:
    """A WorldSpec from a spec, its name, or None (V1)."""
    if world is None:
        return V1
    if isinstance(world, WorldSpec):
        return world
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; valid: {', '.join(WORLDS)}")
    return WORLDS[world]


def world_of_size(size: int) -> WorldSpec:
    """The world whose frames have this side (64: V1, 96: V2); V1 for any other size."""
    return next((w for w in WORLDS.values() if w.size == size), V1)


# V1's values under their old names: code written before WorldSpec keeps working.
SIZE = V1.size
FRAMES = V1.frames
TOKEN = V1.token

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
HORIZON = V1.horizon  # sky above, ground below (pixel rows)
BASE_SIZE = V1.base_size  # character box side at scale 1
FEET = V1.feet  # baseline of the character's feet
WALK = V1.walk  # pixels a walk covers
GROWTH = V1.growth  # "comes closer" grows the character by 40%
ACCESSORY_COLOURS = [(30, 30, 30), (250, 200, 0), (0, 120, 40), (240, 120, 160)]  # the belt, per seed

# V2's scenery objects, per background kind: name -> colour variants (RGB). All are far from the
# character colours (and their 0.78 shade) and the accessory colours, so a pixel reader still
# tells character from scenery; `evaluate.py` adds them to the background kind's palette.
SCENERY_COLOURS = {
    "meadow": {"trunk": [(100, 70, 40), (85, 60, 45)], "foliage": [(35, 100, 30), (60, 125, 25), (25, 85, 60)],
               "bush": [(40, 140, 70), (75, 135, 35)], "fence": [(150, 110, 70), (125, 95, 65)]},
    "desert": {"cactus": [(40, 120, 90), (70, 125, 60)], "rock": [(150, 120, 90), (125, 105, 95)],
               "mesa": [(190, 125, 75), (175, 110, 80)], "sun": [(250, 235, 120)]},
    "ocean": {"hull": [(90, 70, 50), (70, 60, 80)], "sail": [(235, 150, 50), (245, 175, 95)],
              "rock": [(100, 95, 90), (80, 90, 85)], "cloud": [(185, 205, 235), (165, 190, 230)]},
    "city": {"building": [(55, 55, 75), (70, 50, 60), (40, 60, 70), (60, 65, 55)], "window": [(240, 210, 80)],
             "pole": [(95, 95, 110)], "lamp": [(255, 225, 140)], "star": [(200, 200, 230)]},
}


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
    accessory: tuple[float, float, float] | None = None  # the belt's RGB colour


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


def render_background(kind: str, rng: np.random.Generator, size: int | None = None,
                      world: WorldSpec | str | None = None) -> np.ndarray:
    """The scenery of one clip (float (S, S, 3)), drawn from rng."""
    world = get_world(world)
    size = world.size if size is None else size
    if world.scenery == "v2":
        return _scenery_v2(kind, rng, size, world)
    sky, ground = (np.array(c, np.float32) for c in BACKGROUND_COLOURS[kind])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    horizon = world.horizon + rng.integers(-3, 4)
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


# V2 scenery ----------------------------------------------------------------------------------------
SCENERY_OBJECTS = {"meadow": ("tree", "tree", "bush", "fence"), "desert": ("cactus", "cactus", "rock", "mesa"),
                   "ocean": ("boat", "boat", "rock", "cloud"), "city": ("building",)}


def _pick(rng, kind, part):
    variants = SCENERY_COLOURS[kind][part]
    return variants[int(rng.integers(len(variants)))]


def _scenery_v2(kind: str, rng: np.random.Generator, size: int, world: WorldSpec) -> np.ndarray:
    """Sky and ground as in V1, textured, and 3-6 objects per clip whose kind, place, size and colour
    variant come from the seed (the city: 3-6 buildings, 1-3 street lamps, stars)."""
    s = 1.25 * size / 96  # object sizes and depths, scaled with the frame
    sky, ground = (np.array(c, np.float32) for c in BACKGROUND_COLOURS[kind])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    horizon = int(round(world.horizon * size / world.size)) + int(rng.integers(-4, 5))
    image = np.where((y < horizon)[..., None], sky, ground)
    phase = rng.uniform(0, 2 * np.pi)

    def ellipse(cx, cy, rx, ry):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1

    def rect(left, top, width, height):
        return (x >= left) & (x < left + width) & (y >= top) & (y < top + height)

    if kind == "meadow":  # grass stripes, then trees, bushes and fences
        image = image * (1 + 0.08 * np.sin(x * 0.9 + phase) * (y >= horizon))[..., None]
    elif kind == "desert":  # dunes and a sun anywhere in the sky
        dune = horizon + 8 * s + 5 * s * np.sin(x * 0.09 + phase)
        image[(y > dune)] = image[(y > dune)] * 0.88
        r = rng.uniform(5, 9) * s
        image[ellipse(rng.uniform(10 * s, size - 10 * s), rng.uniform(r + 1, max(r + 2, horizon - r - 2)), r, r)] = \
            SCENERY_COLOURS["desert"]["sun"][0]
    elif kind == "ocean":  # waves
        waves = np.sin(x * 0.35 + y * 0.7 + phase) > 0.75
        image[waves & (y >= horizon + 2)] = (60, 110, 200)
    elif kind == "city":  # stars behind the buildings
        image[(rng.random((size, size)) < 0.01) & (y < horizon - 8)] = SCENERY_COLOURS["city"]["star"][0]

    count = int(rng.integers(3, 7))
    # back to front: objects farther down the ground are drawn later (nearer the viewer)
    objects = sorted(((SCENERY_OBJECTS[kind][int(rng.integers(len(SCENERY_OBJECTS[kind])))],
                       rng.uniform(-4 * s, size + 4 * s), rng.uniform(0, 1)) for _ in range(count)), key=lambda o: o[2])
    for name, cx, depth in objects:
        if name == "tree":
            base = horizon + depth * 14 * s
            height, crown = rng.uniform(10, 20) * s, rng.uniform(7, 12) * s
            height = min(height, base - 1.5 * crown)  # the crown stays inside the frame
            image[rect(cx - 2 * s, base - height, 4 * s, height)] = _pick(rng, kind, "trunk")
            image[ellipse(cx, base - height - crown * 0.6, crown, crown * 0.9)] = _pick(rng, kind, "foliage")
        elif name == "bush":
            image[ellipse(cx, horizon + depth * 16 * s, rng.uniform(6, 10) * s, rng.uniform(4, 6) * s)] = \
                _pick(rng, kind, "bush")
        elif name == "fence":
            base, width, height = horizon + 2 * s + depth * 12 * s, rng.uniform(24, 48) * s, rng.uniform(7, 11) * s
            gap, colour = rng.uniform(5, 8) * s, _pick(rng, kind, "fence")
            span = (x >= cx - width / 2) & (x < cx + width / 2)
            posts = span & ((x - cx) % gap < 1.6 * s) & (y >= base - height) & (y < base)
            rails = span & ((np.abs(y - (base - 0.75 * height)) < 1 * s) | (np.abs(y - (base - 0.35 * height)) < 1 * s))
            image[posts | rails] = colour
        elif name == "cactus":
            base, height, colour = horizon + depth * 16 * s, rng.uniform(14, 26) * s, _pick(rng, kind, "cactus")
            trunk = rect(cx - 2.5 * s, base - height, 5 * s, height) | ellipse(cx, base - height, 2.5 * s, 2.5 * s)
            arm_y = base - height * rng.uniform(0.45, 0.7)
            arms = (rect(cx - 8 * s, arm_y, 6 * s, 3 * s) | rect(cx - 8 * s, arm_y - 7 * s, 3 * s, 8 * s) |
                    rect(cx + 2 * s, arm_y + 3 * s, 6 * s, 3 * s) | rect(cx + 5 * s, arm_y - 4 * s, 3 * s, 8 * s))
            image[trunk | arms] = colour
        elif name == "rock":
            cy = horizon + depth * 22 * s if kind == "desert" else horizon + 3 * s + depth * 20 * s
            rx = rng.uniform(5, 11) * s
            image[ellipse(cx, cy, rx, rx * rng.uniform(0.5, 0.8)) & (y < cy + rx * 0.3)] = _pick(rng, kind, "rock")
        elif name == "mesa":
            width, height = rng.uniform(20, 40) * s, rng.uniform(8, 18) * s
            slope = (y - (horizon - height)) * 0.6
            image[(y >= horizon - height) & (y < horizon + 1) & (np.abs(x - cx) < width / 2 + slope)] = \
                _pick(rng, kind, "mesa")
        elif name == "boat":
            base, width = horizon + 3 * s + depth * 18 * s, rng.uniform(14, 24) * s
            hull = (y >= base - 4 * s) & (y < base) & (np.abs(x - cx) < width / 2 - (y - (base - 4 * s)) * 0.8)
            mast_h = rng.uniform(10, 18) * s
            sail = (y >= base - 4 * s - mast_h) & (y < base - 5 * s) & (x >= cx) & (
                x - cx < (y - (base - 4 * s - mast_h)) * width * 0.4 / mast_h)
            image[hull] = _pick(rng, kind, "hull")
            image[sail] = _pick(rng, kind, "sail")
        elif name == "cloud":
            cy, r, colour = rng.uniform(6 * s, max(7 * s, horizon - 10 * s)), rng.uniform(4, 7) * s, _pick(rng, kind, "cloud")
            image[ellipse(cx, cy, 2.2 * r, r) | ellipse(cx - 1.2 * r, cy + 0.3 * r, 1.3 * r, 0.8 * r) |
                  ellipse(cx + 1.3 * r, cy + 0.2 * r, 1.4 * r, 0.8 * r)] = colour
        elif name == "building":
            width, top = rng.uniform(12, 24) * s, rng.uniform(4 * s, horizon - 6 * s)
            left, bottom = cx - width / 2, horizon + 6 * s
            block = (x >= left) & (x < left + width) & (y >= top) & (y < bottom)
            image[block] = _pick(rng, kind, "building")
            wx, wy = rng.integers(3, 6), rng.integers(4, 7)
            windows = block & ((x - left) % wx < 1.5) & ((x - left) % wx >= 0.5) & ((y - top) % wy < 2) & (
                (y - top) % wy >= 1) & (rng.random((size, size)) < rng.uniform(0.35, 0.8)) & (y < bottom - 2)
            image[windows] = SCENERY_COLOURS["city"]["window"][0]
    if kind == "city":  # street lamps in front of the buildings
        for _ in range(int(rng.integers(1, 4))):
            cx, height = rng.uniform(4 * s, size - 4 * s), rng.uniform(16, 28) * s
            base = horizon + 8 * s
            image[rect(cx - 1 * s, base - height, 2 * s, height)] = SCENERY_COLOURS["city"]["pole"][0]
            image[ellipse(cx, base - height - 1.5 * s, 3 * s, 2.5 * s)] = SCENERY_COLOURS["city"]["lamp"][0]
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


def _motion(action: str, t: np.ndarray, start_x: float, size: float, world: WorldSpec | str | None = None):
    """Box left x, box top y and box side per frame."""
    world = get_world(world)
    side = np.full_like(t, size)
    x = np.full_like(t, start_x)
    lift = np.zeros_like(t)
    if action == "stand":
        lift = 0.8 * np.sin(t * 2 * np.pi)
    elif action == "left":
        x = start_x - world.walk * t
    elif action == "right":
        x = start_x + world.walk * t
    elif action == "jump":
        lift = world.jump * np.sin(np.pi * t)
    elif action == "closer":
        side = size * (1 + world.growth * t)
        x = start_x + size / 2 - side / 2  # grows around its centre, feet on the ground
    top = world.feet - side - lift
    return x, top, side


def _start_range(action: str, box: float, size: int, world: WorldSpec | str | None = None) -> tuple[float, float]:
    """Where the box may start so the character stays inside the frame for the whole action."""
    world = get_world(world)
    if action == "left":
        return size - box - 2, size - box - 1
    if action == "right":
        return 1, 2
    if action == "closer":
        end = box * (1 + world.growth)
        centre = (size / 2 - 2, size / 2 + 2) if end < size - 4 else (size / 2, size / 2)
        return centre[0] - box / 2, centre[1] - box / 2
    return 2, size - box - 2


def render_clip(background: str, character: str, action: str, seed: int, frames: int | None = None,
                size: int | None = None, world: WorldSpec | str | None = None,
                accessory: tuple[float, float, float] | None = None) -> Clip:
    """One clip of `world` (V1 by default; frames and size default to the world's). `accessory`: a belt
    colour to draw instead of the seed's own (a shot that keeps another clip's belt: the truth of a
    consistent shot, the evaluator's ceiling); every other draw stays the seed's."""
    world = get_world(world)
    frames = world.frames if frames is None else frames
    size = world.size if size is None else size
    _check(background, character, action)
    rng = np.random.default_rng([seed, list(BACKGROUNDS).index(background), list(CHARACTERS).index(character),
                                 list(ACTIONS).index(action)])
    scenery = render_background(background, rng, size, world)
    box = world.base_size * rng.uniform(1.0, 1 + world.size_jitter)
    start_x = rng.uniform(*_start_range(action, box, size, world))
    colour = np.array(CHARACTER_COLOURS[character], np.float32)
    pattern_freq, pattern_phase = rng.uniform(8, 14), rng.uniform(0, 2 * np.pi)
    pattern_kind = rng.integers(0, 2)  # stripes or dots
    drawn = rng.choice(ACCESSORY_COLOURS).astype(np.float32)
    accessory = drawn if accessory is None else np.asarray(accessory, np.float32)

    t = np.linspace(0, 1, frames)
    xs, tops, sides = _motion(action, t, start_x, box, world)
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
    return Clip(frames_u8, mask, coords, backdrop, background, character, action, seed,
                tuple(float(c) for c in accessory))


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
