"""Wan 2.2's two experts and guidances, and Wan's frame rule, on tiny random Wan pipelines (float32):
what an identity keeps at a step comes from the expert that ran that step, and a shot reads it
with the same expert running; masks and matches are read in the expert in use; a second expert
with the first's weights changes nothing; `guidance_scale_2` is stock WanPipeline's."""

import copy

import pytest
import torch

from bachvid.backbones.tiny import tiny_wan_pipeline
from bachvid.method.config import BachVidConfig
from conftest import make_story

NUM_LAYERS = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture
def wan_settings():
    from bachvid.pipeline import GenerationSettings

    return GenerationSettings(seed=0, num_inference_steps=6, num_frames=9, height=32, width=32, guidance_scale=6.0)


@pytest.fixture(scope="module")
def two_experts():
    from bachvid.pipeline import BachVidPipeline

    return BachVidPipeline(tiny_wan_pipeline(num_layers=NUM_LAYERS, experts=2))


def stock_latents(stock, prompt, seed, settings, **extra):
    return stock(prompt, num_frames=settings.num_frames, height=settings.height, width=settings.width,
                 num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                 generator=torch.Generator().manual_seed(seed), max_sequence_length=16, output_type="latent",
                 **extra).frames


def results(pipe, settings, mode="cache", group=1, config=None, story=None):
    story = story or make_story(actions=("stands still", "jumps"))
    return list(pipe.generate(story, settings, config or BachVidConfig(), identity_mode=mode, group=group,
                              progress=False))


# Records, masks and matches follow the expert in use ---------------------------------------------

