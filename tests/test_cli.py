"""The bachvid command: files, resume, --force, errors (on a fast fake pipeline), and once end to
end on the real pipeline over a tiny model."""

import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from bachvid import cli
from bachvid.config import BachVidConfig
from bachvid.story import StoryError

STORY = """a green meadow # a red robot # stands still
a green meadow # a red robot # walks to the left
a green meadow # a red robot # jumps

a sandy desert # a white ghost # stands still
a blue ocean # a white ghost # comes closer
"""


def Settings(**changes):  # the real GenerationSettings, with the fake model's defaults
    from bachvid.pipeline import GenerationSettings

    return GenerationSettings(**{"seed": 0, "num_inference_steps": 3, "num_frames": 5, "height": 16, "width": 24,
                                 "guidance_scale": 6.0, **changes})


@dataclass
class Result:  # the contract's ShotResult
    role: str
    index: int | None
    prompt: str
    seed: int
    frames: np.ndarray
    mask: np.ndarray | None
    seconds: float
    record: object | None = None
    stats: dict | None = None


class FakePipeline:
    """Follows the pipeline contract; frames are a flat colour per seed, so they are checkable."""

    model_name, model_note = "fake-model", "a fake for tests"

    def __init__(self, interrupt_at=None):
        self.calls, self.interrupt_at, self.generated, self.cache_too_big = [], interrupt_at, [], False

    def default_settings(self):
        return Settings()

    def default_config(self, **changes):
        return BachVidConfig(**{"mask_layers": (1,), **changes})  # a model-calibrated knob

    def story_errors(self, story):
        return [StoryError("the character would be cut by the text limit", story.path, shot.line)
                for shot in (story.identity, *story.shots) if "TOO LONG" in shot.background + story.character]

    def settings_errors(self, settings, num_shots):
        return [] if settings.height % 8 == 0 else [f"height must be a positive multiple of 8, got {settings.height}"]

    def identity_mode(self, requested, settings, config):
        if requested == "cache" and self.cache_too_big:
            raise MemoryError("identity_mode='cache' would keep 9.0 GiB of identity keys/values but host memory "
                              "has 1.0 GiB free; use identity_mode='replay' or 'lockstep'")
        if requested == "auto":
            return "replay" if self.cache_too_big else "cache"
        return requested

    def default_group(self, settings, num_shots, mode):
        return max(1, num_shots)

    def _result(self, role, index, story, shot, seed, settings, config, mode=None, group=None):
        self.calls.append((story.name, role, index, settings, config))
        if (story.name, index) == self.interrupt_at:
            raise KeyboardInterrupt
        colour = np.random.default_rng(seed).integers(0, 256, 3)
        frames = np.broadcast_to(colour, (settings.num_frames, settings.height, settings.width, 3)).astype(np.uint8)
        mask = np.zeros(((settings.num_frames - 1) // 4 + 1, settings.height // 8, settings.width // 8), bool)
        mask[:, 0, 0] = True
        prompt = f"{shot.background}, {story.character}, {shot.action}"
        stats = {"identity_mode": mode} if role == "identity" else {"identity_mode": mode, "group": group}
        return Result(role, index, prompt, seed, frames, mask, 0.01, None, stats)

    def generate(self, story, settings, config, *, identity_mode="auto", group=None, shots=None, progress=True,
                 identity=None):
        """Like BachVidPipeline.generate: the identity first (always), then each shot asked for."""
        assert identity is None
        self.generated.append({"story": story.name, "identity_mode": identity_mode, "group": group, "shots": shots})
        mode = self.identity_mode(identity_mode, settings, config)
        shots = list(range(len(story.shots))) if shots is None else shots
        group = group or self.default_group(settings, len(shots), mode)
        yield self._result("identity", None, story, story.identity, settings.seed, settings, config, mode)
        for i in shots:
            yield self._result("shot", i, story, story.shots[i], story.shot_seed(i, settings.seed), settings, config,
                               mode, min(group, len(shots)))


@pytest.fixture
def fake(monkeypatch):
    pipe = FakePipeline()
    monkeypatch.setattr(cli, "_load_pipeline", lambda args: pipe)
    return pipe


def run(tmp_path, *extra, story=STORY, name="s.txt"):
    path = tmp_path / name
    path.write_text(story)
    return cli.main(["generate", str(path), "--out", str(tmp_path / "out"), *extra])


def made(pipe):
    return [(name, role, index) for name, role, index, _, _ in pipe.calls]


FILES = ("identity.mp4", "identity.gif", "masks/identity-mask.mp4", "contact-sheet.png", "manifest.json")


def test_generate_writes_every_promised_file_and_manifest(tmp_path, fake, capsys):
    assert run(tmp_path) == 0
    assert "model: fake-model (a fake for tests)" in capsys.readouterr().out
    robot, ghost = tmp_path / "out" / "story-000", tmp_path / "out" / "story-001"
    for name in (*FILES, "shot-01.mp4", "shot-01.gif", "shot-02.mp4", "shot-02.gif", "masks/shot-02-mask.mp4"):
        assert (robot / name).is_file(), name
    assert (ghost / "shot-01.mp4").is_file() and not (ghost / "shot-02.mp4").exists()
    assert not list((tmp_path / "out").rglob(".*"))  # no temporary files left

    manifest = json.loads((robot / "manifest.json").read_text())
    assert manifest["story"]["character"] == "a red robot" and manifest["story"]["line"] == 1
    assert [s["action"] for s in manifest["story"]["shots"]] == ["walks to the left", "jumps"]
    videos = manifest["videos"]
    assert [videos[n]["seed"] for n in ("identity", "shot-01", "shot-02")] == [0, 1, 2]
    assert videos["shot-02"]["prompt"] == "a green meadow, a red robot, jumps"
    assert videos["shot-01"]["size"] == [16, 24] and videos["shot-01"]["frames"] == 5
    assert videos["identity"]["seconds"] == 0.01 and "masks/identity-mask.mp4" in videos["identity"]["files"]
    assert manifest["recipe"]["settings"] == {"seed": 0, "num_inference_steps": 3, "num_frames": 5, "height": 16,
                                              "width": 24, "guidance_scale": 6.0}
    assert manifest["recipe"]["config"]["shared_background"] is True and manifest["recipe"]["config"]["enabled"]
    assert manifest["recipe"]["config"]["mask_layers"] == [1]  # the model's calibrated knobs are kept
    assert manifest["model"] == {"name": "fake-model", "note": "a fake for tests"}
    assert set(manifest["versions"]) >= {"bachvid", "torch", "diffusers", "transformers"} and manifest["platform"]
    assert manifest["started"] <= manifest["finished"] and manifest["command"][:2] == ["bachvid", "generate"]
    ghost_manifest = json.loads((ghost / "manifest.json").read_text())
    assert ghost_manifest["story"]["shared_background"] is False

    from bachvid.outputs import read_video

    shot = read_video(robot / "shot-01.mp4", size=(16, 24))
    assert shot.shape == (5, 16, 24, 3)
    assert np.abs(shot.astype(int) - np.random.default_rng(1).integers(0, 256, 3)).max() <= 3


def test_flags_beat_story_options_beat_model_defaults(tmp_path, fake):
    story = ("stories:\n  - background: m\n    character: r\n    actions: [a, b]\n    seed: 5\n    frames: 9\n"
             "    height: 32\n")
    assert run(tmp_path, "--seed", "7", "--steps", "2", "--no-shared-background", story=story, name="s.yaml") == 0
    settings, config = fake.calls[0][3], fake.calls[0][4]
    assert settings == Settings(seed=7, num_inference_steps=2, num_frames=9, height=32, width=24)
    assert config.shared_background is False and config.enabled
    assert [c[3].seed for c in fake.calls] == [7, 7]  # the pipeline derives shot seeds from the base seed


def test_rerun_skips_missing_videos_are_made_and_force_remakes(tmp_path, fake, capsys):
    assert run(tmp_path) == 0
    folder = tmp_path / "out" / "story-000"
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*.mp4")}
    fake.calls.clear()
    assert run(tmp_path) == 0
    assert fake.calls == [] and capsys.readouterr().out.count("skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.mp4")} == stamps

    (folder / "shot-02.mp4").unlink()  # as if the batch had stopped before it
    assert run(tmp_path) == 0
    assert made(fake) == [("story-000", "identity", None), ("story-000", "shot", 1)]  # identity in memory only
    assert fake.generated[-1]["shots"] == [1]  # only the missing shot is asked for
    assert (folder / "identity.mp4").stat().st_mtime_ns == stamps[folder / "identity.mp4"]
    assert (folder / "shot-01.mp4").stat().st_mtime_ns == stamps[folder / "shot-01.mp4"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["videos"]) == {"identity", "shot-01", "shot-02"} and manifest["finished"]

    fake.calls.clear()
    assert run(tmp_path, "--force") == 0
    assert len(fake.calls) == 5
    assert all(p.stat().st_mtime_ns != stamps[p] for p in stamps)


def test_a_changed_recipe_does_not_mix_with_old_videos(tmp_path, fake, capsys):
    assert run(tmp_path, "--steps", "2") == 0
    capsys.readouterr()
    fake.calls.clear()
    assert run(tmp_path, "--steps", "4") == 2
    err = capsys.readouterr().err
    assert "settings.num_inference_steps 2 -> 4" in err and "--force" in err and fake.calls == []
    assert run(tmp_path, "--steps", "4", "--force") == 0 and len(fake.calls) == 5


def test_ctrl_c_keeps_finished_videos_and_a_rerun_goes_on(tmp_path, fake, capsys):
    fake.interrupt_at = ("story-000", 1)
    assert run(tmp_path) == 130
    assert "interrupted; finished videos are kept in" in capsys.readouterr().err
    folder = tmp_path / "out" / "story-000"
    assert (folder / "shot-01.mp4").is_file() and not (folder / "shot-02.mp4").exists()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["videos"]) == {"identity", "shot-01"} and manifest["finished"] is None
    assert not list((tmp_path / "out").rglob(".*"))

    fake.interrupt_at, fake.calls = None, []
    assert run(tmp_path) == 0
    assert made(fake)[:2] == [("story-000", "identity", None), ("story-000", "shot", 1)]
    assert len(fake.calls) == 4 and (folder / "contact-sheet.png").is_file()


