import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETTINGS = dict(seed=0, num_inference_steps=8, num_frames=9, height=32, width=32, guidance_scale=6.0)


def make_story(actions=("stands still", "walks to the left", "jumps"), background="a green meadow",
               character="a red robot", shared_background=True, backgrounds=None):
    from bachvid.io.story import Shot, Story

    backgrounds = backgrounds or [background] * len(actions)
    shots = tuple(Shot(b, a, line=i + 1) for i, (b, a) in enumerate(zip(backgrounds, actions)))
    return Story(name="test", character=character, identity=shots[0], shots=shots[1:],
                 shared_background=shared_background, path="test.txt", line=1)


@pytest.fixture(scope="module", params=[True, False], ids=["rope-5b-layout", "sincos-2b-layout"])
def tiny_pipe(request):
    from bachvid.backbones.tiny import tiny_cogvideox_pipeline
    from bachvid.pipeline import BachVidPipeline

    return BachVidPipeline(tiny_cogvideox_pipeline(rope=request.param, num_layers=4))


@pytest.fixture
def settings():
    from bachvid.pipeline import GenerationSettings

    return GenerationSettings(**SETTINGS)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is as fast, and does not fight other jobs for the cores
    (`pytestmark = pytest.mark.usefixtures("one_thread")` in a test module)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
