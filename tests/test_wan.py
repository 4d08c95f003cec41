"""Wan through the same method: BachVid off is stock WanPipeline, recording does not change the
identity, a doubled copy of the identity's own self-attention keys changes nothing (and wrong
copies do), and the identity modes give the same shots, on tiny random Wan pipelines (float32).
Wan's self-attention has no text tokens, its masks come from cross-attention, and its CFG
branches are separate forwards: these tests cover each of those paths."""

import numpy as np
import pytest
import torch

from bachvid.backbones.tiny import tiny_wan_pipeline
from bachvid.method.config import BachVidConfig
from bachvid.method.identity import CachedIdentity
from bachvid.method.plan import Injection, StepPlan, full_copy_injection
from conftest import make_story

NUM_LAYERS = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def build(experts):
    return tiny_wan_pipeline(num_layers=NUM_LAYERS, experts=experts)


@pytest.fixture(scope="module", params=[1, 2], ids=["wan2.1", "wan2.2-two-experts"])
def experts(request):
    return request.param


@pytest.fixture(scope="module")
def wan_pipe(experts):
    from bachvid.pipeline import BachVidPipeline

    return BachVidPipeline(build(experts))


@pytest.fixture(scope="module")
def stock_pipe(experts):
    stock = build(experts)
    stock.set_progress_bar_config(disable=True)
    return stock


@pytest.fixture
def wan_settings():
    from bachvid.pipeline import GenerationSettings

    return GenerationSettings(seed=0, num_inference_steps=6, num_frames=9, height=32, width=32, guidance_scale=6.0)


def stock_latents(stock, prompt, seed, settings, output_type="latent"):
    """Stock WanPipeline (its own attention processors), built with the same weights."""
    return stock(prompt, num_frames=settings.num_frames, height=settings.height, width=settings.width,
                 num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                 generator=torch.Generator().manual_seed(seed), max_sequence_length=16,
                 output_type=output_type).frames


def test_wan_is_picked_and_shaped(wan_pipe, wan_settings, experts):
    backbone = wan_pipe.backbone
    assert backbone.name == "wan" and backbone.joint_text_length == 0 and backbone.text_length == 16
    assert backbone.token_grid(9, 32, 32) == (3, 4, 4) and backbone.num_layers == NUM_LAYERS
    assert len(backbone.experts) == experts
    if experts == 2:  # the tiny two-expert run really switches expert within 6 steps
        wan_pipe.pipe.scheduler.set_timesteps(wan_settings.num_inference_steps)
        used = {id(backbone.expert_at(t)) for t in wan_pipe.pipe.scheduler.timesteps}
        assert len(used) == 2


def test_switched_off_equals_stock_wan(wan_pipe, stock_pipe, wan_settings):
    story = make_story(actions=("stands still", "jumps"))
    results = list(wan_pipe.generate(story, wan_settings, BachVidConfig(enabled=False), progress=False))
    for result in results:
        latents = stock_latents(stock_pipe, result.prompt, result.seed, wan_settings)
        assert (result.latents - latents).abs().max() <= 1e-5
    frames = stock_latents(stock_pipe, results[0].prompt, results[0].seed, wan_settings, "np")[0]
    assert np.abs(results[0].frames.astype(int) - np.round(frames * 255).astype(int)).max() <= 1


def test_recording_the_identity_does_not_change_it(wan_pipe, stock_pipe, wan_settings):
    story = make_story(actions=("stands still",))
    identity = wan_pipe.generate_identity(story, wan_settings, BachVidConfig(), progress=False)
    latents = stock_latents(stock_pipe, identity.prompt, wan_settings.seed, wan_settings)
    assert (identity.latents - latents).abs().max() <= 1e-5
    assert identity.record.nbytes > 0 and identity.mask.shape == (3, 4, 4)
    # Separate CFG forwards: the record keeps each branch apart, one row each.
    keys = list(identity.record._kv)
    assert keys and all(len(k) == 3 and k[2] in (0, 1) for k in keys)
    assert {k[2] for k in keys} == {0, 1}