def test_identity_mode_and_group_reach_generate_and_the_manifest(tmp_path, fake):
    assert run(tmp_path) == 0
    assert [(g["identity_mode"], g["group"]) for g in fake.generated] == [("cache", 2), ("cache", 1)]  # auto resolved
    fake.generated.clear()
    assert run(tmp_path, "--identity-mode", "lockstep", "--group", "1", "--force") == 0
    assert [(g["identity_mode"], g["group"]) for g in fake.generated] == [("lockstep", 1), ("lockstep", 1)]
    manifest = json.loads((tmp_path / "out" / "story-000" / "manifest.json").read_text())
    assert manifest["identity_mode"] == "lockstep" and manifest["group"] == 1
    assert manifest["videos"]["shot-02"]["stats"] == {"identity_mode": "lockstep", "group": 1}
    assert "identity_mode" not in json.dumps(manifest["recipe"])  # every mode gives the same videos
    fake.generated.clear()
    (tmp_path / "out" / "story-000" / "shot-01.mp4").unlink()
    assert run(tmp_path, "--identity-mode", "replay") == 0  # another mode may finish a story: same recipe
    assert fake.generated == [{"story": "story-000", "identity_mode": "replay", "group": 1, "shots": [0]}]


def test_a_cache_that_does_not_fit_is_refused_before_anything_runs(tmp_path, fake, capsys):
    fake.cache_too_big = True
    assert run(tmp_path, "--identity-mode", "cache") == 2
    err = capsys.readouterr().err
    assert "error: story-000: identity_mode='cache' would keep 9.0 GiB" in err and "Traceback" not in err
    assert fake.calls == [] and fake.generated == [] and not (tmp_path / "out").exists()
    assert run(tmp_path) == 0  # auto picks a mode that fits


