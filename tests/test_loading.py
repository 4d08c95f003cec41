"""BachVidPipeline loads like a diffusers pipeline: a local folder, per-model defaults, clear errors."""

import json
from pathlib import Path

import pytest

from bachvid.backbones.tiny import tiny_cogvideox_pipeline
from bachvid.models import MODELS_DIR, shipped_models
from bachvid.pipeline import BachVidPipeline


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-cogvideox")
    tiny_cogvideox_pipeline(num_layers=2).save_pretrained(folder)
    (folder / "bachvid.json").write_text(json.dumps({"num_inference_steps": 7, "guidance_scale": 4.5, "fps": 12}))
    return folder


def test_from_pretrained_local_folder_with_defaults(saved_folder):
    pipe = BachVidPipeline.from_pretrained(saved_folder)
    assert pipe.backbone.name == "cogvideox" and pipe.backbone.num_layers == 2
    settings = pipe.default_settings()
    assert (settings.num_inference_steps, settings.guidance_scale, pipe.fps) == (7, 4.5, 12)
    assert (settings.num_frames, settings.height, settings.width) == (9, 32, 32)  # from the model config
    assert pipe.to("cpu") is pipe


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        BachVidPipeline.from_pretrained(tmp_path / "nothing-here")


def test_unsupported_pipeline_names_the_supported_ones():
    class OtherPipeline:
        pass

    with pytest.raises(ValueError, match="CogVideoXPipeline"):
        BachVidPipeline(OtherPipeline())


def test_uninstall_restores_stock_processors(saved_folder):
    pipe = BachVidPipeline.from_pretrained(saved_folder)
    names = {type(p).__name__ for p in pipe.pipe.transformer.attn_processors.values()}
    assert names == {"CogVideoXBachVidProcessor"}
    pipe.backbone.uninstall()
    names = {type(p).__name__ for p in pipe.pipe.transformer.attn_processors.values()}
    assert names == {"CogVideoXAttnProcessor2_0"}


def test_model_defaults_carry_calibrated_bachvid_settings(tmp_path):
    """bachvid.json's "bachvid" section becomes the model's default config; explicit changes win."""
    import shutil

    from bachvid.models import DEFAULT_MODEL_DIR

    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    defaults = json.loads((folder / "bachvid.json").read_text())
    defaults["bachvid"] = {"mask_layers": [6, 7], "tau_mask": 0.1, "mask_foreground": "character"}
    (folder / "bachvid.json").write_text(json.dumps(defaults))
    pipe = BachVidPipeline.from_pretrained(folder)
    config = pipe.default_config(shared_background=False)
    assert config.mask_layers == (6, 7) and config.tau_mask == 0.1 and config.mask_foreground == "character"
    assert config.shared_background is False and pipe.layers(config).mask == frozenset({6, 7})
    assert pipe.default_config(tau_mask=0.3).tau_mask == 0.3
    defaults["bachvid"] = {"mask_layer": [1]}
    (folder / "bachvid.json").write_text(json.dumps(defaults))
    with pytest.raises(ValueError, match="unknown BachVid setting"):
        BachVidPipeline.from_pretrained(folder).default_config()


def test_story_errors_name_every_line_that_would_be_cut():
    from bachvid.io.story import StoryError, parse_story_text

    pipe = BachVidPipeline.from_pretrained()
    long = " ".join(["a very long green meadow"] * 6)
    story = parse_story_text(f"a green meadow # a red robot # stands still\n{long} # a red robot # jumps\n"
                             f"a green meadow # a red robot # jumps\n{long} # a red robot # jumps\n", path="s.txt")[0]
    errors = pipe.story_errors(story)
    assert [e.line for e in errors] == [2, 4] and all("background would be cut" in str(e) for e in errors)
    with pytest.raises(StoryError, match="s.txt:2:"):
        pipe.check_story(story)


@pytest.mark.parametrize("change,message", [
    (dict(height=33), "height must be a positive multiple of 8"),
    (dict(height=8, width=4), "width must be a positive multiple of 8"),
    (dict(num_inference_steps=1_000_000), "steps must lie in 1..1000"),
    (dict(guidance_scale=float("nan")), "guidance must be a finite number"),
    (dict(guidance_scale=float("inf")), "guidance must be a finite number"),
    (dict(seed=2**64 - 1), "room for the shots' seeds"),
    (dict(num_frames=10**9), "video tokens"),
])
def test_bad_settings_are_refused_before_generating(change, message):
    from dataclasses import replace

    from bachvid import BachVidPipeline
    from bachvid.io.story import Shot, Story

    pipe = BachVidPipeline.from_pretrained()
    story = Story("s", "a red robot", Shot("a green meadow", "stands still"), (Shot("a green meadow", "jumps"),))
    settings = replace(pipe.default_settings(), **change)
    with pytest.raises(ValueError, match=message):
        next(pipe.generate(story, settings, progress=False))
    assert pipe.settings_errors(pipe.default_settings(), 1) == []


def test_the_readme_call_makes_a_story_result_like_generate():
    """`pipe(story)`, the README's main example: a StoryResult whose videos are generate()'s."""
    from bachvid import BachVidPipeline, load_stories

    pipe = BachVidPipeline.from_pretrained()
    story = load_stories(Path(__file__).resolve().parents[1] / "examples" / "story.txt")[0]
    result = pipe(story, num_inference_steps=3, progress=False)
    made = list(pipe.generate(story, pipe.default_settings().for_story(story, num_inference_steps=3), progress=False))
    assert len(result.shots) == len(story.shots) and result.identity.role == "identity"
    for got, want in zip([result.identity, *result.shots], made):
        assert got.seed == want.seed and (got.frames == want.frames).all()
    grid = pipe.backbone.token_grid(result.identity.frames.shape[0], *result.identity.frames.shape[1:3])
    assert result.shots[0].mask.shape == grid and result.shots[0].mask.dtype == bool


@pytest.mark.parametrize("name", shipped_models())
def test_every_shipped_model_loads_by_its_name_and_is_small(name):
    assert sum(p.stat().st_size for p in (MODELS_DIR / name).rglob("*.safetensors")) <= 25 * 2**20
    pipe = BachVidPipeline.from_pretrained(name)
    assert pipe.model_name == str(MODELS_DIR / name) and "toy" in pipe.model_note
    assert ("Wan" in type(pipe.pipe).__name__) == ("wan" in name)


def test_an_unknown_model_name_lists_the_shipped_ones(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="models shipped with bachvid: .*toy-cogvideox"):
        BachVidPipeline.from_pretrained("toy-nope")
