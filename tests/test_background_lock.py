"""The background lock (beyond the paper): with `background_latents_until`, a shot's latents at
background-in-both tokens follow the identity's for that share of the schedule. Checked on tiny
random models (float32): locked tokens carry the identity's latents exactly while the lock lasts
and are free after it, every identity mode gives the same shots, switched backgrounds are never
locked, and each backbone's token -> latent mapping is the one its patch embedding uses."""

import pytest
import torch

from bachvid.backbones.tiny import tiny_wan_pipeline
from bachvid.method.config import BachVidConfig
from conftest import make_story

pytestmark = pytest.mark.usefixtures("one_thread")

ACTIONS = ("stands still", "walks to the left", "jumps")


def run(pipe, settings, mode="cache", group=1, story=None, **knobs):
    config = BachVidConfig(**knobs)
    return list(pipe.generate(story or make_story(actions=ACTIONS), settings, config, identity_mode=mode,
                              group=group, progress=False))


def locked_latents(pipe, identity, shot):
    keep = ~(torch.from_numpy(identity.mask).bool() | torch.from_numpy(shot.mask).bool())
    return pipe.backbone.latent_mask(keep).expand_as(shot.latents), keep


def test_locked_to_the_end_the_background_is_the_identitys(tiny_pipe, settings):
    identity, *shots = run(tiny_pipe, settings, background_latents_until=1.0)
    for shot in shots:
        where, keep = locked_latents(tiny_pipe, identity, shot)
        assert 0 < keep.sum() < keep.numel(), "the test needs locked and free tokens"
        assert torch.equal(shot.latents[where], identity.latents[where])
        assert (shot.latents[~where] - identity.latents[~where]).abs().max() > 1e-3  # the character is the shot's


def test_a_lock_that_ends_leaves_the_rest_of_the_run_free(tiny_pipe, settings):
    identity, *shots = run(tiny_pipe, settings, background_latents_until=0.5)
    _, *unlocked = run(tiny_pipe, settings)
    for shot, plain in zip(shots, unlocked):
        where, _ = locked_latents(tiny_pipe, identity, shot)
        assert (shot.latents - plain.latents).abs().max() > 1e-3  # the lock changed the shot ...
        assert (shot.latents[where] - identity.latents[where]).abs().max() > 1e-4  # ... and then let go


@pytest.mark.parametrize("mode,group", [("replay", 1), ("lockstep", 2)])
def test_every_identity_mode_locks_the_same(tiny_pipe, settings, mode, group):
    cached = run(tiny_pipe, settings, background_latents_until=0.6)
    other = run(tiny_pipe, settings, mode, group, background_latents_until=0.6)
    for a, b in zip(cached, other):
        assert (a.latents - b.latents).abs().max() <= 1e-5, (mode, a.role, a.index)


def test_a_saved_identity_locks_as_the_live_one(tiny_pipe, settings, tmp_path):
    story = make_story(actions=ACTIONS)
    config = BachVidConfig(background_latents_until=0.6)
    path = tmp_path / "robot.bvid"
    tiny_pipe.save_identity(story, path, settings, config)
    saved = tiny_pipe.load_identity(path, settings, config)
    later = list(tiny_pipe.generate(story, settings, config, identity=saved, identity_mode="replay", progress=False))
    live = run(tiny_pipe, settings, background_latents_until=0.6)
    for a, b in zip(live[1:], later[1:]):
        assert (a.latents - b.latents).abs().max() <= 1e-5


def test_switched_backgrounds_are_never_locked(tiny_pipe, settings):
    story = make_story(actions=("stands still", "jumps"), backgrounds=["a green meadow", "a sandy desert"],
                       shared_background=False)
    locked = run(tiny_pipe, settings, story=story, background_latents_until=1.0)
    plain = run(tiny_pipe, settings, story=story)
    for a, b in zip(locked, plain):
        assert torch.equal(a.latents, b.latents)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_the_lock_is_a_fraction_of_the_schedule(value):
    with pytest.raises(ValueError, match="background_latents_until"):
        BachVidConfig(background_latents_until=value)


def changed_tokens(embed, latents, region):
    """Indices of the tokens whose embedding changes when the latents change inside `region`."""
    bumped = latents + region.to(latents.dtype)
    change = (embed(bumped) - embed(latents)).abs().amax(-1)[0]
    return (change > 1e-3 * change.max()).nonzero().flatten().tolist()  # not float noise of the conv


def test_cogvideox_latent_mask_covers_the_patch_of_that_token(tiny_pipe, settings):
    backbone = tiny_pipe.backbone
    grid = backbone.token_grid(settings.num_frames, settings.height, settings.width)
    latents = torch.zeros(1, grid[0], backbone.transformer.config.in_channels,
                          settings.height // backbone.pipe.vae_scale_factor_spatial,
                          settings.width // backbone.pipe.vae_scale_factor_spatial)
    text = torch.zeros(1, backbone.text_length, backbone.transformer.config.text_embed_dim)
    index = (1, 2, 3)
    tokens = torch.zeros(grid, dtype=torch.bool)
    tokens[index] = True

    def embed(x):
        return backbone.transformer.patch_embed(text, x)[:, backbone.text_length:]

    assert changed_tokens(embed, latents, backbone.latent_mask(tokens)) == [
        (index[0] * grid[1] + index[1]) * grid[2] + index[2]]


def test_wan_latent_mask_covers_the_patch_of_that_token():
    from bachvid.backbones.wan import WanBackbone

    backbone = WanBackbone(tiny_wan_pipeline(num_layers=1))
    grid = backbone.token_grid(9, 32, 32)
    channels = backbone.transformer.config.in_channels
    side = 32 // backbone.pipe.vae_scale_factor_spatial
    latents = torch.zeros(1, channels, grid[0] * backbone.transformer.config.patch_size[0], side, side)
    index = (2, 1, 3)
    tokens = torch.zeros(grid, dtype=torch.bool)
    tokens[index] = True

    def embed(x):
        return backbone.transformer.patch_embedding(x).flatten(2).transpose(1, 2)

    assert changed_tokens(embed, latents, backbone.latent_mask(tokens)) == [
        (index[0] * grid[1] + index[1]) * grid[2] + index[2]]


def test_wan_locks_through_its_multistep_scheduler():
    """UniPC keeps earlier steps' state; a lock to the end still leaves the identity's background."""
    from bachvid.pipeline import BachVidPipeline, GenerationSettings

    pipe = BachVidPipeline(tiny_wan_pipeline(num_layers=2))
    settings = GenerationSettings(seed=0, num_inference_steps=6, num_frames=9, height=32, width=32,
                                  guidance_scale=6.0)
    identity, *shots = run(pipe, settings, background_latents_until=1.0)
    replayed = run(pipe, settings, "replay", 1, background_latents_until=1.0)
    for shot, again in zip(shots, replayed[1:]):
        where, keep = locked_latents(pipe, identity, shot)
        assert 0 < keep.sum() < keep.numel()
        assert torch.equal(shot.latents[where], identity.latents[where])
        assert (shot.latents - again.latents).abs().max() <= 1e-5
