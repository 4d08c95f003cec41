"""On the trained toy model, BachVid pulls a shot's background toward the identity's, same seeds."""

import numpy as np
import pytest
import torch

from bachvid.config import BachVidConfig
from bachvid.pipeline import BachVidPipeline
from bachvid.story import Shot, Story
from bachvid.toy.consistency import compare




@pytest.fixture(scope="module")
def toy():
    pipe = BachVidPipeline.from_pretrained()
    settings = pipe.default_settings()
    return pipe, settings.__class__(**{**settings.__dict__, "num_inference_steps": 12, "seed": 3})


def background_distance(result, identity):
    """Mean squared latent difference over tokens that are background in the identity."""
    background = ~torch.as_tensor(identity.mask).repeat_interleave(2, 1).repeat_interleave(2, 2)
    diff = ((result.latents[0] - identity.latents[0]) ** 2).mean(1)
    return diff[background].mean().item()


def test_background_injection_brings_background_latents_closer(toy):
    pipe, settings = toy
    story = Story(name="t", character="a red robot", identity=Shot("a green meadow", "stands still"),
                  shots=(Shot("a green meadow", "walks to the left"),))
    identity = pipe.generate_identity(story, settings, BachVidConfig(), progress=False)
    for i in range(len(story.shots)):
        vanilla = pipe.generate_shot(story, i, identity, settings, BachVidConfig(enabled=False), progress=False)
        bachvid = pipe.generate_shot(story, i, identity, settings, BachVidConfig(), progress=False)
        switched = pipe.generate_shot(story, i, identity, settings, BachVidConfig(shared_background=False),
                                      progress=False)
        d_vanilla, d_bachvid = background_distance(vanilla, identity), background_distance(bachvid, identity)
        assert d_bachvid < 0.8 * d_vanilla, (d_bachvid, d_vanilla)
        # without a shared background, the background is not pulled as much
        assert background_distance(switched, identity) > d_bachvid
        # and in pixels, read by the toy evaluator
        assert compare(identity.frames, bachvid.frames, "left")["background_error"] < \
            compare(identity.frames, vanilla.frames, "left")["background_error"]
