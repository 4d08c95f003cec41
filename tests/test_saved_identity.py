"""Saved characters: an identity saved in replay form (.bvid) and loaded later gives the same shots
as the identity made in one go; new actions and a switched background work; a file made for
another model, other settings or config, a tampered file and another character are refused; the
file holds no pickle and is about the size of the identity's latents."""

import json
import pickle
from dataclasses import replace

import pytest
import torch

from bachvid import cli
from bachvid.io.identity_file import IdentityFileError
from bachvid.method.config import BachVidConfig
from conftest import make_story

SAVED_SETTINGS = dict(seed=0, num_inference_steps=6, num_frames=5, height=32, width=32, guidance_scale=6.0)
ACTIONS = ("stands still", "walks to the left", "jumps")


@pytest.fixture(scope="module", params=[True, False], ids=["rope-5b-layout", "sincos-2b-layout"])
def pipe(request):
    from bachvid.backbones.tiny import tiny_cogvideox_pipeline
    from bachvid.pipeline import BachVidPipeline

    return BachVidPipeline(tiny_cogvideox_pipeline(rope=request.param, num_layers=3), model_name="tiny-test")


@pytest.fixture
def settings():
    from bachvid.pipeline import GenerationSettings

    return GenerationSettings(**SAVED_SETTINGS)


@pytest.fixture
def saved_file(pipe, settings, tmp_path):
    path = tmp_path / "robot.bvid"
    saved = pipe.save_identity(make_story(actions=ACTIONS), path, settings, BachVidConfig(), progress=False)
    return path, saved


def test_shots_from_a_saved_identity_equal_the_shots_made_in_one_go(pipe, settings, saved_file):
    path, saved = saved_file
    story = make_story(actions=ACTIONS)
    one_go = list(pipe.generate(story, settings, BachVidConfig(), identity_mode="cache", progress=False))
    loaded = pipe.load_identity(path, settings, BachVidConfig())
    for group in (1, 2):
        later = list(pipe.generate(story, settings, BachVidConfig(), identity=loaded, group=group, progress=False))
        assert [(r.role, r.index) for r in later] == [("identity", None), ("shot", 0), ("shot", 1)]
        for a, b in zip(one_go, later):
            assert a.prompt == b.prompt and a.seed == b.seed
            assert (a.latents - b.latents).abs().max() <= 1e-5, (group, a.role, a.index)
            assert (a.mask == b.mask).all()
            assert a.stats.get("foreground_pairs") == b.stats.get("foreground_pairs")
        assert (later[0].frames == one_go[0].frames).all()  # the identity is its saved latents, decoded
        assert later[1].stats["identity_mode"] == "replay" and later[1].stats["group"] == group
    assert (saved.frames == one_go[0].frames).all()
    # settings and config default to the saved ones
    default = list(pipe.generate(story, identity=loaded, shots=[1], progress=False))
    assert (default[1].latents - one_go[2].latents).abs().max() <= 1e-5


def test_new_actions_and_a_switched_background(pipe, settings, saved_file):
    path, _ = saved_file
    loaded = pipe.load_identity(path, settings, BachVidConfig())
    # what one go would make: the saved identity's line, then new shots in another place
    lines = ["a green meadow", "a sandy desert", "a sandy desert"]
    one_go_story = make_story(actions=("stands still", "comes closer", "jumps"), backgrounds=lines,
                              shared_background=False)
    one_go = list(pipe.generate(one_go_story, settings, BachVidConfig(), identity_mode="cache", progress=False))
    # a later story: its own first line is replaced by the saved identity; its shots are in the desert
    later_story = make_story(actions=("walks to the left", "comes closer", "jumps"), background="a sandy desert")
    assert later_story.shared_background  # the story alone would share its (desert) background ...
    later = list(pipe.generate(later_story, settings, BachVidConfig(), identity=loaded, progress=False))
    assert later[1].prompt == "a sandy desert, a red robot, comes closer"
    for a, b in zip(one_go, later):  # ... but the saved identity is in the meadow: character only
        assert (a.latents - b.latents).abs().max() <= 1e-5, (a.role, a.index)
        assert a.stats.get("foreground_pairs") == b.stats.get("foreground_pairs")


def test_a_file_for_another_model_is_refused(saved_file):
    from bachvid.backbones.tiny import tiny_cogvideox_pipeline
    from bachvid.pipeline import BachVidPipeline

    path, _ = saved_file
    other = BachVidPipeline(tiny_cogvideox_pipeline(rope=True, num_layers=2))
    with pytest.raises(IdentityFileError, match="model_config_hash: file has"):
        other.load_identity(path)


