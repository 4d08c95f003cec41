"""Wan2.2-TI2V-5B's layout (text to video): a 16x16x4 VAE (residual, patchified by 2) with 48
latent channels, one timestep per token (`expand_timesteps`), a token per 32 x 32 pixels. Built
tiny from diffusers' own classes with that layout: BachVid off is stock WanPipeline, recording
does not change the identity, doubled identity keys reproduce it, and the identity modes agree."""

import numpy as np
import pytest
import torch

from bachvid.method.config import BachVidConfig
from bachvid.method.identity import CachedIdentity
from bachvid.method.plan import Injection, StepPlan, full_copy_injection
from conftest import make_story

CHANNELS = 8  # 48 in the real model


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def tiny_ti2v_pipeline(num_layers: int = 3, seed: int = 0):
    from diffusers import AutoencoderKLWan, WanPipeline

    from bachvid.backbones.tiny import BASIC_WORDS, build_word_tokenizer, tiny_umt5_encoder, tiny_wan_transformer, wan_scheduler

    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(  # Wan 2.2's VAE: x8 by three down blocks, x2 by patchifying; residual blocks
        base_dim=4, z_dim=CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * CHANNELS, latents_std=[1.0] * CHANNELS, is_residual=True, patch_size=2,
        in_channels=12, out_channels=12, scale_factor_temporal=4, scale_factor_spatial=16).eval()
    tokenizer = build_word_tokenizer(list(BASIC_WORDS), model_max_length=16)
    return WanPipeline(tokenizer=tokenizer, text_encoder=tiny_umt5_encoder(len(tokenizer), seed=seed), vae=vae,
                       transformer=tiny_wan_transformer(num_layers=num_layers, in_channels=CHANNELS, seed=seed + 1),
                       scheduler=wan_scheduler(flow_shift=5.0), expand_timesteps=True)


@pytest.fixture(scope="module")
def pipe():
    from bachvid.pipeline import BachVidPipeline

    return BachVidPipeline(tiny_ti2v_pipeline())


@pytest.fixture(scope="module")
def stock():
    stock = tiny_ti2v_pipeline()
    stock.set_progress_bar_config(disable=True)
    return stock


@pytest.fixture
def settings():
    from bachvid.pipeline import GenerationSettings

    return GenerationSettings(seed=0, num_inference_steps=5, num_frames=9, height=64, width=96, guidance_scale=5.0)


def stock_run(stock, prompt, seed, settings, output_type="latent"):
    return stock(prompt, num_frames=settings.num_frames, height=settings.height, width=settings.width,
                 num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                 generator=torch.Generator().manual_seed(seed), max_sequence_length=16, output_type=output_type).frames


def test_layout(pipe, settings):
    from dataclasses import replace

    backbone = pipe.backbone
    assert pipe.pipe.vae_scale_factor_spatial == 16 and backbone.size_multiple == 32
    assert backbone.token_grid(9, 64, 96) == (3, 2, 3)
    assert any("multiple of 32" in e for e in pipe.settings_errors(replace(settings, height=48)))


def test_switched_off_equals_stock(pipe, stock, settings):
    results = list(pipe.generate(make_story(actions=("stands still", "jumps")), settings,
                                 BachVidConfig(enabled=False), progress=False))
    for result in results:
        assert (result.latents - stock_run(stock, result.prompt, result.seed, settings)).abs().max() <= 1e-5
    frames = stock_run(stock, results[0].prompt, results[0].seed, settings, "np")[0]
    assert results[0].frames.shape == (9, 64, 96, 3)
    assert np.abs(results[0].frames.astype(int) - np.round(frames * 255).astype(int)).max() <= 1


def test_recording_and_doubled_keys(pipe, stock, settings):
    identity = pipe.generate_identity(make_story(actions=("stands still",)), settings, BachVidConfig(), progress=False)
    assert (identity.latents - stock_run(stock, identity.prompt, settings.seed, settings)).abs().max() <= 1e-5
    assert identity.mask.shape == (3, 2, 3)

    spans = pipe.spans("a green meadow", "a red robot", "jumps")
    layers = frozenset(range(pipe.backbone.num_layers))
    tokens = 3 * 2 * 3
    record = CachedIdentity(text_length=0)
    original = pipe.denoise(spans, 7, settings, lambda s: StepPlan(step=s, keep_key_value=layers), target=record)

    def replay(injection):
        return pipe.denoise(spans, 7, settings, lambda s: StepPlan(step=s, inject_layers=layers,
                                                                    injections=(injection,)), source=record).latents

    copy = full_copy_injection(tokens, 0)
    assert (replay(copy) - original.latents).abs().max() <= 1e-4
    moved = Injection(copy.queries, copy.sources, copy.positions.flip(0))
    assert (replay(moved) - original.latents).abs().max() > 1e-3


def test_modes_agree(pipe, settings):
    story = make_story(actions=("stands still", "walks to the left", "jumps"))

    def run(mode, group, config=None):
        return list(pipe.generate(story, settings, config or BachVidConfig(), identity_mode=mode, group=group,
                                  progress=False))

    cached = run("cache", 1)
    for mode, group in (("replay", 2), ("lockstep", 1)):
        for a, b in zip(cached, run(mode, group)):
            assert (a.latents - b.latents).abs().max() <= 1e-5, (mode, a.role, a.index)
    plain = run("cache", 1, BachVidConfig(enabled=False))
    assert max((p.latents - c.latents).abs().max() for p, c in zip(plain[1:], cached[1:])) > 1e-3
