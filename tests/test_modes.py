"""The identity modes are ways of scheduling the same computation: cache, replay and lockstep
give the same videos (float32, both CogVideoX layouts), in any grouping of shots, and the
batched runner stays exact against stock diffusers with a stochastic scheduler."""

import pytest
import torch

from bachvid.method.config import BachVidConfig
from conftest import make_story


def story_results(pipe, settings, mode, group, config=None, story=None):
    story = story or make_story(actions=("stands still", "walks to the left", "jumps", "comes closer"))
    return list(pipe.generate(story, settings, config or BachVidConfig(), identity_mode=mode, group=group,
                              progress=False))


@pytest.mark.parametrize("mode,group", [("replay", 1), ("replay", 3), ("lockstep", 2), ("lockstep", 3)])
def test_modes_equal_the_cache(tiny_pipe, settings, mode, group):
    cached = story_results(tiny_pipe, settings, "cache", 1)
    other = story_results(tiny_pipe, settings, mode, group)
    assert [r.role for r in other] == ["identity", "shot", "shot", "shot"]
    for a, b in zip(cached, other):
        assert a.prompt == b.prompt and a.seed == b.seed
        assert (a.latents - b.latents).abs().max() <= 1e-5, (mode, group, a.role, a.index)
        assert (a.mask == b.mask).all()
        assert a.stats.get("foreground_pairs") == b.stats.get("foreground_pairs")
    # ... and BachVid did something: the shots differ from plain generation.
    plain = story_results(tiny_pipe, settings, "cache", 1, BachVidConfig(enabled=False))
    assert max((p.latents - c.latents).abs().max() for p, c in zip(plain[1:], cached[1:])) > 1e-3


def test_modes_agree_with_a_switched_background(tiny_pipe, settings):
    story = make_story(actions=("stands still", "jumps"), backgrounds=["a green meadow", "a sandy desert"],
                       shared_background=False)
    cached = story_results(tiny_pipe, settings, "cache", 1, story=story)
    for mode in ("replay", "lockstep"):
        other = story_results(tiny_pipe, settings, mode, 1, story=story)
        for a, b in zip(cached, other):
            assert (a.latents - b.latents).abs().max() <= 1e-5, mode