def test_doubled_identity_keys_reproduce_the_identity(wan_pipe, wan_settings):
    """Softmax over keys that each appear twice equals softmax over the originals; Wan's
    self-attention has no text keys, so a full copy is a copy of the video keys at their positions."""
    backbone = wan_pipe.backbone
    spans = wan_pipe.spans("a green meadow", "a red robot", "jumps")
    layers = frozenset(range(backbone.num_layers))
    frames, h, w = backbone.token_grid(wan_settings.num_frames, wan_settings.height, wan_settings.width)
    tokens = frames * h * w

    record = CachedIdentity(text_length=0)
    identity = wan_pipe.denoise(spans, 7, wan_settings, lambda s: StepPlan(step=s, keep_key_value=layers),
                                target=record)

    def replay(injection):
        return wan_pipe.denoise(spans, 7, wan_settings,
                                lambda s: StepPlan(step=s, inject_layers=layers, injections=(injection,)),
                                source=record)

    copy = full_copy_injection(tokens, 0)
    assert (replay(copy).latents - identity.latents).abs().max() <= 1e-4
    # The check can fail: copies at shuffled positions (the RoPE re-positioning is really applied) ...
    moved = Injection(copy.queries, copy.sources, copy.positions.flip(0))
    assert (replay(moved).latents - identity.latents).abs().max() > 1e-3
    # ... and copies of half of the keys only reweight attention toward them.
    half = Injection(copy.queries, copy.sources[: tokens // 2], copy.positions[: tokens // 2])
    assert (replay(half).latents - identity.latents).abs().max() > 1e-3


def test_from_pretrained_picks_wan_from_the_folder(tmp_path):
    from bachvid.pipeline import BachVidPipeline

    tiny_wan_pipeline(num_layers=2).save_pretrained(tmp_path)
    pipe = BachVidPipeline.from_pretrained(tmp_path)
    assert pipe.backbone.name == "wan" and type(pipe.pipe).__name__ == "WanPipeline"
    assert pipe.backbone.num_layers == 2 and pipe.backbone.text_length == 16
    index = tmp_path / "model_index.json"
    import json

    index.write_text(json.dumps({**json.loads(index.read_text()), "_class_name": "WanImageToVideoPipeline"}))
    with pytest.raises(ValueError, match="WanPipeline"):
        BachVidPipeline.from_pretrained(tmp_path)


def story_results(pipe, settings, mode, group, config=None, story=None):
    story = story or make_story(actions=("stands still", "walks to the left", "jumps"))
    return list(pipe.generate(story, settings, config or BachVidConfig(), identity_mode=mode, group=group,
                              progress=False))


def test_modes_equal_the_cache(wan_pipe, wan_settings, experts):
    """cache, replay and lockstep schedule the same computation (the identity's branches feed the
    shots' same branches in every mode), and BachVid did something."""
    cached = story_results(wan_pipe, wan_settings, "cache", 1)
    runs = [("replay", 1), ("replay", 2), ("lockstep", 1), ("lockstep", 2)]
    for mode, group in runs:
        other = story_results(wan_pipe, wan_settings, mode, group)
        assert [r.role for r in other] == ["identity", "shot", "shot"]
        for a, b in zip(cached, other):
            assert a.prompt == b.prompt and a.seed == b.seed
            assert (a.latents - b.latents).abs().max() <= 1e-5, (mode, group, a.role, a.index)
            assert (a.mask == b.mask).all()
            assert a.stats.get("foreground_pairs") == b.stats.get("foreground_pairs")
    plain = story_results(wan_pipe, wan_settings, "cache", 1, BachVidConfig(enabled=False))
    assert max((p.latents - c.latents).abs().max() for p, c in zip(plain[1:], cached[1:])) > 1e-3
    assert (plain[0].latents - cached[0].latents).abs().max() <= 1e-5  # the identity itself is untouched


def test_separate_cfg_forwards_read_their_own_branch():
    """With CFG as separate forwards (Controller.branch), a cached identity files each branch apart
    and a shot's forward of one branch reads the identity's same branch; masks and matches are read
    in the conditional forward only, and a TextAttentionCall is stock attention."""
    import torch.nn.functional as F

    from bachvid.method.controller import CONDITIONAL, UNCONDITIONAL, AttentionCall, Controller, TextAttentionCall, VideoState
    from bachvid.method.mask import MaskReader
    from bachvid.method.plan import StepPlan

    torch.manual_seed(0)
    heads, n, dim, text = 2, 6, 4, 5
    record = CachedIdentity(text_length=0)
    controller = Controller()
    keys = {}
    for branch in (UNCONDITIONAL, CONDITIONAL):
        controller.branch = branch
        controller.use([VideoState(plan=StepPlan(step=0, keep_key_value=frozenset({0})), target=record)])
        q, k, v = (torch.randn(1, heads, n, dim) for _ in range(3))
        keys[branch] = k
        controller.attend(AttentionCall(0, q, k, v, 0, None))
    for branch in (UNCONDITIONAL, CONDITIONAL):
        assert torch.equal(record.key_value(0, 0, branch=branch)[0], keys[branch])

    reader = MaskReader(torch.tensor([0, 1]), torch.tensor([2, 3]), real_length=4, chunk_size=8)
    shot = VideoState(plan=StepPlan(step=0, read_mask=frozenset({1})), mask_reader=reader)
    controller.use([shot])
    q, k, v = torch.randn(1, heads, n, dim), torch.randn(1, heads, text, dim), torch.randn(1, heads, text, dim)
    controller.branch = UNCONDITIONAL
    assert torch.equal(controller.attend_text(TextAttentionCall(1, q, k, v)), F.scaled_dot_product_attention(q, k, v))
    assert reader.layers == []
    controller.branch = CONDITIONAL
    controller.attend_text(TextAttentionCall(1, q, k, v))
    controller.attend(AttentionCall(1, q, torch.randn(1, heads, n, dim), torch.randn(1, heads, n, dim), 0, None))
    assert reader.layers == [1]  # once: from the text call, not from self-attention without text


def test_modes_agree_with_a_switched_background(wan_pipe, wan_settings):
    story = make_story(actions=("stands still", "jumps"), backgrounds=["a green meadow", "a sandy desert"],
                       shared_background=False)
    cached = story_results(wan_pipe, wan_settings, "cache", 1, story=story)
    for mode in ("replay", "lockstep"):
        other = story_results(wan_pipe, wan_settings, mode, 1, story=story)
        for a, b in zip(cached, other):
            assert (a.latents - b.latents).abs().max() <= 1e-5, mode


def test_replayed_identity_runs_only_the_blocks_shots_read(wan_pipe, wan_settings, experts):
    """Replay runs the identity through the blocks shots read only; both experts run, each through
    bachvid's processors. One row per video per forward: the CFG branches are separate forwards."""
    seen = []
    handles = []
    for e, transformer in enumerate(wan_pipe.backbone.experts):
        for i, block in enumerate(transformer.blocks):
            handles.append(block.register_forward_pre_hook(
                lambda m, args, e=e, i=i: seen.append((e, i, args[0].shape[0]))))
    try:
        config = BachVidConfig(vital_layers=(0,), match_layers=(0,), mask_layers=(1,), token_merge=False)
        story_results(wan_pipe, wan_settings, "replay", 1, config, story=make_story(actions=("stands still", "jumps")))
    finally:
        for h in handles:
            h.remove()
    assert {e for e, _, _ in seen} == set(range(experts))
    rows = {}
    for _, block, batch in seen:
        rows.setdefault(block, []).append(batch)
    # identity alone: 1 row; shot with the replayed identity: 2 rows into block 0 while injecting
    # (a hook sees a block's input before the identity's rows leave it), 1 row into the last block:
    # the identity's rows left before block 1 (all it keeps is layer 0's)
    assert max(rows[0]) == 2 and max(rows[NUM_LAYERS - 1]) == 1


def test_a_saved_identity_replays_on_wan(wan_pipe, wan_settings, tmp_path):
    """A saved identity (its latents before each step) gives the shots made in one go."""
    story = make_story(actions=("stands still", "jumps"))
    path = tmp_path / "robot.bvid"
    wan_pipe.save_identity(story, path, wan_settings, BachVidConfig(), progress=False)
    one_go = story_results(wan_pipe, wan_settings, "cache", 1, story=story)
    loaded = wan_pipe.load_identity(path, wan_settings, BachVidConfig())
    later = list(wan_pipe.generate(story, wan_settings, BachVidConfig(), identity=loaded, progress=False))
    for a, b in zip(one_go, later):
        assert (a.latents - b.latents).abs().max() <= 1e-5, (a.role, a.index)
