"""Memory is checked before large allocations: a batch of shots whose activations would not fit
is refused with the estimate and a group that fits, before anything runs (the CLI's side is in
test_cli; the identity cache's in test_modes)."""

import pytest

from bachvid import pipeline
from bachvid.pipeline import BachVidPipeline, GenerationSettings
from conftest import make_story

SETTINGS = GenerationSettings(seed=0, num_inference_steps=2, num_frames=9, height=16, width=24)


@pytest.fixture(scope="module")
def pipe():
    from bachvid.backbones.tiny import tiny_cogvideox_pipeline

    return BachVidPipeline(tiny_cogvideox_pipeline(num_layers=2))  # nothing here runs a step


def test_a_group_that_does_not_fit_is_refused_before_the_first_step(pipe, monkeypatch):
    per_video = pipe.batch_bytes(SETTINGS, 1, "replay")
    monkeypatch.setattr(pipeline, "_available_host_memory", lambda: 2 * per_video + per_video // 2)
    steps = []
    monkeypatch.setattr(pipe.backbone, "denoise", lambda *a, **k: steps.append(1))
    story = make_story(("stands", "walks", "jumps", "sits"))
    with pytest.raises(MemoryError, match=r"group=3 would need about .* \(.* per video at 9 frames of 16x24, 3 "
                                          r"shots\) but host memory has .* free; use group=2 \(--group 2\)"):
        next(pipe.generate(story, SETTINGS, identity_mode="replay", group=3))
    with pytest.raises(MemoryError, match=r"2 shots and the identity\) .* use group=1"):
        next(pipe.generate(story, SETTINGS, identity_mode="lockstep", group=2))  # the identity runs in the batch
    assert steps == []
    assert pipe.default_group(SETTINGS, 3, "replay") == 1  # the default stays inside the memory, with room


def test_when_not_even_one_shot_fits_the_error_says_what_to_change(pipe, monkeypatch):
    monkeypatch.setattr(pipeline, "_available_host_memory", lambda: 1000)
    with pytest.raises(MemoryError, match="even one shot per batch does not fit: fewer frames, a smaller size"):
        pipe.check_group_fits(SETTINGS, 1, "cache")


def test_the_estimate_grows_with_the_batch_and_the_video(pipe):
    one = pipe.batch_bytes(SETTINGS, 1, "cache")
    assert pipe.batch_bytes(SETTINGS, 3, "cache") == 3 * one
    assert pipe.batch_bytes(SETTINGS, 3, "lockstep") == 4 * one and pipe.batch_bytes(SETTINGS, 1, "lockstep") == one
    bigger = GenerationSettings(seed=0, num_inference_steps=2, num_frames=17, height=32, width=48)
    assert pipe.batch_bytes(bigger, 1, "cache") > 3 * one
