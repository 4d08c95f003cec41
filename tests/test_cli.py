"""The bachvid command end to end on a tiny model: files, resume, --force, errors."""

import json
import subprocess
import sys

import pytest

from bachvid import cli
from bachvid.pipeline import BachVidPipeline
from bachvid.tiny import tiny_cogvideox_pipeline

STORY = "a green meadow # a red robot # stands still\na green meadow # a red robot # jumps\n"
FLAGS = ["--steps", "4", "--frames", "9", "--height", "32", "--width", "32"]


@pytest.fixture
def tiny(monkeypatch):
    loads = []

    def load(args):
        loads.append(args.model)
        return BachVidPipeline(tiny_cogvideox_pipeline(num_layers=2), model_name="tiny-test")

    monkeypatch.setattr(cli, "_load_pipeline", load)
    return loads


def run(tmp_path, *extra, story=STORY, name="s.txt"):
    path = tmp_path / name
    path.write_text(story)
    return cli.main(["generate", str(path), "--out", str(tmp_path / "out"), *FLAGS, *extra])


def test_generate_writes_every_promised_file(tmp_path, tiny):
    assert run(tmp_path) == 0
    folder = tmp_path / "out" / "story-000"
    for name in ("identity.mp4", "identity.gif", "shot-01.mp4", "shot-01.gif", "masks/identity-mask.mp4",
                 "masks/shot-01-mask.mp4", "contact-sheet.png", "manifest.json"):
        assert (folder / name).is_file(), name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["videos"]["shot-01"]["seed"] == 1 and manifest["settings"]["num_inference_steps"] == 4
    assert manifest["config"]["shared_background"] is True and "finished" in manifest
    assert manifest["model"]["name"] == "tiny-test" and manifest["versions"]["diffusers"]


def test_rerun_skips_and_force_regenerates(tmp_path, tiny, capsys):
    assert run(tmp_path) == 0
    video = tmp_path / "out" / "story-000" / "shot-01.mp4"
    stamp = video.stat().st_mtime_ns
    assert run(tmp_path) == 0
    assert "skipped" in capsys.readouterr().out and video.stat().st_mtime_ns == stamp
    video.unlink()  # an interrupted batch: the missing shot is made, the identity file is kept
    identity = tmp_path / "out" / "story-000" / "identity.mp4"
    identity_stamp = identity.stat().st_mtime_ns
    assert run(tmp_path) == 0
    assert video.is_file() and identity.stat().st_mtime_ns == identity_stamp
    assert run(tmp_path, "--force") == 0
    assert identity.stat().st_mtime_ns != identity_stamp


def test_bad_story_exits_2_with_file_and_line(tmp_path, tiny, capsys):
    assert run(tmp_path, story="a # b # c\na # b\n") == 2
    err = capsys.readouterr().err
    assert "s.txt:2:" in err and "3 parts" in err
    assert tiny == []  # no model was loaded for a bad file


def test_too_long_character_is_reported_before_generating(tmp_path, tiny, capsys):
    long = "a " + "red " * 20 + "robot"
    assert run(tmp_path, story=f"a meadow # {long} # jumps\na meadow # {long} # stands still\n") == 2
    err = capsys.readouterr().err
    assert "s.txt:1:" in err and "character would be cut" in err
    assert not (tmp_path / "out").exists()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "s.txt").write_text(STORY)
    code = cli.main(["generate", str(tmp_path / "s.txt"), "--out", str(tmp_path / "o"),
                     "--model", str(tmp_path / "no-model")])
    assert code == 2 and "model_index.json" in capsys.readouterr().err


def test_help_runs_as_a_program():
    done = subprocess.run([sys.executable, "-m", "bachvid.cli", "generate", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--no-shared-background" in done.stdout