@pytest.mark.parametrize("change", [dict(num_inference_steps=5), dict(height=48), dict(num_frames=9),
                                    dict(guidance_scale=7.0)])
def test_other_settings_are_refused(pipe, settings, saved_file, change):
    path, _ = saved_file
    other = replace(settings, **change)
    with pytest.raises(IdentityFileError, match="saved for different settings") as info:
        pipe.load_identity(path, other)
    assert len(str(info.value).splitlines()) == 3  # the header, the one field, the advice
    loaded = pipe.load_identity(path)  # compared when it is used, too
    with pytest.raises(IdentityFileError, match="saved for different settings"):
        next(pipe.generate(make_story(actions=ACTIONS), other, identity=loaded, progress=False))
    assert pipe.load_identity(path, replace(settings, seed=5)).seed == 0  # another seed only moves the shots


def test_another_config_is_refused_but_notes_and_background_sharing_are_free(pipe, settings, saved_file):
    path, _ = saved_file
    with pytest.raises(IdentityFileError, match=r"bachvid_config\.tau_mask: file has 0\.2, this run has 0\.4"):
        pipe.load_identity(path, settings, BachVidConfig(tau_mask=0.4))
    with pytest.raises(IdentityFileError, match=r"bachvid_config\.vital_layers"):
        pipe.load_identity(path, settings, BachVidConfig(vital_layers=(0,)))
    pipe.load_identity(path, settings, BachVidConfig(shared_background=False, extra={"note": "x"},
                                                     foreground_logit_bias=-1.0))


def test_a_tampered_file_is_refused(pipe, saved_file):
    path, _ = saved_file
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # one bit of the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(IdentityFileError, match="changed after it was saved"):
        pipe.load_identity(path)


def test_another_character_and_other_modes_are_refused(pipe, settings, saved_file):
    path, _ = saved_file
    loaded = pipe.load_identity(path, settings)
    with pytest.raises(IdentityFileError, match="character 'a red robot', but story 'test' describes 'a blue robot'"):
        next(pipe.generate(make_story(actions=ACTIONS, character="a blue robot"), settings, identity=loaded,
                           progress=False))
    with pytest.raises(ValueError, match="identity_mode must be 'auto' or 'replay'"):
        next(pipe.generate(make_story(actions=ACTIONS), settings, identity=loaded, identity_mode="lockstep",
                           progress=False))
    with pytest.raises(IdentityFileError, match="switches off"):
        next(pipe.generate(make_story(actions=ACTIONS), settings, BachVidConfig(enabled=False), identity=loaded,
                           progress=False))