class ExpertLog:
    """Which expert runs (a forward pre-hook on each) and at which timestep, and what the identity
    record and the mask/match readers see meanwhile."""

    def __init__(self, backbone, monkeypatch):
        from bachvid.method.identity import CachedIdentity
        from bachvid.method.mask import MaskReader
        from bachvid.method.match import MatchAccumulator

        self.backbone, self.current, self.kept, self.reads = backbone, None, {}, []
        self.mask_reads, self.match_reads = [], []
        self.handles = [expert.register_forward_pre_hook(self._enter(e), with_kwargs=True)
                        for e, expert in enumerate(backbone.experts)]
        log = self

        def kept(original):
            def keep(record, step, layer, *args, **kwargs):
                log.kept.setdefault((step, layer), set()).add(log.current)
                return original(record, step, layer, *args, **kwargs)
            return keep

        def read(original):
            def get(record, step, layer, *args, **kwargs):
                log.reads.append((step, layer, log.current))
                return original(record, step, layer, *args, **kwargs)
            return get

        def reader(original, into):
            def add(self, layer, *args, **kwargs):
                into.append(log.current)
                return original(self, layer, *args, **kwargs)
            return add

        monkeypatch.setattr(CachedIdentity, "keep_key_value", kept(CachedIdentity.keep_key_value))
        monkeypatch.setattr(CachedIdentity, "keep_output", kept(CachedIdentity.keep_output))
        monkeypatch.setattr(CachedIdentity, "key_value", read(CachedIdentity.key_value))
        monkeypatch.setattr(CachedIdentity, "output", read(CachedIdentity.output))
        monkeypatch.setattr(MaskReader, "add", reader(MaskReader.add, self.mask_reads))
        monkeypatch.setattr(MatchAccumulator, "add", reader(MatchAccumulator.add, self.match_reads))

    def _enter(self, e):
        def hook(module, args, kwargs):
            t = kwargs["timestep"].flatten()[0]
            assert self.backbone.expert_at(t) is module  # the expert stock WanPipeline runs at t
            self.current = (e, float(t))
        return hook

    def close(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("late", [False, True], ids=["reads-early", "reads-late"])
def test_records_masks_and_matches_follow_the_expert_in_use(two_experts, wan_settings, monkeypatch, late):
    """Every key/value and output a shot reads from the identity was kept by the same expert at the
    same timestep; masks and matches are read inside the expert that runs their step (the high-noise
    one with early readings, the low-noise one with late ones)."""
    config = BachVidConfig(tau_mask=0.7, tau_match=0.7) if late else BachVidConfig(tau_mask=0.0, tau_match=0.0)
    log = ExpertLog(two_experts.backbone, monkeypatch)
    try:
        results(two_experts, wan_settings, config=config)
    finally:
        log.close()
    assert log.reads and log.mask_reads and log.match_reads
    for step, layer, now in log.reads:
        assert log.kept[step, layer] == {now}, (step, layer)
    # both experts kept and were read
    assert {now[0] for _, _, now in log.reads} == {0, 1}
    expected_expert = 1 if late else 0
    assert {e for e, _ in log.mask_reads} == {expected_expert}
    assert {e for e, _ in log.match_reads} == {expected_expert}


def test_a_second_expert_with_the_same_weights_changes_nothing(wan_settings):
    """A two-expert pipeline whose experts are one model's copies gives the one-expert pipeline's
    videos in every mode: switching experts loses, mixes or repeats no record."""
    from bachvid.pipeline import BachVidPipeline

    one = tiny_wan_pipeline(num_layers=NUM_LAYERS)
    two = tiny_wan_pipeline(num_layers=NUM_LAYERS, experts=2)
    two.transformer_2.load_state_dict(one.transformer.state_dict())
    two.transformer.load_state_dict(one.transformer.state_dict())
    one, two = BachVidPipeline(one), BachVidPipeline(two)
    story = make_story(actions=("stands still", "walks to the left", "jumps"))
    for mode, group in (("cache", 1), ("replay", 2), ("lockstep", 1)):
        a = results(one, wan_settings, mode, group, story=story)
        b = results(two, wan_settings, mode, group, story=story)
        for x, y in zip(a, b):
            assert (x.latents - y.latents).abs().max() <= 1e-5, (mode, x.role, x.index)
            assert (x.mask == y.mask).all()


# guidance_scale_2 ----------------------------------------------------------------------------------

def test_guidance_scale_2_is_stock_wans(two_experts, wan_settings):
    """BachVid off with guidance_scale_2 equals stock WanPipeline given the same guidance_scale_2;
    it really changes the video; None means guidance_scale on both experts, as in stock."""
    stock = copy.deepcopy(two_experts.pipe)
    stock.set_progress_bar_config(disable=True)
    for processors_of, transformer in zip(two_experts.backbone._original_processors,
                                          (stock.transformer, stock.transformer_2)):
        transformer.set_attn_processor(processors_of)  # the copy's own stock processors
    story = make_story(actions=("stands still",))
    off = BachVidConfig(enabled=False)
    try:
        two_experts.backbone.guidance_scale_2 = 2.0
        ours = results(two_experts, wan_settings, config=off, story=story)[0]
        theirs = stock_latents(stock, ours.prompt, ours.seed, wan_settings, guidance_scale_2=2.0)
        assert (ours.latents - theirs).abs().max() <= 1e-5
        on = results(two_experts, wan_settings, story=story)[0]  # the identity itself, BachVid on
        assert (on.latents - theirs).abs().max() <= 1e-5
    finally:
        two_experts.backbone.guidance_scale_2 = None
    same = results(two_experts, wan_settings, config=off, story=story)[0]
    assert (same.latents - stock_latents(stock, same.prompt, same.seed, wan_settings)).abs().max() <= 1e-5
    assert (same.latents - ours.latents).abs().max() > 1e-3


def test_guidance_scale_2_is_refused_where_stock_refuses_it(wan_settings):
    from bachvid.pipeline import BachVidPipeline

    one = BachVidPipeline(tiny_wan_pipeline(num_layers=2))
    one.backbone.guidance_scale_2 = 3.0
    assert any("boundary_ratio" in e for e in one.settings_errors(wan_settings))
    with pytest.raises(ValueError, match="boundary_ratio"):
        one.pipe.check_inputs("x", None, 32, 32, None, None, None, 3.0)  # stock refuses it too
    two = BachVidPipeline(tiny_wan_pipeline(num_layers=2, experts=2))
    two.backbone.guidance_scale_2 = float("nan")
    assert any("guidance_scale_2 must be" in e for e in two.settings_errors(wan_settings))


# Frames --------------------------------------------------------------------------------------------

def test_frame_counts_stock_wan_would_round_are_refused(wan_settings):
    """Stock WanPipeline silently rounds frames to 4k+1; bachvid says so before it runs."""
    from dataclasses import replace

    from bachvid.pipeline import BachVidPipeline

    pipe = BachVidPipeline(tiny_wan_pipeline(num_layers=2))
    for frames in (1, 5, 9, 81):
        assert pipe.settings_errors(replace(wan_settings, num_frames=frames)) == []
    errors = pipe.settings_errors(replace(wan_settings, num_frames=12))
    assert len(errors) == 1 and "4k+1" in errors[0] and "use 9 or 13" in errors[0]
    with pytest.raises(ValueError, match="4k\\+1"):
        next(pipe.generate(make_story(actions=("jumps",)), replace(wan_settings, num_frames=10), progress=False))
    assert any("multiple of 16" in e for e in pipe.settings_errors(replace(wan_settings, height=40)))


def test_default_settings_are_wan_pipelines():
    """Without a bachvid.json, a Wan model runs at WanPipeline's defaults: 81 x 480 x 832, guidance 5."""
    from bachvid.pipeline import BachVidPipeline

    settings = BachVidPipeline(tiny_wan_pipeline(num_layers=2)).default_settings()
    assert (settings.num_frames, settings.height, settings.width, settings.guidance_scale) == (81, 480, 832, 5.0)
    assert settings.num_inference_steps == 50