def test_identity_mode_choices_are_checked_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, "--identity-mode", "fast")
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_bad_story_file_exits_2_with_file_and_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load_pipeline", lambda args: pytest.fail("no model for a bad file"))
    assert run(tmp_path, story="a # b # c\na # b\n") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 's.txt'}:2:" in err and "3 parts" in err


def test_every_story_the_model_refuses_is_reported_before_generating(tmp_path, fake, capsys):
    story = STORY.replace("a red robot #", "a red robot TOO LONG #").replace("a blue ocean", "TOO LONG")
    assert run(tmp_path, story=story) == 2
    err = capsys.readouterr().err
    assert "s.txt:1: the character would be cut" in err and "s.txt:6:" in err
    assert "s.txt:2:" in err and "s.txt:3:" in err and "s.txt:5:" not in err  # every bad line, only those
    assert fake.calls == [] and not (tmp_path / "out").exists()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert run(tmp_path, "--model", str(tmp_path / "no-model")) == 2
    err = capsys.readouterr().err
    assert "error: cannot load the model" in err and "no-model" in err


def test_positive_numbers_are_checked_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, "--steps", "0")
    assert info.value.code == 2 and "must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_on_the_real_pipeline(tmp_path, monkeypatch):
    from bachvid import pipeline
    from bachvid.tiny import tiny_cogvideox_pipeline

    pipe = pipeline.BachVidPipeline(tiny_cogvideox_pipeline(num_layers=2), model_name="tiny-test")
    monkeypatch.setattr(cli, "_load_pipeline", lambda args: pipe)
    story = "a green meadow # a red robot # stands still\na green meadow # a red robot # jumps\n"
    assert run(tmp_path, "--steps", "2", "--frames", "5", "--height", "32", "--width", "32", story=story) == 0
    folder = tmp_path / "out" / "story-000"
    for name in (*FILES, "shot-01.mp4", "shot-01.gif", "masks/shot-01-mask.mp4"):
        assert (folder / name).is_file(), name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["videos"]["shot-01"]["seed"] == 1 and manifest["recipe"]["model"] == "tiny-test"


