"""The toy world: deterministic, detailed beyond its text, with consistent truth."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bachvid.toy import world


@settings(max_examples=15, deadline=None)
@given(combo=st.sampled_from(world.all_combinations()), seed=st.integers(0, 2**30))
def test_clips_are_deterministic_and_truth_is_consistent(combo, seed):
    a, b = world.render_clip(*combo, seed=seed), world.render_clip(*combo, seed=seed)
    assert np.array_equal(a.frames, b.frames)
    assert a.frames.shape == (world.FRAMES, world.SIZE, world.SIZE, 3)
    assert np.array_equal(np.isnan(a.coords[..., 0]), ~a.mask)  # coords exactly on the character
    assert np.array_equal(a.frames[~a.mask], a.background[~a.mask])  # background alone matches off the character
    cells = world.token_mask(a.mask).sum(axis=(1, 2))
    assert cells.min() >= 12  # masks and matches stay measurable in every frame
    edges = a.mask[:, :, 0] | a.mask[:, :, -1]
    assert not edges.any() and not a.mask[:, 0, :].any()  # inside the frame throughout


def test_seeds_change_details_not_kinds():
    a = world.render_clip("meadow", "robot", "stand", seed=1)
    b = world.render_clip("meadow", "robot", "stand", seed=2)
    assert not np.array_equal(a.background, b.background)  # scenery layout differs
    assert (a.background_kind, a.character_kind) == (b.background_kind, b.character_kind)


@pytest.mark.parametrize("action, check", [
    ("left", lambda dx, dy, grow: dx < -15), ("right", lambda dx, dy, grow: dx > 15),
    ("jump", lambda dx, dy, grow: dy > 10), ("closer", lambda dx, dy, grow: grow > 1.6),
    ("stand", lambda dx, dy, grow: abs(dx) < 1 and dy < 2 and abs(grow - 1) < 0.1),
])
def test_actions_move_the_character_as_named(action, check):
    clip = world.render_clip("ocean", "ghost", action, seed=3)
    m = clip.mask
    xs = [np.nonzero(f.any(0))[0].mean() for f in m]
    tops = [np.nonzero(f.any(1))[0].min() for f in m]
    dx, dy, grow = xs[-1] - xs[0], tops[0] - min(tops), m[-1].sum() / m[0].sum()
    assert check(dx, dy, grow), (dx, dy, grow)


def test_same_body_point_keeps_its_coordinates_across_frames():
    clip = world.render_clip("desert", "cat", "right", seed=4)
    # the left eye's centre (u, v) = (0.38, 0.25) lands on a black pixel in every frame
    for f in range(world.FRAMES):
        u, v = clip.coords[f, ..., 0], clip.coords[f, ..., 1]
        near = np.nanargmin(np.where(clip.mask[f], (u - 0.38) ** 2 + (v - 0.25) ** 2, np.nan))
        assert clip.frames[f].reshape(-1, 3)[near].max() < 40


def test_unknown_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="meadow"):
        world.render_clip("jungle", "robot", "stand", 0)


def test_split_keeps_every_kind_in_training_and_is_disjoint():
    train, held = world.split_combinations()
    assert held and not set(train) & set(held) and len(train) + len(held) == len(world.all_combinations())
    for k in range(3):
        assert {c[k] for c in train} == {c[k] for c in world.all_combinations()}


def test_a_clip_can_wear_another_clips_belt_and_nothing_else_changes():
    """The truth of a consistent shot (scripts/belt_ceiling.py): the identity's belt on the shot's
    action, every other seeded detail the shot's own."""
    from bachvid.toy import world

    identity = world.render_clip("ocean", "cat", "stand", 5, world="v2")
    own = world.render_clip("ocean", "cat", "jump", 5, world="v2")
    kept = world.render_clip("ocean", "cat", "jump", 5, world="v2", accessory=identity.accessory)
    assert own.accessory != identity.accessory and kept.accessory == identity.accessory
    changed = (own.frames != kept.frames).any(axis=-1)
    assert changed.any() and not changed[~own.mask].any()  # only character pixels (the belt band) change
    assert np.array_equal(own.mask, kept.mask) and np.array_equal(own.background, kept.background)
    band = kept.frames[changed]
    assert np.abs(band.astype(float) - np.array(identity.accessory)).max() <= 1
