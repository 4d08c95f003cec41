"""Latent locks (beyond the paper): with `background_latents_until`, a shot's latents at
background-in-both tokens follow the identity's for that share of the schedule; with
`character_latents_until`, its matched character tokens take the identity's tokens they match.
Checked on tiny random models (float32): locked tokens carry the identity's latents exactly while
the lock lasts and are free after it, every identity mode gives the same shots, switched
backgrounds are never locked, and each backbone's latent tokens are the ones its patch embedding
makes."""

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
    """(the shot's latents as tokens, the identity's, the background-in-both token mask)."""
    keep = ~(torch.from_numpy(identity.mask).bool() | torch.from_numpy(shot.mask).bool()).reshape(-1)
    return pipe.backbone.latent_tokens(shot.latents), pipe.backbone.latent_tokens(identity.latents), keep


def test_locked_to_the_end_the_background_is_the_identitys(tiny_pipe, settings):
    identity, *shots = run(tiny_pipe, settings, background_latents_until=1.0)
    for shot in shots:
        mine, theirs, keep = locked_latents(tiny_pipe, identity, shot)
        assert 0 < keep.sum() < keep.numel(), "the test needs locked and free tokens"
        assert torch.equal(mine[keep], theirs[keep])
        assert (mine[~keep] - theirs[~keep]).abs().max() > 1e-3  # the character is the shot's


def test_a_lock_that_ends_leaves_the_rest_of_the_run_free(tiny_pipe, settings):
    identity, *shots = run(tiny_pipe, settings, background_latents_until=0.5)
    _, *unlocked = run(tiny_pipe, settings)
    for shot, plain in zip(shots, unlocked):
        mine, theirs, keep = locked_latents(tiny_pipe, identity, shot)
        assert (shot.latents - plain.latents).abs().max() > 1e-3  # the lock changed the shot ...
        assert (mine[keep] - theirs[keep]).abs().max() > 1e-4  # ... and then let go


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
@pytest.mark.parametrize("knob", ["background_latents_until", "character_latents_until"])
def test_a_lock_is_a_fraction_of_the_schedule(value, knob):
    with pytest.raises(ValueError, match=knob):
        BachVidConfig(**{knob: value})


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, float("nan")])
def test_a_soft_lock_weight_is_a_blend_weight(value):
    with pytest.raises(ValueError, match="background_latents_weight"):
        BachVidConfig(background_latents_weight=value)


def changed_tokens(embed, backbone, latents, token):
    """Indices of the tokens whose embedding changes when row `token` of the latent tokens changes;
    also checks that latent_tokens and tokens_to_latents undo each other."""
    rows = backbone.latent_tokens(latents)
    assert torch.equal(backbone.tokens_to_latents(rows, latents), latents)
    rows = rows.clone()
    rows[token] += 1.0
    change = (embed(backbone.tokens_to_latents(rows, latents)) - embed(latents)).abs().amax(-1)[0]
    return (change > 1e-3 * change.max()).nonzero().flatten().tolist()  # not float noise of the conv


@pytest.mark.parametrize("patch_t", [None, 2], ids=["cogvideox-1.0", "cogvideox-1.5-temporal-patches"])
def test_cogvideox_latent_tokens_are_the_patch_embeddings_tokens(patch_t):
    from bachvid.backbones.cogvideox import CogVideoXBackbone
    from bachvid.backbones.tiny import tiny_cogvideox_pipeline

    backbone = CogVideoXBackbone(tiny_cogvideox_pipeline(num_layers=1, patch_size_t=patch_t))
    config = backbone.transformer.config
    frames = 4 if patch_t else 3
    latents = torch.randn(1, frames, config.in_channels, 8, 8)
    text = torch.zeros(1, backbone.text_length, config.text_embed_dim)
    token = 13  # frame 0 (of 2 or 3), row 3, column 1 of a 4 x 4 token grid

    def embed(x):
        return backbone.transformer.patch_embed(text, x)[:, backbone.text_length:]

    assert changed_tokens(embed, backbone, latents, token) == [token]


def test_wan_latent_tokens_are_the_patch_embeddings_tokens():
    from bachvid.backbones.wan import WanBackbone

    backbone = WanBackbone(tiny_wan_pipeline(num_layers=1))
    latents = torch.randn(1, backbone.transformer.config.in_channels, 3, 8, 8)
    token = 2 * 16 + 3 * 4 + 1  # frame 2, row 3, column 1

    def embed(x):
        return backbone.transformer.patch_embedding(x).flatten(2).transpose(1, 2)

    assert changed_tokens(embed, backbone, latents, token) == [token]


