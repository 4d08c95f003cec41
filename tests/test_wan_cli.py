"""Wan through the command line: `bachvid generate --model <a saved tiny random Wan folder>` end to
end, and `bachvid bench --random-weights` on scaled Wan architectures on a CPU (one and two experts)."""

import json
from pathlib import Path

import pytest

from bachvid.backbones.tiny import tiny_wan_pipeline, words_of
from bachvid.cli import main

STORY = Path(__file__).resolve().parent.parent / "examples" / "story.txt"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.mark.parametrize("experts", [1, 2], ids=["wan2.1", "wan2.2-two-experts"])
def test_generate_a_story_with_a_saved_tiny_wan(tmp_path, capsys, experts):
    model = tmp_path / "tiny-wan"
    pipe = tiny_wan_pipeline(num_layers=2, experts=experts, words=words_of([STORY.read_text()]))
    pipe.save_pretrained(model)
    (model / "bachvid.json").write_text(json.dumps({"num_inference_steps": 4, "guidance_scale": 5.0, "num_frames": 9,
                                                    "height": 32, "width": 32, "fps": 8}))
    out = tmp_path / "out"
    assert main(["generate", str(STORY), "--model", str(model), "--out", str(out), "--device", "cpu"]) == 0
    assert f"model: {model}" in capsys.readouterr().out
    folder = next(out.iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    shots = len(STORY.read_text().strip().splitlines()) - 1
    assert sorted(manifest["videos"]) == ["identity", *(f"shot-{i:02d}" for i in range(1, shots + 1))]
    assert manifest["recipe"]["settings"]["num_frames"] == 9 and manifest["videos"]["shot-01"]["size"] == [32, 32]
    for name in manifest["videos"]:
        assert (folder / f"{name}.mp4").is_file()
    # frames Wan would round are refused before anything runs, naming the story
    assert main(["generate", str(STORY), "--model", str(model), "--out", str(tmp_path / "o2"), "--frames", "10",
                 "--device", "cpu"]) != 0
    assert "4k+1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wan2.1-t2v-1.3b", "wan2.2-t2v-a14b"])
def test_bench_runs_on_a_scaled_wan(tmp_path, capsys, name):
    out = tmp_path / "bench.json"
    code = main(["bench", "--random-weights", name, "--layers", "2", "--heads", "2", "--steps", "3",
                 "--frames", "9", "--height", "32", "--width", "48", "--shots", "2", "--modes",
                 "cache,lockstep:2,replay:1", "--extrapolate", "10", "--device", "cpu", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert f"model: {name} (random float32 weights, 2 layers, 2 heads)" in table and "guidance 5.0" in table
    report = json.loads(out.read_text())
    assert report["settings"]["guidance_scale"] == 5.0  # WanPipeline's default
    lock = report["modes"]["lockstep:2"]
    # a Wan step's two CFG forwards are timed as one: the same forward counts as CogVideoX's
    assert lock["forwards"] == 2 + 1 * (2 + 3) and lock["extrapolated_time_ratio"] > 0
    assert report["modes"]["vanilla"]["forwards"] == 3 * 3
    assert 0 < lock["identity_bytes"] < report["modes"]["replay:1"]["identity_bytes"]


@pytest.mark.slow  # about a minute on 2 cores: the example story at the shipped toy Wan model's 30 steps
def test_the_shipped_toy_wan_model_makes_the_example_story_by_name(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", str(STORY), "--model", "toy-wan", "--out", str(out)]) == 0
    assert "built-in toy Wan model" in capsys.readouterr().out
    folder = next(out.iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"]["settings"]["num_frames"] == 17 and manifest["finished"]
    assert all((folder / "masks" / f"{name}-mask.mp4").is_file() for name in manifest["videos"])


@pytest.mark.slow
def test_bachvid_on_the_toy_wan_model_keeps_the_identity_background_in_pixels():
    """Same story and seeds, scored by the toy evaluator: the shared background is nearer the
    identity's with BachVid than without."""
    from dataclasses import replace

    from bachvid.io.story import Shot, Story
    from bachvid.method.config import BachVidConfig
    from bachvid.pipeline import BachVidPipeline
    from bachvid.toy.consistency import compare

    pipe = BachVidPipeline.from_pretrained("toy-wan")
    settings = replace(pipe.default_settings(), num_inference_steps=16, seed=3)
    story = Story(name="t", character="a red robot", identity=Shot("a green meadow", "stands still"),
                  shots=(Shot("a green meadow", "walks to the left"),))
    config = pipe.default_config()
    identity = pipe.generate_identity(story, settings, config, progress=False)
    vanilla = pipe.generate_shot(story, 0, identity, settings, BachVidConfig(enabled=False), progress=False)
    bachvid = pipe.generate_shot(story, 0, identity, settings, config, progress=False)
    ours, plain = (compare(identity.frames, shot.frames, "left")["background_error"] for shot in (bachvid, vanilla))
    assert ours < 0.8 * plain, (ours, plain)
