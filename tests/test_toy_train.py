"""The toy recipe runs end to end at smoke scale, and the shipped model is what the README says."""

import json

import numpy as np
import pytest

from bachvid.models import DEFAULT_MODEL_DIR
from bachvid.pipeline import BachVidPipeline
from bachvid.story import Shot, Story
from bachvid.config import BachVidConfig
from bachvid.toy import train, world


def test_smoke_recipe_exports_a_loadable_cogvideox_folder(tmp_path):
    code = train.main(["--scale", "smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "model"),
                       "--vae-steps", "2", "--vae-batch", "2", "--clips-per-combo", "1", "--steps", "3",
                       "--batch-size", "2", "--sample-steps", "3", "--minutes", "2"])
    assert code == 0
    folder = tmp_path / "model"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXPipeline" and index["vae"][1] == "AutoencoderKLCogVideoX"
    pipe = BachVidPipeline.from_pretrained(folder)
    assert pipe.backbone.has_rope and pipe.backbone.num_layers >= 8
    settings = pipe.default_settings()
    assert (settings.num_frames, settings.height, settings.width, settings.num_inference_steps) == (17, 64, 64, 3)
    story = Story(name="s", character="a red robot", identity=Shot("a green meadow", "jumps"), shots=())
    result = pipe.generate_identity(story, settings, BachVidConfig(enabled=False), progress=False)
    assert result.frames.shape == (world.FRAMES, world.SIZE, world.SIZE, 3)


def test_training_prompts_come_from_training_combinations_only(tmp_path):
    train.main(["--scale", "smoke", "--work", str(tmp_path), "--stages", "vae,latents", "--vae-steps", "1",
                "--vae-batch", "1", "--clips-per-combo", "1", "--minutes", "1"])
    import torch

    prompts = set(torch.load(tmp_path / "latents.pt")["prompts"])
    _, held = world.split_combinations()
    from bachvid.prompt import compose_prompt

    assert prompts and not prompts & {compose_prompt(*world.texts(*c)) for c in held}


def test_shipped_model_is_small_and_loads_by_default():
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*.safetensors"))
    assert size <= 25 * 2**20
    pipe = BachVidPipeline.from_pretrained()
    assert pipe.model_note and "toy" in pipe.model_note
    assert pipe.backbone.num_layers >= 8 and pipe.backbone.token_grid(17, 64, 64) == (5, 8, 8)