def test_wan_locks_through_its_multistep_scheduler():
    """UniPC keeps earlier steps' state; a lock to the end still leaves the identity's background."""
    from bachvid.pipeline import BachVidPipeline, GenerationSettings

    pipe = BachVidPipeline(tiny_wan_pipeline(num_layers=2))
    settings = GenerationSettings(seed=0, num_inference_steps=6, num_frames=9, height=32, width=32,
                                  guidance_scale=6.0)
    identity, *shots = run(pipe, settings, background_latents_until=1.0)
    replayed = run(pipe, settings, "replay", 1, background_latents_until=1.0)
    for shot, again in zip(shots, replayed[1:]):
        mine, theirs, keep = locked_latents(pipe, identity, shot)
        assert 0 < keep.sum() < keep.numel()
        assert torch.equal(mine[keep], theirs[keep])
        assert (shot.latents - again.latents).abs().max() <= 1e-5


class GivenReadings:
    """Readings a test chooses: the identity's character in the left columns of the token grid, the
    shot's two columns to the right, each shot token matched to the identity token two columns left."""

    def identity_mask(self, video, mask, latents, frames):
        given = torch.zeros_like(mask)
        given[..., :2] = True
        return given

    def shot(self, video, mask, matches, identity_fg):
        from bachvid.method.match import Matches

        given = torch.zeros_like(mask)
        given[..., 2:] = True
        tokens = torch.arange(mask.numel())
        return given, Matches(index=(tokens - 2).clamp(min=0), similarity=torch.ones(mask.numel()))


def test_locked_to_the_end_matched_character_tokens_are_the_identitys(tiny_pipe, settings):
    from bachvid.modes import Instruments

    config = BachVidConfig(character_latents_until=1.0)
    identity, *shots = tiny_pipe.generate(make_story(actions=ACTIONS), settings, config, identity_mode="cache",
                                          progress=False, instruments=Instruments(readings=GivenReadings()))
    identity_tokens = tiny_pipe.backbone.latent_tokens(identity.latents)
    grid = torch.from_numpy(identity.mask).shape
    columns = torch.arange(identity_tokens.shape[0]) % grid[-1]
    taken = columns >= 2
    for shot in shots:
        tokens = tiny_pipe.backbone.latent_tokens(shot.latents)
        assert torch.equal(tokens[taken], identity_tokens[taken.nonzero()[:, 0] - 2])
        assert (tokens[~taken] - identity_tokens[~taken]).abs().max() > 1e-3  # the rest is the shot's own


def test_character_lock_is_the_same_from_a_replayed_identity(tiny_pipe, settings):
    """(The lockstep path, the identity's row of the batch, is the background lock's: tested above.)"""
    from bachvid.modes import Instruments

    def made(mode, **knobs):
        return list(tiny_pipe.generate(make_story(actions=ACTIONS), settings, BachVidConfig(**knobs),
                                       identity_mode=mode, progress=False,
                                       instruments=Instruments(readings=GivenReadings())))

    cached, replayed = made("cache", character_latents_until=0.5), made("replay", character_latents_until=0.5)
    for a, b in zip(cached, replayed):
        assert (a.latents - b.latents).abs().max() <= 1e-5, (a.role, a.index)
    plain = made("cache")
    assert min((a.latents - b.latents).abs().max() for a, b in zip(cached[1:], plain[1:])) > 1e-3


def test_wan_takes_latents_set_after_a_step_as_they_are(monkeypatch):
    """UniPC's corrector rebuilds a step's sample from the previous one; after a lock has set the
    latents it must not run (or it would undo the lock), and it runs as stock everywhere else."""
    from diffusers import UniPCMultistepScheduler

    from bachvid.backbones import BatchVideo
    from bachvid.backbones.wan import WanBackbone
    from bachvid.method.controller import Controller, VideoState

    backbone = WanBackbone(tiny_wan_pipeline(num_layers=1))
    backbone.install(Controller())
    corrected = []
    corrector = UniPCMultistepScheduler.multistep_uni_c_bh_update

    def spy(self, *args, **kwargs):
        corrected.append(self.step_index)
        return corrector(self, *args, **kwargs)

    monkeypatch.setattr(UniPCMultistepScheduler, "multistep_uni_c_bh_update", spy)
    embeds, negative = backbone.encode("a red robot jumps", True)

    def denoise(on_step_end=None):
        corrected.clear()
        state = VideoState()
        backbone.denoise([BatchVideo(embeds, negative, seed=0)], num_frames=9, height=32, width=32,
                         num_inference_steps=6, guidance_scale=5.0, step_states=lambda i: [(state, None)],
                         on_step_end=on_step_end)
        return list(corrected)

    assert denoise() == [1, 2, 3, 4, 5]

    def lock_after_step_2(i, latents):
        if i == 2:
            latents[0] = latents[0].clone()

    assert denoise(lock_after_step_2) == [1, 2, 4, 5]