def test_the_file_holds_no_pickle_and_about_the_latents(pipe, settings, saved_file, monkeypatch):
    from bachvid.io.identity_file import describe

    path, saved = saved_file
    latent_bytes = sum(x.numel() * x.element_size() for x in saved.latents)
    size = path.stat().st_size
    assert latent_bytes < size < 2 * latent_bytes + 2**20
    info = describe(path)
    assert sorted(info["tensors"]) == sorted([f"latents.{i:03d}" for i in range(6)] + ["final", "foreground"])
    assert info["tensors"]["foreground"]["dtype"] == "bool" and info["tensors"]["final"]["dtype"] == "float32"
    meta = info["metadata"]
    assert {k: meta[k] for k in ("model", "background", "character", "action", "seed", "frames", "height", "width",
                                 "steps", "guidance", "dtype")} == {
        "model": "tiny-test", "background": "a green meadow", "character": "a red robot", "action": "stands still",
        "seed": 0, "frames": 5, "height": 32, "width": 32, "steps": 6, "guidance": 6.0, "dtype": "float32"}
    assert meta["prompt"] == "a green meadow, a red robot, stands still" and len(meta["model_config_hash"]) == 16
    assert "extra" not in meta["bachvid_config"] and meta["bachvid_config"]["tau_mask"] == 0.2

    def refuse(*args, **kwargs):
        raise AssertionError("a saved identity must load without unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    loaded = pipe.load_identity(path, settings, BachVidConfig())
    assert all(torch.equal(a, b) for a, b in zip(loaded.latents, saved.latents))
    assert torch.equal(loaded.foreground, saved.foreground) and torch.equal(loaded.final, saved.final)


@pytest.mark.slow
def test_cli_saves_shows_and_uses_a_character(tmp_path, monkeypatch, capsys):
    from bachvid.backbones.tiny import tiny_cogvideox_pipeline
    from bachvid.pipeline import BachVidPipeline

    tiny = BachVidPipeline(tiny_cogvideox_pipeline(num_layers=2), model_name="tiny-test")
    monkeypatch.setattr(cli, "_load_pipeline", lambda args: tiny)
    first = tmp_path / "first.txt"
    first.write_text("a green meadow # a red robot # stands still\na green meadow # a red robot # jumps\n")
    size = ["--steps", "3", "--frames", "5", "--height", "32", "--width", "32"]
    robot = tmp_path / "robot.bvid"
    assert cli.main(["identity", "save", str(first), "--out", str(robot), *size]) == 0
    assert "saved the identity of story-000" in capsys.readouterr().out
    assert cli.main(["identity", "save", str(first), "--out", str(robot)]) == 2  # no overwriting without --force
    assert "--force" in capsys.readouterr().err

    assert cli.main(["identity", "show", str(robot), "--verify"]) == 0
    shown = capsys.readouterr().out
    assert "character: a red robot" in shown and "steps: 3" in shown and "3 latents" in shown and "verified" in shown
    assert cli.main(["identity", "show", str(robot), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["character"] == "a red robot"

    later = tmp_path / "later.txt"
    later.write_text("a sandy desert # a red robot # waves\na sandy desert # a red robot # comes closer\n")
    out = tmp_path / "out"
    assert cli.main(["generate", str(later), "--out", str(out), "--identity", str(robot)]) == 0  # saved settings
    assert "note: story-000: the saved identity" in capsys.readouterr().out
    manifest = json.loads((out / "story-000" / "manifest.json").read_text())
    assert manifest["identity_mode"] == "replay" and manifest["identity_file"]["path"] == str(robot)
    assert manifest["recipe"]["settings"]["num_inference_steps"] == 3
    assert manifest["recipe"]["identity"]["content_hash"].startswith("sha256:")
    assert manifest["story"]["identity"] == {"background": "a green meadow", "action": "stands still"}
    assert manifest["videos"]["shot-01"]["prompt"] == "a sandy desert, a red robot, comes closer"
    for name in ("identity.mp4", "shot-01.mp4", "contact-sheet.png"):
        assert (out / "story-000" / name).is_file()

    # refusals: one clean error line (plus the file's list of differences), exit code 2, nothing made
    assert cli.main(["generate", str(later), "--out", str(tmp_path / "o2"), "--identity", str(robot),
                     "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "error: story-000:" in err and "steps: file has 3, this run has 4" in err and "Traceback" not in err
    assert cli.main(["generate", str(later), "--out", str(tmp_path / "o2"), "--identity", str(later)]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli.main(["generate", str(later), "--out", str(tmp_path / "o2"), "--identity", str(robot),
                     "--identity-mode", "lockstep"]) == 2
    assert "--identity-mode lockstep cannot use it" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_a_segmented_identity_saves_and_replays_the_same_shots(pipe, settings, tmp_path):
    """identity_segmenter on save_identity: the file keeps the mask from the identity's pixels, and shots
    from the file equal the shots made in one go with the same segmenter; generate with a saved identity
    refuses a segmenter (the file's mask is the one used)."""
    import numpy as np

    def top_rows(frames):
        mask = np.zeros(frames.shape[:3], bool)
        mask[:, : frames.shape[1] // 2] = True
        return mask

    story = make_story(actions=ACTIONS)
    saved = pipe.save_identity(story, tmp_path / "seg.bvid", settings, BachVidConfig(), progress=False,
                               identity_segmenter=top_rows)
    grid = tuple(saved.foreground.shape)
    assert saved.foreground[:, : grid[1] // 2].all() and not saved.foreground[:, grid[1] // 2:].any()
    one_go = list(pipe.generate(story, settings, BachVidConfig(), identity_mode="cache", progress=False,
                                identity_segmenter=top_rows))
    loaded = pipe.load_identity(tmp_path / "seg.bvid", settings, BachVidConfig())
    later = list(pipe.generate(story, settings, BachVidConfig(), identity=loaded, progress=False))
    for a, b in zip(one_go, later):
        assert (a.mask == b.mask).all() and (a.latents - b.latents).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="save_identity"):
        list(pipe.generate(story, settings, identity=loaded, progress=False, identity_segmenter=top_rows))
