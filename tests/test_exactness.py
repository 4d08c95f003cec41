"""The pipeline is exact where it must be: stock diffusers when switched off, untouched by
recording, and unchanged by a doubled copy of the identity's own keys."""

import numpy as np
import torch

from bachvid.backbones.tiny import tiny_cogvideox_pipeline
from bachvid.method.config import BachVidConfig
from bachvid.method.identity import CachedIdentity
from bachvid.method.plan import Injection, StepPlan, full_copy_injection
from conftest import make_story


def stock_latents(rope, prompt, seed, settings):
    """Stock CogVideoXPipeline (its own attention processors), built with the same weights."""
    stock = tiny_cogvideox_pipeline(rope=rope, num_layers=4)
    stock.set_progress_bar_config(disable=True)
    kwargs = dict(num_frames=settings.num_frames, height=settings.height, width=settings.width,
                  num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                  generator=torch.Generator().manual_seed(seed), max_sequence_length=16)
    latents = stock(prompt, output_type="latent", **kwargs).frames
    kwargs["generator"] = torch.Generator().manual_seed(seed)
    frames = stock(prompt, output_type="np", **kwargs).frames[0]
    return latents, frames


def uses_rope(pipe):
    return pipe.backbone.has_rope


def test_switched_off_equals_stock_cogvideox(tiny_pipe, settings):
    story = make_story()
    identity = tiny_pipe.generate_identity(story, settings, BachVidConfig(enabled=False), progress=False)
    shot = tiny_pipe.generate_shot(story, 0, identity, settings, BachVidConfig(enabled=False), progress=False)
    for result, seed in ((identity, settings.seed), (shot, story.shot_seed(0, settings.seed))):
        latents, frames = stock_latents(uses_rope(tiny_pipe), result.prompt, seed, settings)
        assert (result.latents - latents).abs().max() <= 1e-5
        assert np.abs(result.frames.astype(int) - np.round(frames * 255).astype(int)).max() <= 1


def test_recording_the_identity_does_not_change_it(tiny_pipe, settings):
    story = make_story()
    identity = tiny_pipe.generate_identity(story, settings, BachVidConfig(), progress=False)
    latents, _ = stock_latents(uses_rope(tiny_pipe), identity.prompt, settings.seed, settings)
    assert (identity.latents - latents).abs().max() <= 1e-5
    assert identity.record.nbytes > 0 and identity.mask.shape == (3, 4, 4)


def test_doubled_identity_keys_reproduce_the_identity(tiny_pipe, settings):
    """Softmax over keys that each appear twice equals softmax over the originals."""
    spans = tiny_pipe.spans("a green meadow", "a red robot", "jumps")
    layers = frozenset(range(tiny_pipe.backbone.num_layers))
    text = tiny_pipe.backbone.text_length
    frames, h, w = tiny_pipe.backbone.token_grid(settings.num_frames, settings.height, settings.width)
    tokens = text + frames * h * w

    record = CachedIdentity(text_length=text)
    identity = tiny_pipe.denoise(spans, 7, settings, lambda s: StepPlan(step=s, keep_key_value=layers), target=record)

    def replay(injection):
        return tiny_pipe.denoise(spans, 7, settings,
                                 lambda s: StepPlan(step=s, inject_layers=layers, injections=(injection,)),
                                 source=record)

    doubled = replay(full_copy_injection(tokens, text))
    assert (doubled.latents - identity.latents).abs().max() <= 1e-4

    # The check can fail: copies of the video keys alone (text keys not doubled) reweight attention.
    video_only = Injection(queries=torch.arange(tokens), sources=torch.arange(text, tokens),
                           positions=torch.arange(tokens - text))
    assert (replay(video_only).latents - identity.latents).abs().max() > 1e-3
    if uses_rope(tiny_pipe):
        # ... and so do copies at shuffled positions (the RoPE re-positioning is really applied).
        copy = full_copy_injection(tokens, text)
        shuffled = torch.cat([copy.positions[:text], copy.positions[text:].flip(0)])
        moved = Injection(copy.queries, copy.sources, shuffled)
        assert (replay(moved).latents - identity.latents).abs().max() > 1e-3