def test_help_version_and_lazy_subcommands():
    def bachvid(*args):
        return subprocess.run([sys.executable, "-m", "bachvid.cli", *args], capture_output=True, text=True)

    done = bachvid("--help")
    assert done.returncode == 0 and "generate" in done.stdout and "toy" in done.stdout
    assert bachvid("--version").stdout.strip() == f"bachvid {cli.__version__}"
    done = bachvid("generate", "--help")
    assert done.returncode == 0 and "--no-shared-background" in done.stdout
    probe = "import sys; from bachvid import cli; cli.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_toy_train_is_registered_and_loaded_on_use(capsys):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["toy", "train", "--help"])
    assert info.value.code == 0 and "--minutes" in capsys.readouterr().out


def test_shot_seeds_identity_puts_every_shot_on_the_identity_seed(tmp_path, fake):
    assert run(tmp_path, "--shot-seeds", "identity") == 0
    manifest = json.loads((tmp_path / "out" / "story-000" / "manifest.json").read_text())
    assert [manifest["videos"][n]["seed"] for n in ("identity", "shot-01", "shot-02")] == [0, 0, 0]
    assert manifest["story"]["shot_seeds"] == "identity"


def test_bad_settings_are_refused_for_every_story_before_anything_is_made(tmp_path, fake, capsys):
    assert run(tmp_path, "--height", "33") == 2
    err = capsys.readouterr().err
    assert "story-000: height must be a positive multiple of 8, got 33" in err and "story-001" in err
    assert fake.calls == []


