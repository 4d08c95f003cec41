"""Wan 2.2's second guidance (`guidance_scale_2`, the low-noise expert's) as a generation setting:
it runs as the backbone attribute does (which test_wan_experts proves stock), the CLI takes it
(`--guidance-2`) and records it, saved identities keep it and refuse a run without it."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bachvid.backbones.tiny import tiny_wan_pipeline, words_of
from bachvid.cli import main
from bachvid.io.identity_file import IdentityFileError
from bachvid.method.config import BachVidConfig
from bachvid.pipeline import BachVidPipeline, GenerationSettings
from conftest import make_story

STORY = Path(__file__).resolve().parent.parent / "examples" / "story.txt"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def two_experts():
    return BachVidPipeline(tiny_wan_pipeline(num_layers=2, experts=2, words=words_of([STORY.read_text()])))


SETTINGS = GenerationSettings(seed=0, num_inference_steps=4, num_frames=9, height=32, width=32, guidance_scale=6.0)


def identity_latents(pipe, settings, config=None):
    story = make_story(actions=("stands still",))
    return next(pipe.generate(story, settings, config or BachVidConfig(enabled=False), progress=False)).latents


def test_the_setting_runs_as_the_backbones_guidance_2(two_experts):
    assert GenerationSettings().guidance_scale_2 is None and two_experts.default_settings().guidance_scale_2 is None
    plain = identity_latents(two_experts, SETTINGS)
    ours = identity_latents(two_experts, replace(SETTINGS, guidance_scale_2=2.0))
    try:
        two_experts.backbone.guidance_scale_2 = 2.0  # the attribute: stock WanPipeline's (test_wan_experts)
        assert two_experts.default_settings().guidance_scale_2 == 2.0
        theirs = identity_latents(two_experts, SETTINGS)
        assert (identity_latents(two_experts, replace(SETTINGS, guidance_scale_2=6.0)) - plain).abs().max() <= 1e-6
    finally:
        two_experts.backbone.guidance_scale_2 = None
    assert (ours - theirs).abs().max() <= 1e-6 and (ours - plain).abs().max() > 1e-3
    assert replace(SETTINGS, guidance_scale=6.0).for_story(make_story(), guidance_scale_2=3.0).guidance_scale_2 == 3.0


def test_refused_where_stock_refuses_it():
    one = BachVidPipeline(tiny_wan_pipeline(num_layers=1))
    assert any("boundary_ratio" in e for e in one.settings_errors(replace(SETTINGS, guidance_scale_2=2.0)))
    assert not one.settings_errors(SETTINGS)
    from bachvid.backbones.tiny import tiny_cogvideox_pipeline

    cog = BachVidPipeline(tiny_cogvideox_pipeline(num_layers=1))
    assert any("no second guidance" in e for e in cog.settings_errors(replace(SETTINGS, guidance_scale_2=2.0)))


def test_saved_identities_keep_it_and_refuse_a_mismatch(two_experts, tmp_path):
    story = make_story(actions=("stands still", "jumps"))
    with_2 = replace(SETTINGS, guidance_scale_2=2.0)
    saved = two_experts.save_identity(story, tmp_path / "a.bvid", with_2, progress=False)
    loaded = two_experts.load_identity(tmp_path / "a.bvid")
    assert loaded.settings.guidance_scale_2 == 2.0 and loaded.metadata()["guidance_2"] == 2.0
    config = loaded.bachvid_config()
    two_experts.check_saved_identity(loaded, story, with_2, config)  # the same: accepted
    for other in (SETTINGS, replace(SETTINGS, guidance_scale_2=3.0)):  # unset, or another value: refused
        with pytest.raises(IdentityFileError, match="guidance_2"):
            two_experts.check_saved_identity(loaded, story, other, config)
    with pytest.raises(IdentityFileError, match="guidance_2"):
        two_experts.load_identity(tmp_path / "a.bvid", settings=replace(SETTINGS, guidance_scale_2=3.0))
    two_experts.save_identity(story, tmp_path / "b.bvid", SETTINGS, progress=False)
    plain = two_experts.load_identity(tmp_path / "b.bvid")
    assert plain.settings.guidance_scale_2 is None and "guidance_2" not in plain.metadata()  # as before
    with pytest.raises(IdentityFileError, match="guidance_2"):
        two_experts.check_saved_identity(plain, story, with_2, config)
    assert saved.settings.guidance_scale_2 == 2.0


def test_cli_flag_is_recorded_and_checked(two_experts, tmp_path, capsys):
    model = tmp_path / "tiny-wan-a14b"
    two_experts.pipe.save_pretrained(model)
    (model / "bachvid.json").write_text(json.dumps({"num_inference_steps": 2, "guidance_scale": 5.0, "num_frames": 5,
                                                    "height": 32, "width": 32, "fps": 8}))
    one_story = tmp_path / "story.txt"
    one_story.write_text("\n".join(STORY.read_text().strip().splitlines()[:2]) + "\n")
    out = tmp_path / "out"
    assert main(["generate", str(one_story), "--model", str(model), "--out", str(out), "--device", "cpu",
                 "--guidance-2", "3"]) == 0
    manifest = json.loads((next(out.iterdir()) / "manifest.json").read_text())
    assert manifest["recipe"]["settings"]["guidance_scale_2"] == 3.0
    assert manifest["recipe"]["settings"]["guidance_scale"] == 5.0
    bvid = tmp_path / "c.bvid"
    assert main(["identity", "save", str(one_story), "--model", str(model), "--out", str(bvid), "--device", "cpu",
                 "--guidance-2", "3"]) == 0
    capsys.readouterr()
    assert main(["identity", "show", str(bvid)]) == 0
    assert "guidance 2: 3.0" in capsys.readouterr().out
    assert main(["generate", str(one_story), "--model", str(model), "--out", str(tmp_path / "o2"), "--device", "cpu",
                 "--identity", str(bvid), "--guidance-2", "4"]) != 0
    assert "guidance_2" in capsys.readouterr().err
