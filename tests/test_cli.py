"""The bachvid command: files, resume, --force, errors, on a real BachVidPipeline over a tiny
random CogVideoX (fast: its videos are noise, which files and manifests do not mind)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bachvid import cli, pipeline

STORY = """a green meadow # a red robot # stands still
a green meadow # a red robot # walks to the left
a green meadow # a red robot # jumps

a sandy desert # a white ghost # stands still
a blue ocean # a white ghost # comes closer
"""
DEFAULTS = {"seed": 0, "num_inference_steps": 3, "num_frames": 9, "height": 16, "width": 24, "guidance_scale": 6.0}


def Settings(**changes):  # the real GenerationSettings, with the test model's defaults
    return pipeline.GenerationSettings(**{**DEFAULTS, **changes})


@pytest.fixture(scope="module")
def tiny():
    import torch

    from bachvid.backbones.tiny import tiny_cogvideox_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model runs fastest on one thread, and 5-20x faster on a busy machine
    yield pipeline.BachVidPipeline(tiny_cogvideox_pipeline(num_layers=2), model_name="tiny-model",
                                   model_note="a tiny random model for tests",
                                   defaults={**DEFAULTS, "bachvid": {"mask_layers": [1]}})  # a calibrated knob
    torch.set_num_threads(threads)


class Spy:
    """The real pipeline, watched: what generate was asked for and what it made; it can stop with
    a Ctrl-C where a given shot would be done (interrupt_at = (story name, shot index))."""

    def __init__(self, pipe, monkeypatch):
        self.pipe, self.calls, self.generated, self.interrupt_at = pipe, [], [], None
        generate = type(pipe).generate

        def watched(pipe_, story, settings=None, config=None, **kwargs):
            self.generated.append({"story": story.name, "identity_mode": kwargs.get("identity_mode"),
                                   "group": kwargs.get("group"), "shots": kwargs.get("shots")})
            for result in generate(pipe_, story, settings, config, **kwargs):
                if (story.name, result.index) == self.interrupt_at and result.role == "shot":
                    raise KeyboardInterrupt
                self.calls.append((story.name, result.role, result.index, settings, config))
                yield result

        monkeypatch.setattr(pipe, "generate", watched.__get__(pipe))
        monkeypatch.setattr(cli, "_load_pipeline", lambda args: pipe)


@pytest.fixture
def spy(tiny, monkeypatch):
    return Spy(tiny, monkeypatch)


def run(tmp_path, *extra, story=STORY, name="s.txt"):
    path = tmp_path / name
    path.write_text(story)
    return cli.main(["generate", str(path), "--out", str(tmp_path / "out"), *extra])


def made(pipe):
    return [(name, role, index) for name, role, index, _, _ in pipe.calls]


FILES = ("identity.mp4", "identity.gif", "masks/identity-mask.mp4", "contact-sheet.png", "manifest.json")


def test_generate_writes_every_promised_file_and_manifest(tmp_path, spy, capsys):
    assert run(tmp_path) == 0
    assert "model: tiny-model (a tiny random model for tests)" in capsys.readouterr().out
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
    assert videos["shot-01"]["size"] == [16, 24] and videos["shot-01"]["frames"] == 9
    assert "masks/identity-mask.mp4" in videos["identity"]["files"]
    assert videos["shot-01"]["stats"]["identity_mode"] == "cache" and videos["shot-01"]["stats"]["prerun_steps"] >= 1
    assert manifest["recipe"]["settings"] == {**DEFAULTS, "shot_seeds": "own"}
    assert manifest["recipe"]["config"]["shared_background"] is True and manifest["recipe"]["config"]["enabled"]
    assert manifest["recipe"]["config"]["mask_layers"] == [1]  # the model's calibrated knobs are kept
    assert manifest["model"] == {"name": "tiny-model", "note": "a tiny random model for tests"}
    assert set(manifest["versions"]) >= {"bachvid", "torch", "diffusers", "transformers"} and manifest["platform"]
    assert manifest["started"] <= manifest["finished"] and manifest["command"][:2] == ["bachvid", "generate"]
    ghost_manifest = json.loads((ghost / "manifest.json").read_text())
    assert ghost_manifest["story"]["shared_background"] is False

    from bachvid.io.outputs import read_entry, read_video

    shot, entry = read_video(robot / "shot-01.mp4", size=(16, 24)), read_entry(robot / "entries" / "shot-01.npz")
    assert shot.shape == (9, 16, 24, 3) and entry.entry == videos["shot-01"]
    assert np.abs(shot[[0, 4, 8]].astype(int) - entry.sheet).mean() < 12  # the MP4 holds the model's frames, lossy


def test_flags_beat_story_options_beat_model_defaults(tmp_path, spy):
    story = ("stories:\n  - background: m\n    character: r\n    actions: [a, b]\n    seed: 5\n    frames: 9\n"
             "    height: 32\n")
    assert run(tmp_path, "--seed", "7", "--steps", "2", "--no-shared-background", story=story, name="s.yaml") == 0
    settings, config = spy.calls[0][3], spy.calls[0][4]
    assert settings == Settings(seed=7, num_inference_steps=2, num_frames=9, height=32, width=24)
    assert config.shared_background is False and config.enabled
    assert [c[3].seed for c in spy.calls] == [7, 7]  # the pipeline derives shot seeds from the base seed


def test_rerun_skips_missing_videos_are_made_and_force_remakes(tmp_path, spy, capsys):
    assert run(tmp_path) == 0
    folder = tmp_path / "out" / "story-000"
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*.mp4")}
    spy.calls.clear()
    assert run(tmp_path) == 0
    assert spy.calls == [] and capsys.readouterr().out.count("skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.mp4")} == stamps

    (folder / "shot-02.mp4").unlink()  # as if the batch had stopped before it
    assert run(tmp_path) == 0
    assert made(spy) == [("story-000", "identity", None), ("story-000", "shot", 1)]  # identity in memory only
    assert spy.generated[-1]["shots"] == [1]  # only the missing shot is asked for
    assert (folder / "identity.mp4").stat().st_mtime_ns == stamps[folder / "identity.mp4"]
    assert (folder / "shot-01.mp4").stat().st_mtime_ns == stamps[folder / "shot-01.mp4"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["videos"]) == {"identity", "shot-01", "shot-02"} and manifest["finished"]

    spy.calls.clear()
    assert run(tmp_path, "--force") == 0
    assert len(spy.calls) == 5
    assert all(p.stat().st_mtime_ns != stamps[p] for p in stamps)


def test_a_changed_recipe_does_not_mix_with_old_videos(tmp_path, spy, capsys):
    assert run(tmp_path, "--steps", "2") == 0
    capsys.readouterr()
    spy.calls.clear()
    assert run(tmp_path, "--steps", "4") == 2
    err = capsys.readouterr().err
    assert "settings.num_inference_steps 2 -> 4" in err and "--force" in err and spy.calls == []
    assert run(tmp_path, "--steps", "4", "--force") == 0 and len(spy.calls) == 5


def test_ctrl_c_keeps_finished_videos_and_a_rerun_goes_on(tmp_path, spy, capsys):
    spy.interrupt_at = ("story-000", 1)
    assert run(tmp_path) == 130
    assert "interrupted; finished videos are kept in" in capsys.readouterr().err
    folder = tmp_path / "out" / "story-000"
    assert (folder / "shot-01.mp4").is_file() and not (folder / "shot-02.mp4").exists()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["videos"]) == {"identity", "shot-01"} and manifest["finished"] is None
    assert not list((tmp_path / "out").rglob(".*"))

    spy.interrupt_at, spy.calls = None, []
    assert run(tmp_path) == 0
    assert made(spy)[:2] == [("story-000", "identity", None), ("story-000", "shot", 1)]
    assert len(spy.calls) == 4 and (folder / "contact-sheet.png").is_file()


def test_identity_mode_and_group_reach_generate_and_the_manifest(tmp_path, spy):
    assert run(tmp_path) == 0
    assert [(g["identity_mode"], g["group"]) for g in spy.generated] == [("cache", 2), ("cache", 1)]  # auto resolved
    spy.generated.clear()
    assert run(tmp_path, "--identity-mode", "lockstep", "--group", "1", "--force") == 0
    assert [(g["identity_mode"], g["group"]) for g in spy.generated] == [("lockstep", 1), ("lockstep", 1)]
    manifest = json.loads((tmp_path / "out" / "story-000" / "manifest.json").read_text())
    assert manifest["identity_mode"] == "lockstep" and manifest["group"] == 1
    stats = manifest["videos"]["shot-02"]["stats"]
    assert (stats["identity_mode"], stats["group"]) == ("lockstep", 1)
    assert "identity_mode" not in json.dumps(manifest["recipe"])  # every mode gives the same videos
    spy.generated.clear()
    (tmp_path / "out" / "story-000" / "shot-01.mp4").unlink()
    assert run(tmp_path, "--identity-mode", "replay") == 0  # another mode may finish a story: same recipe
    assert spy.generated == [{"story": "story-000", "identity_mode": "replay", "group": 1, "shots": [0]}]


def test_a_cache_that_does_not_fit_is_refused_before_anything_runs(tmp_path, spy, monkeypatch, capsys):
    settings, config = Settings(num_inference_steps=20), spy.pipe.default_config()
    free = spy.pipe.cache_bytes(settings, config) - 1  # the cache just does not fit; two shots' batch does
    assert spy.pipe.batch_bytes(settings, 2, "replay") < free
    monkeypatch.setattr(pipeline, "_available_host_memory", lambda: free)
    assert run(tmp_path, "--identity-mode", "cache", "--steps", "20") == 2
    err = capsys.readouterr().err
    assert "error: story-000: identity_mode='cache' would keep" in err and "Traceback" not in err
    assert spy.calls == [] and spy.generated == [] and not (tmp_path / "out").exists()
    assert run(tmp_path, "--steps", "20") == 0  # auto picks a mode that fits
    assert {g["identity_mode"] for g in spy.generated} == {"replay"}


def test_a_batch_that_does_not_fit_is_refused_with_a_group_that_does(tmp_path, spy, monkeypatch, capsys):
    per_video = spy.pipe.batch_bytes(Settings(), 1, "replay")
    monkeypatch.setattr(pipeline, "_available_host_memory", lambda: per_video * 3 // 2)  # one shot's batch fits
    assert run(tmp_path, "--identity-mode", "replay", "--group", "2") == 2
    err = capsys.readouterr().err
    assert "error: story-000: group=2 would need about 221.0 KiB of activations (110.5 KiB per video at 9 frames " \
           "of 16x24, 2 shots) but host memory has 165.8 KiB free; use group=1 (--group 1), which fits" in err
    assert "story-001" not in err and spy.generated == []  # its one shot fits
    assert run(tmp_path, "--identity-mode", "lockstep", "--group", "2") == 2
    assert "2 shots and the identity" in capsys.readouterr().err  # lockstep runs the identity in the batch
    assert run(tmp_path, "--identity-mode", "replay") == 0  # the default group is what fits
    assert [g["group"] for g in spy.generated] == [1, 1] and {c[3] for c in spy.calls} == {Settings()}
    manifest = json.loads((tmp_path / "out" / "story-000" / "manifest.json").read_text())
    assert manifest["group"] == 1 and manifest["videos"]["shot-02"]["stats"]["group"] == 1


def test_identity_mode_choices_are_checked_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, "--identity-mode", "fast")
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_bad_story_file_exits_2_with_file_and_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load_pipeline", lambda args: pytest.fail("no model for a bad file"))
    assert run(tmp_path, story="a # b # c\na # b\n") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 's.txt'}:2:" in err and "3 parts" in err


def test_every_story_the_model_refuses_is_reported_before_generating(tmp_path, spy, capsys):
    too_long = " ".join(["very"] * 20) + " long"  # the tiny model reads 16 tokens
    story = STORY.replace("a red robot #", f"a red robot {too_long} #").replace("a blue ocean", too_long)
    assert run(tmp_path, story=story) == 2
    err = capsys.readouterr().err
    assert "s.txt:1: the character would be cut" in err and "s.txt:6:" in err
    assert "s.txt:2:" in err and "s.txt:3:" in err and "s.txt:5:" not in err  # every bad line, only those
    assert spy.calls == [] and not (tmp_path / "out").exists()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert run(tmp_path, "--model", str(tmp_path / "no-model")) == 2
    err = capsys.readouterr().err
    assert "error: cannot load the model" in err and "no-model" in err


def test_positive_numbers_are_checked_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, "--steps", "0")
    assert info.value.code == 2 and "must be >= 1" in capsys.readouterr().err


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


def test_shot_seeds_identity_puts_every_shot_on_the_identity_seed(tmp_path, spy):
    assert run(tmp_path, "--shot-seeds", "identity") == 0
    manifest = json.loads((tmp_path / "out" / "story-000" / "manifest.json").read_text())
    assert [manifest["videos"][n]["seed"] for n in ("identity", "shot-01", "shot-02")] == [0, 0, 0]
    assert manifest["story"]["shot_seeds"] == "identity"


def test_set_takes_a_bachvid_knob_over_the_models_config(tmp_path, spy):
    assert run(tmp_path, "--set", "background_latents_until=0.5", "--set", "vital_layers=[0]") == 0
    config = spy.calls[-1][-1]
    assert config.background_latents_until == 0.5 and config.vital_layers == (0,)
    assert config.mask_layers == (1,)  # the model's calibrated knob stays
    manifest = json.loads((tmp_path / "out" / "story-000" / "manifest.json").read_text())
    assert manifest["recipe"]["config"]["background_latents_until"] == 0.5


@pytest.mark.parametrize("knob,message", [("nope=1", "expected KNOB=VALUE with a BachVidConfig knob"),
                                          ("background_latents_until=2", "must lie in [0, 1]")])
def test_bad_knobs_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, knob, message):
    monkeypatch.setattr(cli, "_load_pipeline", lambda args: pytest.fail("the model was loaded"))
    assert run(tmp_path, "--set", knob) == 2
    assert message in capsys.readouterr().err


def test_bad_settings_are_refused_for_every_story_before_anything_is_made(tmp_path, spy, capsys):
    assert run(tmp_path, "--height", "33") == 2
    err = capsys.readouterr().err
    assert "story-000: height must be a positive multiple of 8 for this model, got 33" in err and "story-001" in err
    assert spy.calls == []


def test_temporaries_left_by_a_kill_are_removed_on_the_next_run(tmp_path, spy, capsys):
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


def test_an_mp4_its_entry_does_not_describe_is_remade_and_old_folders_still_resume(tmp_path, spy, capsys):
    robot = STORY.split("\n\n")[0] + "\n"
    assert run(tmp_path, story=robot) == 0
    folder = tmp_path / "out" / "story-000"
    from bachvid.io.outputs import read_entry, save_video

    save_video(folder / "shot-01.mp4", np.zeros((9, 16, 24, 3), np.uint8))  # not the video its entry was written for
    spy.calls.clear()
    assert run(tmp_path, story=robot) == 0
    assert made(spy) == [("story-000", "identity", None), ("story-000", "shot", 0)]  # remade, identity in memory
    assert read_entry(folder / "entries" / "shot-01.npz").describes(folder / "shot-01.mp4", json.loads(
        (folder / "manifest.json").read_text())["recipe"])

    import shutil

    shutil.rmtree(folder / "entries")  # a folder made before entries existed: the MP4 marks a video as done
    (folder / "shot-02.mp4").unlink()
    spy.calls.clear()
    assert run(tmp_path, story=robot) == 0
    assert made(spy) == [("story-000", "identity", None), ("story-000", "shot", 1)]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["videos"]) == {"identity", "shot-01", "shot-02"} and manifest["finished"]
    assert "1 made, 2 kept" in capsys.readouterr().out


def test_loading_bars_go_quiet_off_a_terminal_only():
    import io

    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    from bachvid.io.terminal import quiet_loading_bars_off_terminal

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    dlog.enable_progress_bar()  # an earlier in-process CLI run off a terminal may have turned them off
    tlog.enable_progress_bar()
    try:
        assert quiet_loading_bars_off_terminal(Terminal()) is False
        assert dlog.is_progress_bar_enabled() and tlog.is_progress_bar_enabled()
        assert quiet_loading_bars_off_terminal(io.StringIO()) is True
        assert not dlog.is_progress_bar_enabled() and not tlog.is_progress_bar_enabled()
    finally:
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()