def test_temporaries_left_by_a_kill_are_removed_on_the_next_run(tmp_path, fake, capsys):
    """A SIGKILL skips write_atomic's cleanup; the next run of the story removes what it left."""
    assert run(tmp_path) == 0
    robot = tmp_path / "out" / "story-000"
    left = [robot / ".manifest-ab12cd_z.json", robot / ".shot-01-x9y8z7w6.gif", robot / "masks" / ".shot-02-mask-q1w2e3r4.mp4"]
    for path in left:
        path.write_bytes(b"partial")
    (robot / ".keep-me").write_text("not ours")  # not a temporary's name: left alone
    assert run(tmp_path) == 0
    assert not any(path.exists() for path in left) and (robot / ".keep-me").exists()
    assert "removed .manifest-ab12cd_z.json, left by an interrupted run" in capsys.readouterr().out


def _no_model(args):
    pytest.fail("the model was loaded for an --out that cannot be written")


@pytest.mark.parametrize("where", ["read-only folder", "under /proc", "a file in the way"])
def test_an_out_that_cannot_be_written_fails_before_the_model_loads(tmp_path, monkeypatch, capsys, where):
    import os

    monkeypatch.setattr(cli, "_load_pipeline", _no_model)
    if where == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes in read-only folders; /proc stands in for it")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        out, shown = locked / "out", locked
    elif where == "under /proc":
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc")
        out, shown = "/proc/self/bachvid-out", "/proc/self"  # not writable, not even for root
    else:
        (tmp_path / "taken").write_text("")
        out, shown = tmp_path / "taken" / "out", tmp_path / "taken"
    (tmp_path / "s.txt").write_text(STORY)
    assert cli.main(["generate", str(tmp_path / "s.txt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {out}: ") and str(shown) in err and "Traceback" not in err
    assert ("is a file" if where == "a file in the way" else "cannot write in") in err
    assert len(err.strip().splitlines()) == 1


def test_a_read_only_story_folder_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    (tmp_path / "out" / "story-001").mkdir(parents=True)
    import tempfile

    mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and str(dir).endswith("story-001"):
            raise PermissionError(13, "Permission denied")
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(cli, "_load_pipeline", _no_model)
    assert run(tmp_path) == 2
    err = capsys.readouterr().err
    assert f"cannot write in {tmp_path / 'out' / 'story-001'} (Permission denied)" in err


def test_identity_save_to_an_unwritable_place_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load_pipeline", _no_model)
    (tmp_path / "s.txt").write_text(STORY)
    assert cli.main(["identity", "save", str(tmp_path / "s.txt"), "--out", "/proc/self/robot.bvid"]) == 2
    assert "error: --out /proc/self/robot.bvid: cannot write in /proc/self" in capsys.readouterr().err


def test_the_first_words_come_before_the_slow_imports(tmp_path):
    """`bachvid generate` says what it is loading before importing torch (seconds on a small machine)."""
    probe = ("import sys; from bachvid import cli\n"
             "class Stop(Exception): pass\n"
             "def stop(name, *a, **k):\n"
             "    if name == 'torch': raise Stop\n"
             "    return real(name, *a, **k)\n"
             "import builtins; real = builtins.__import__; builtins.__import__ = stop\n"
             "try: cli.main(sys.argv[1:])\n"
             "except Stop: print('torch import reached', file=sys.stderr)\n")
    (tmp_path / "s.txt").write_text(STORY)
    done = subprocess.run([sys.executable, "-c", probe, "generate", str(tmp_path / "s.txt"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert done.stderr.splitlines() == ["loading the built-in toy model ...", "torch import reached"]