def test_replayed_identity_runs_only_the_blocks_shots_read(tiny_pipe, settings):
    """Replay must not run the identity through the whole model: count identity rows per block."""
    seen = []
    blocks = tiny_pipe.pipe.transformer.transformer_blocks
    handles = [b.register_forward_pre_hook(lambda m, a, k, i=i: seen.append((i, k["hidden_states"].shape[0])),
                                           with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        config = BachVidConfig(vital_layers=(0,), match_layers=(1,), mask_layers=(1,), token_merge=False)
        story_results(tiny_pipe, settings, "replay", 1, config, story=make_story(actions=("stands still", "jumps")))
    finally:
        for h in handles:
            h.remove()
    rows = {}
    for block, batch in seen:
        rows.setdefault(block, []).append(batch)
    # identity alone: 2 rows (CFG); shot with the replayed identity: 4 rows in block 0 while
    # injecting, 2 rows in the last block (the identity left after block 0, or 1 at the match step)
    assert max(rows[0]) == 4 and max(rows[len(blocks) - 1]) == 2


def test_dpm_scheduler_runs_equal_stock_with_a_generator(settings):
    """CogVideoX-5B's DPM scheduler draws noise at every step: each video gets its own generator."""
    from diffusers import CogVideoXDPMScheduler

    from bachvid.backbones.tiny import tiny_cogvideox_pipeline
    from bachvid.pipeline import BachVidPipeline

    def build():
        pipe = tiny_cogvideox_pipeline(rope=True, num_layers=2)
        pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
        return pipe

    stock = build()
    stock.set_progress_bar_config(disable=True)
    story = make_story(actions=("stands still", "jumps"))
    ours = BachVidPipeline(build())
    results = list(ours.generate(story, settings, BachVidConfig(enabled=False), progress=False))
    for result in results:
        expected = stock(result.prompt, num_frames=settings.num_frames, height=settings.height, width=settings.width,
                         num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                         generator=torch.Generator().manual_seed(result.seed), max_sequence_length=16,
                         output_type="latent").frames
        assert (result.latents - expected).abs().max() <= 1e-5
    # and BachVid's modes agree under it too (the pre-run and the real run see the same noise)
    cached = list(ours.generate(story, settings, BachVidConfig(), identity_mode="cache", progress=False))
    locked = list(ours.generate(story, settings, BachVidConfig(), identity_mode="lockstep", progress=False))
    assert (cached[1].latents - locked[1].latents).abs().max() <= 1e-5


def test_instruments_see_injections_and_replace_readings(tiny_pipe, settings):
    """The research hooks: a probe sees every injected call of a shot; readings replace the masks."""
    from bachvid.modes import Instruments

    calls = []

    class EverythingForeground:
        def identity_mask(self, video, mask, latents, frames):
            assert latents.shape[0] == 1
            return torch.zeros_like(mask)  # all background: background injection everywhere

        def shot(self, video, mask, matches, identity_fg):
            return torch.zeros_like(mask), matches

    story = make_story(actions=("stands still", "jumps"))
    probe = lambda video: (lambda step, layer, q, k, groups: calls.append((video.index, step, layer, len(groups))))  # noqa: E731
    instruments = Instruments(readings=EverythingForeground(), probe=probe)
    results = list(tiny_pipe.generate(story, settings, BachVidConfig(token_merge=False), identity_mode="replay",
                                      progress=False, instruments=instruments))
    plain = list(tiny_pipe.generate(story, settings, BachVidConfig(token_merge=False), identity_mode="replay",
                                    progress=False))
    assert not results[1].mask.any() and (results[1].latents - plain[1].latents).abs().max() > 1e-4
    layers = tiny_pipe.layers(BachVidConfig()).vital
    # one background group per injected call, on every vital layer of every injected step
    assert {c[2] for c in calls} == set(layers) and all(c[0] == 0 and c[3] == 1 for c in calls)
    with pytest.raises(ValueError, match="cache or replay"):
        list(tiny_pipe.generate(story, settings, BachVidConfig(), identity_mode="lockstep", progress=False,
                                instruments=instruments))


def test_coarse_prerun_takes_every_kth_step_and_modes_still_agree(tiny_pipe):
    """A stride-k pre-run reads at the same timestep in 1/k of the forwards; all modes agree on it."""
    from bachvid.pipeline import GenerationSettings

    settings = GenerationSettings(seed=0, num_inference_steps=10, num_frames=9, height=32, width=32,
                                  guidance_scale=6.0)
    config = BachVidConfig(tau_mask=0.4, tau_match=0.4, prerun_stride=2)  # read at step 4 = coarse step 2
    story = make_story(actions=("stands still", "walks to the left", "jumps"))
    forwards = []
    handle = tiny_pipe.pipe.transformer.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        coarse = story_results(tiny_pipe, settings, "cache", 2, config, story=story)
    finally:
        handle.remove()
    # identity 10 steps, pre-runs 3 (steps 0, 2, 4 of 10) instead of 5, real runs 10
    assert len(forwards) == 10 + 3 + 10
    assert coarse[1].stats["prerun_steps"] == 3 and coarse[1].stats["prerun_stride"] == 2
    for mode in ("replay", "lockstep"):
        other = story_results(tiny_pipe, settings, mode, 1, config, story=story)
        for a, b in zip(coarse, other):
            assert (a.latents - b.latents).abs().max() <= 1e-5, mode
    full = story_results(tiny_pipe, settings, "cache", 2, config.replace(prerun_stride=1), story=story)
    assert (full[0].latents - coarse[0].latents).abs().max() == 0  # the identity does not change
    # a stride that does not divide the read step falls back to the largest one that does
    odd = story_results(tiny_pipe, settings, "cache", 2, config.replace(prerun_stride=3), story=story)
    assert odd[1].stats["prerun_stride"] == 2


@pytest.mark.parametrize("mode,group,widest", [("replay", 1, 2), ("lockstep", 1, 2), ("lockstep", 2, 6)])
def test_low_memory_runs_keep_the_identity_apart_inside_blocks(tiny_pipe, settings, monkeypatch, mode, group, widest):
    """Replay and lockstep one shot at a time run the live identity's rows apart from the shot's
    inside each block (attention sees one CFG pair at a time); lockstep with a larger group keeps
    one batch. The videos are the same either way (test_modes_equal_the_cache)."""
    from bachvid.method.controller import Controller

    widths = []
    original = Controller.attend
    monkeypatch.setattr(Controller, "attend", lambda self, call: widths.append(call.query.shape[0]) or original(self, call))
    story_results(tiny_pipe, settings, mode, group, story=make_story(actions=("stands still", "jumps", "comes closer")))
    assert max(widths) == widest


class _Recorder:
    """modes.Readings that change nothing: they keep what the shots' pre-runs handed on."""

    def __init__(self):
        self.shots = []

    def identity_mask(self, video, mask, latents, frames):
        return mask

    def shot(self, video, mask, matches, identity_fg):
        self.shots.append((mask.clone(), matches, identity_fg.clone()))
        return mask, matches


@pytest.mark.parametrize("mode", ["cache", "lockstep"])
def test_shot_masks_from_matches_carry_the_identity_mask(tiny_pipe, settings, mode):
    """shot_mask="matches": each shot's mask is the identity's carried through that shot's own
    matches; the paper's default keeps the mask its pre-run read from text attention."""
    from bachvid.method.mask import carry_mask
    from bachvid.modes import Instruments

    if mode == "lockstep":  # readings need the final identity; lockstep is checked equal to the cache's
        carried = story_results(tiny_pipe, settings, "cache", 1, BachVidConfig(shot_mask="matches"))
        again = story_results(tiny_pipe, settings, "lockstep", 3, BachVidConfig(shot_mask="matches"))
        assert all((a.mask == b.mask).all() and (a.latents - b.latents).abs().max() <= 1e-5
                   for a, b in zip(carried, again))
        return
    story = make_story(actions=("stands still", "walks to the left", "jumps"))
    runs = {}
    for source in ("attention", "matches"):
        recorder = _Recorder()
        results = list(tiny_pipe.generate(story, settings, BachVidConfig(shot_mask=source), identity_mode=mode,
                                          progress=False, instruments=Instruments(readings=recorder)))
        runs[source] = (recorder.shots, results)
    kernel = BachVidConfig().mask_open_kernel
    for mask, matches, identity_fg in runs["matches"][0]:
        assert torch.equal(mask, carry_mask(identity_fg, matches.index, tuple(mask.shape), kernel))
    read = [m for m, _, _ in runs["attention"][0]]
    carried = [m for m, _, _ in runs["matches"][0]]
    assert any(not torch.equal(a, b) for a, b in zip(read, carried))  # the knob changes the shots' masks
    assert all(torch.equal(a.mask if isinstance(a.mask, torch.Tensor) else torch.from_numpy(a.mask), b)
               for a, b in zip(runs["matches"][1][1:], carried))  # and the shots report the mask they used


def test_mask_rule_reaches_the_identitys_and_the_shots_reads(tiny_pipe, settings, monkeypatch):
    """mask_rule="otsu": the identity's mask and every shot's read mask are each video's own Otsu split
    of its attention scores (read in the same order the masks are handed on), not fg >= bg."""
    from bachvid.method.mask import MaskReader, foreground_tokens, open_mask
    from bachvid.modes import Instruments

    scores = []
    original = MaskReader.scores
    monkeypatch.setattr(MaskReader, "scores", lambda self: scores.append(original(self)) or scores[-1])
    recorder = _Recorder()
    config = BachVidConfig(mask_rule="otsu", mask_open_kernel=1)  # no opening: a tiny grid would lose every speck
    story = make_story(actions=("stands still", "walks to the left"))
    list(tiny_pipe.generate(story, settings, config, identity_mode="cache", progress=False,
                            instruments=Instruments(readings=recorder)))
    masks = [recorder.shots[0][2]] + [mask for mask, _, _ in recorder.shots]  # the identity's, then each shot's
    assert len(scores) == len(masks) >= 2
    for (bg, fg), mask in zip(scores, masks):
        otsu = open_mask(foreground_tokens(bg, fg, "otsu").reshape(mask.shape), config.mask_open_kernel)
        assert torch.equal(mask, otsu)
    assert any(not torch.equal(foreground_tokens(bg, fg).reshape(m.shape), m)
               for (bg, fg), m in zip(scores, masks))  # the rule changes at least one read on this model


@pytest.mark.parametrize("mode", ["cache", "replay"])
def test_an_identity_segmenter_gives_the_identitys_mask_and_matches_carry_it(tiny_pipe, settings, mode,
                                                                             monkeypatch):
    """identity_segmenter: the identity's mask comes from its decoded frames (here: the left half of
    every frame), on the token grid; with shot_mask="matches" each shot carries that mask."""
    import numpy as np

    from bachvid import modes
    from bachvid.method.mask import tokens_from_pixels

    seen, carried = [], []

    def left_half(frames):
        seen.append(frames.shape)
        mask = np.zeros(frames.shape[:3], bool)
        mask[:, :, : frames.shape[2] // 2] = True
        return mask

    original = modes.carry_mask
    monkeypatch.setattr(modes, "carry_mask", lambda fg, *a, **k: carried.append(fg.clone()) or original(fg, *a, **k))
    decoded, decode = [], tiny_pipe.backbone.decode
    monkeypatch.setattr(tiny_pipe.backbone, "decode", lambda latents, *a: decoded.append(1) or decode(latents, *a))
    config = BachVidConfig(shot_mask="matches", mask_open_kernel=1)
    results = list(tiny_pipe.generate(make_story(actions=("stands still", "jumps")), settings, config,
                                      identity_mode=mode, progress=False, identity_segmenter=left_half))
    identity = results[0]
    assert seen == [identity.frames.shape]  # the identity's own decoded frames, once
    assert len(decoded) == len(results)  # one VAE decode per video: the segmenter and the result share the identity's
    expected = tokens_from_pixels(left_half(identity.frames), identity.mask.shape)
    assert expected[..., : expected.shape[-1] // 2].all() and not expected[..., expected.shape[-1] // 2:].any()
    assert np.array_equal(identity.mask, expected.numpy()) and identity.stats["identity_mask"] == "identity_segmenter"
    assert len(carried) == 1 and torch.equal(carried[0].cpu(), expected)  # the shot carries the segmented mask


def test_an_identity_segmenter_is_refused_where_it_cannot_work(tiny_pipe, settings):
    import numpy as np

    from bachvid.modes import Instruments

    story = make_story(actions=("stands still", "jumps"))
    with pytest.raises(ValueError, match="lockstep"):
        list(tiny_pipe.generate(story, settings, identity_mode="lockstep", progress=False,
                                identity_segmenter=lambda f: np.ones(f.shape[:3], bool)))
    with pytest.raises(ValueError, match="one bool per pixel"):
        list(tiny_pipe.generate(story, settings, identity_mode="cache", progress=False,
                                identity_segmenter=lambda f: np.ones(f.shape[1:3], bool)))
    with pytest.raises(ValueError, match="give one"):
        list(tiny_pipe.generate(story, settings, progress=False, instruments=Instruments(readings=_Recorder()),
                                identity_segmenter=lambda f: np.ones(f.shape[:3], bool)))