def test_a_soft_lock_moves_the_tokens_that_share_of_the_way():
    from bachvid.method.latent_lock import LatentLock

    class Flat:  # latents that are their own tokens
        latent_tokens = staticmethod(lambda x: x)
        tokens_to_latents = staticmethod(lambda tokens, like: tokens)

    shot, identity = torch.zeros(4, 2), torch.ones(4, 2) * 2
    lock = LatentLock(torch.tensor([1, 3]), torch.tensor([0, 2]), steps=2, weight=0.25)
    after = lock.apply(0, shot, identity, Flat)
    assert torch.equal(after[[1, 3]], torch.full((2, 2), 0.5)) and torch.equal(after[[0, 2]], shot[[0, 2]])
    assert torch.equal(lock.apply(2, shot, identity, Flat), shot)  # the lock has ended
    assert torch.equal(LatentLock(lock.current, lock.identity, 2).apply(0, shot, identity, Flat)[[1, 3]],
                       identity[[0, 2]])  # weight 1: set


def test_a_soft_background_lock_pulls_the_background_part_of_the_way(tiny_pipe, settings):
    identity, *soft = run(tiny_pipe, settings, background_latents_until=1.0, background_latents_weight=0.5)
    _, *free = run(tiny_pipe, settings)
    for shot, plain in zip(soft, free):
        mine, theirs, keep = locked_latents(tiny_pipe, identity, shot)
        unlocked = tiny_pipe.backbone.latent_tokens(plain.latents)
        assert 0 < (mine[keep] - theirs[keep]).abs().mean() < 0.8 * (unlocked[keep] - theirs[keep]).abs().mean()


# The agreement lock: the background lock on the tokens the pre-run already shares with the identity --

def test_agreeing_tokens_are_those_within_a_multiple_of_the_median_distance():
    from bachvid.method.latent_lock import agreeing_tokens

    class Flat:
        latent_tokens = staticmethod(lambda x: x)

    identity = torch.zeros(5, 2)
    shot = torch.tensor([[0.0, 0.1], [0.0, 0.2], [0.0, 0.3], [0.0, 3.0], [0.0, 0.25]])
    assert agreeing_tokens(shot, identity, Flat, 1.0).tolist() == [True, True, False, False, True]
    assert agreeing_tokens(shot, identity, Flat, 2.0).tolist() == [True, True, True, False, True]


def test_an_agreement_lock_holds_what_the_pre_run_shares_with_the_identity(tiny_pipe, settings, monkeypatch):
    """A hard lock to the end on the agreeing tokens: after the last step they are the identity's,
    whatever the masks say; the rest is the shot's; every identity mode gives the same shots."""
    from dataclasses import replace

    import bachvid.modes as modes

    held = []
    agreeing = modes.agreeing_tokens
    monkeypatch.setattr(modes, "agreeing_tokens", lambda *a: held.append(agreeing(*a)) or held[-1])
    on_seed = replace(settings, shot_seeds="identity")
    knobs = dict(background_latents_until=1.0, background_lock_agreement=1.0)
    identity, *shots = run(tiny_pipe, on_seed, **knobs)
    assert len(held) == len(shots)
    for shot, agree in zip(shots, held):
        mine, theirs = tiny_pipe.backbone.latent_tokens(shot.latents), tiny_pipe.backbone.latent_tokens(identity.latents)
        assert 0 < agree.sum() < agree.numel()
        assert torch.equal(mine[agree], theirs[agree])
        assert (mine[~agree] - theirs[~agree]).abs().max() > 1e-3
    for mode, group in (("replay", 1), ("lockstep", 2)):
        for a, b in zip(run(tiny_pipe, on_seed, **knobs), run(tiny_pipe, on_seed, mode, group, **knobs)):
            assert (a.latents - b.latents).abs().max() <= 1e-5, (mode, a.role, a.index)


def test_shots_on_other_noise_agree_nowhere_and_get_no_background_lock(tiny_pipe, settings):
    locked = run(tiny_pipe, settings, background_latents_until=1.0, background_lock_agreement=1.0)
    free = run(tiny_pipe, settings)
    assert locked[1].seed != locked[0].seed
    for a, b in zip(locked, free):
        assert torch.equal(a.latents, b.latents)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_agreement_must_be_a_finite_non_negative_multiple(value):
    with pytest.raises(ValueError, match="background_lock_agreement"):
        BachVidConfig(background_lock_agreement=value)
