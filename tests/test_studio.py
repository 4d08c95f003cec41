"""bachvid studio without a browser: the story form and checks, the callbacks on the toy model
(files where the CLI writes them, resumable by it), cancel, saved characters, the served page."""

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from bachvid import cli
from bachvid.io.story import StoryError, load_stories

pytest.importorskip("gradio", reason="the studio extra is not installed: pip install -e '.[studio]'")

from bachvid.studio import callbacks, stories  # noqa: E402
from bachvid.studio.runner import Studio  # noqa: E402

FAST = {"num_inference_steps": 3}
TWO_SHOTS = ("a green meadow # a red robot # stands still\n"
             "a green meadow # a red robot # walks to the left\n"
             "a green meadow # a red robot # jumps\n")


@pytest.fixture(scope="module")
def pipe():
    from bachvid.pipeline import BachVidPipeline

    return BachVidPipeline.from_pretrained(None)  # the built-in toy model


@pytest.fixture
def studio(pipe, tmp_path):
    return Studio(pipe, tmp_path / "out")


def test_the_cli_does_not_import_gradio_until_studio_runs():
    code = ("import sys, bachvid.cli as c; p = c.build_parser(); p.parse_args(['studio', '--port', '0']); "
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_form_writes_the_cli_text_form_and_a_switched_background(tmp_path):
    text = stories.form_text(" a green meadow", "a red robot ", "stands still",
                             [["walks to the left", ""], ["", ""], ["jumps", "a sandy beach"]])
    story, errors = stories.read_story(text, "robot-day")
    assert errors == []
    assert story.name == "robot-day" and story.character == "a red robot"
    assert [(s.background, s.action) for s in story.shots] == [("a green meadow", "walks to the left"),
                                                              ("a sandy beach", "jumps")]
    assert story.shared_background is False  # one shot switches its background
    (tmp_path / "s.txt").write_text(text)
    from_file = load_stories(tmp_path / "s.txt")[0]
    assert (from_file.identity, from_file.shots) == (story.identity, story.shots)


def test_errors_read_as_the_cli_prints_them(tmp_path):
    text = "a green meadow # a red robot # stands still\na green meadow #  # jumps\n"
    _, errors = stories.read_story(text)
    (tmp_path / "story").with_suffix(".txt").write_text(text)
    with pytest.raises(StoryError) as cli_error:
        load_stories(tmp_path / "story.txt")
    assert errors == [f"story:{cli_error.value.line}: {cli_error.value.message}"] == ["story:2: the character is empty"]
    assert stories.read_story("a # b # c\na # b # d\n\na # b # c\na # b # e\n")[1][0].endswith(
        "this text has 2 (a blank line starts a new story)")
    assert "not a folder name" in stories.read_story(TWO_SHOTS, "../up")[1][0]


def test_a_background_the_model_would_cut_is_an_error_before_anything_runs(studio):
    long = " ".join(["a very green meadow with flowers"] * 80)
    message = callbacks.check_story(studio, f"{long} # a red robot # stands still\n{long} # a red robot # jumps\n")
    expected = [str(e) for e in studio.pipe.story_errors(stories.read_story(
        f"{long} # a red robot # stands still\n{long} # a red robot # jumps\n")[0])]
    assert expected and message == "\n".join(f"error: {e}" for e in expected)
    assert callbacks.check_story(studio, TWO_SHOTS) == ""


def test_shot_rows_add_remove_and_reorder():
    rows = stories.add_shot([["walks", ""]], "jumps")
    assert rows == [["walks", ""], ["jumps", ""]]
    rows, at = stories.move_shot(rows, 1, -1)
    assert (rows, at) == ([["jumps", ""], ["walks", ""]], 0)
    assert stories.move_shot(rows, 0, -1) == (rows, 0)  # the first stays first
    assert stories.remove_shot(rows, 0) == [["walks", ""]]
    assert stories.remove_shot(rows, 5) == rows


def test_layers_and_settings_from_the_page():
    assert callbacks.parse_layers("0-2, 5") == (0, 1, 2, 5)
    assert callbacks.parse_layers(" ") is None
    assert callbacks.page_settings({"seed": 3.0, "num_inference_steps": 4.0, "guidance_scale": 7, "width": None}) \
        == {"seed": 3, "num_inference_steps": 4, "guidance_scale": 7.0}
    # empty fields (sent as 0 while the model loads) take the defaults; a seed or guidance of 0 is kept
    assert callbacks.page_settings({"seed": 0, "num_inference_steps": 0, "num_frames": 0, "height": 0, "width": 0,
                                    "guidance_scale": 0}) == {"seed": 0, "guidance_scale": 0.0}


def test_the_loaded_model_fills_only_the_settings_left_empty(pipe):
    """The page is served before the model loads; what a user typed meanwhile survives the fill."""
    from bachvid.studio.app import fill_empty_settings, layers_text

    settings, config = pipe.default_settings(), pipe.default_config()
    empty = fill_empty_settings(pipe, (None, 0, None, 0, None, None, ""))
    assert empty == (settings.seed, settings.num_inference_steps, settings.num_frames, settings.height,
                     settings.width, settings.guidance_scale, layers_text(config))
    typed = (7, 4, 9, 32, 48, 3.5, "0,1")
    assert fill_empty_settings(pipe, typed) == typed
    mixed = fill_empty_settings(pipe, (7, None, 9, None, None, 3.5, ""))
    assert mixed == (7, settings.num_inference_steps, 9, settings.height, settings.width, 3.5, layers_text(config))


def test_sessions_get_their_own_folders(studio):
    a, b = studio.session_folder("abc"), studio.session_folder("xyz")
    assert a != b and a.parent == b.parent == studio.out
    assert studio.session_folder("../../etc").parent == studio.out  # no escape from --out


@pytest.mark.slow
def test_generate_streams_videos_writes_the_cli_layout_and_the_cli_resumes_it(studio, tmp_path, capsys):
    results = list(callbacks.generate(studio, "s1", TWO_SHOTS, "robot", FAST, {"identity_mode": "auto"},
                                      baseline=True))
    counts = [len(r["videos"]) for r in results]
    assert counts == sorted(counts) and 1 in counts and 2 in counts  # videos arrive one by one
    # progress was shown while videos were being made
    assert any("identity: step" in r["status"] for r in results)
    assert any("injected step" in r["status"] for r in results)
    last = results[-1]
    assert last["status"].startswith("**Done") and last["errors"] == ""
    folder = studio.session_folder("s1") / "robot"
    assert [Path(v).name for v, _ in last["videos"]] == ["identity.mp4", "shot-01.mp4", "shot-02.mp4"]
    assert len(last["masks"]) == 3 and Path(last["sheet"]) == folder / "contact-sheet.png"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["finished"] and manifest["recipe"]["settings"]["num_inference_steps"] == 3
    with zipfile.ZipFile(last["zip"]) as archive:
        names = set(archive.namelist())
    assert {"robot/identity.mp4", "robot/shot-02.mp4", "robot/masks/shot-01-mask.mp4", "robot/contact-sheet.png",
            "robot/manifest.json"} <= names
    assert {"robot/vanilla/identity.mp4", "robot/vanilla/shot-02.mp4", "robot/vanilla/manifest.json"} <= names
    # the vanilla baseline: the same identity (BachVid does not change it), other shots
    vanilla = studio.session_folder("s1") / "vanilla" / "robot"
    assert len(last["baseline"]) == 3
    from bachvid.io.outputs import read_video
    assert (read_video(vanilla / "identity.mp4") == read_video(folder / "identity.mp4")).all()
    assert not (read_video(vanilla / "shot-01.mp4") == read_video(folder / "shot-01.mp4")).all()
    # the CLI on the same story (named as in the studio) and settings finds every video made:
    # same layout and recipe
    capsys.readouterr()
    (tmp_path / "robot.yaml").write_text(
        "stories:\n  - name: robot\n    background: a green meadow\n    character: a red robot\n"
        "    identity: stands still\n    actions: [walks to the left, jumps]\n")
    code = cli.main(["generate", str(tmp_path / "robot.yaml"), "--out", str(studio.session_folder("s1")),
                     "--steps", "3"])
    out = capsys.readouterr()
    assert code == 0 and "robot: skipped (all 3 videos exist" in out.out + out.err


@pytest.mark.slow
def test_cancel_keeps_finished_videos_and_generate_resumes(studio):
    cancel = threading.Event()
    results = []
    for result in callbacks.generate(studio, "s2", TWO_SHOTS, "robot", FAST, {}, cancel=cancel):
        results.append(result)
        if result["videos"]:  # the identity is written: cancel during the shots
            cancel.set()
    last = results[-1]
    assert "cancelled" in last["status"] and len(last["videos"]) == 1
    folder = studio.session_folder("s2") / "robot"
    assert (folder / "identity.mp4").is_file() and not (folder / "shot-01.mp4").exists()
    assert json.loads((folder / "manifest.json").read_text())["finished"] is None
    again = list(callbacks.generate(studio, "s2", TWO_SHOTS, "robot", FAST, {}))
    assert "identity | kept from an earlier run" in again[-1]["status"] or again[-1]["status"].startswith("**Done")
    assert any("| identity | kept from an earlier run |" in r["status"] for r in again)
    assert len(again[-1]["videos"]) == 3


def test_cancel_reaches_a_generation_still_waiting_in_the_queue(studio):
    cancels = callbacks.Cancels()
    running = cancels.arm("s4")  # clicked first: running
    waiting = cancels.arm("s4")  # clicked again: queued behind it
    assert cancels.take("s4") is running
    assert cancels.cancel("s4") == 2 and running.is_set() and waiting.is_set()
    assert cancels.cancel("other") == 0
    cancels.done("s4", running)
    assert cancels.take("s4") is waiting  # its turn comes: it starts cancelled, makes nothing
    results = list(callbacks.generate(studio, "s4", TWO_SHOTS, "robot", FAST, {}, cancel=waiting))
    assert len(results) == 1 and "before it started" in results[0]["status"]
    assert not (studio.session_folder("s4") / "robot").exists()
    cancels.done("s4", waiting)
    fresh = cancels.take("s4")  # a run nobody armed (e.g. the API) still gets a flag of its own
    assert not fresh.is_set() and cancels.cancel("s4") == 1 and fresh.is_set()


@pytest.mark.slow
def test_a_changed_setting_remakes_the_story_instead_of_mixing(studio):
    list(callbacks.generate(studio, "s3", TWO_SHOTS, "robot", {"num_inference_steps": 2}, {}))
    first = (studio.session_folder("s3") / "robot" / "shot-01.mp4").read_bytes()
    results = list(callbacks.generate(studio, "s3", TWO_SHOTS, "robot", FAST, {}))
    assert any("made from another recipe; remade" in r["status"] for r in results)
    folder = studio.session_folder("s3") / "robot"
    assert json.loads((folder / "manifest.json").read_text())["recipe"]["settings"]["num_inference_steps"] == 3
    assert (folder / "shot-01.mp4").read_bytes() != first


@pytest.mark.slow
def test_a_saved_character_is_listed_and_gives_later_shots_its_identity(studio):
    message = callbacks.save_character(studio, TWO_SHOTS, "robot", "robot", FAST, {})
    assert message.startswith("saved robot: a red robot"), message
    [(thumb, label)] = callbacks.character_gallery(studio)
    assert Path(thumb).is_file() and "stands still" in label
    assert callbacks.save_character(studio, TWO_SHOTS, "robot", "robot", FAST, {}).startswith("error:")  # taken
    text = callbacks.character_story(studio, "robot") .replace("# \n", "# comes closer\n")
    results = list(callbacks.generate(studio, "s4", text, "later", {"num_inference_steps": 7}, {},
                                      character="robot"))
    last = results[-1]
    assert last["status"].startswith("**Done"), last
    assert "settings are the saved character's" in last["status"]
    manifest = json.loads((studio.session_folder("s4") / "later" / "manifest.json").read_text())
    assert manifest["identity_file"]["path"].endswith("robot.bvid")
    assert manifest["recipe"]["settings"]["num_inference_steps"] == 3  # the saved character's, not the page's
    assert manifest["identity_mode"] == "replay"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_bachvid_studio_starts_quickly_and_serves_the_page(tmp_path):
    port = _free_port()
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "bachvid.cli", "studio", "--port", str(port),
                                "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        page = None
        while time.perf_counter() - start < 60 and process.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        seconds = time.perf_counter() - start
        assert page is not None, process.stdout.read() if process.poll() is not None else "no page in 60 s"
        assert "bachvid studio" in page
        print(f"bachvid studio served its page {seconds:.1f} s after it was started")
        assert seconds < 15
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.slow
def test_the_studio_takes_no_longer_than_the_cli_for_the_same_story(studio, tmp_path, monkeypatch, capsys):
    """The same loaded model, the same two-shot story and steps: bachvid generate, then the studio."""
    monkeypatch.setattr(cli, "_load_pipeline", lambda args: studio.pipe)
    story_file = tmp_path / "two.txt"
    story_file.write_text(TWO_SHOTS)
    start = time.perf_counter()
    assert cli.main(["generate", str(story_file), "--out", str(tmp_path / "cli"), "--steps", "6"]) == 0
    cli_seconds = time.perf_counter() - start
    start = time.perf_counter()
    last = list(callbacks.generate(studio, "timed", TWO_SHOTS, "story-000", {"num_inference_steps": 6}, {}))[-1]
    studio_seconds = time.perf_counter() - start
    assert last["status"].startswith("**Done") and len(last["videos"]) == 3
    print(f"two-shot story, 6 steps: CLI {cli_seconds:.1f} s, studio {studio_seconds:.1f} s")
    assert studio_seconds <= 1.5 * cli_seconds
    # and the same videos: the studio runs the CLI's job
    from bachvid.io.outputs import read_video
    for name in ("identity", "shot-01", "shot-02"):
        assert (read_video(tmp_path / "cli" / "story-000" / f"{name}.mp4")
                == read_video(studio.session_folder("timed") / "story-000" / f"{name}.mp4")).all()


def test_the_lock_box_turns_the_background_lock_on_and_off(studio, monkeypatch):
    """On: the model's own lock (the toy model's agreement lock), or the suggested hard lock where the
    model has none; off: no lock."""
    from bachvid.method.latent_lock import SUGGESTED_BACKGROUND_LOCK

    def lock(config):
        return config.background_latents_until, config.background_latents_weight, config.background_lock_agreement

    own = lock(studio.pipe.default_config())  # the toy model's agreement lock (its bachvid.json)
    assert own[0] > 0 and own[2] > 0
    assert lock(callbacks.page_config(studio, {"background_lock": True})) == own
    assert callbacks.page_config(studio, {"background_lock": False}).background_latents_until == 0.0
    assert lock(callbacks.page_config(studio, {})) == own
    assert callbacks.page_config(studio, {"background_lock": True}, enabled=False).enabled is False
    unlocked = studio.pipe.default_config(background_latents_until=0.0)
    monkeypatch.setattr(studio.pipe, "default_config", lambda **knobs: unlocked.replace(**knobs))
    assert lock(callbacks.page_config(studio, {"background_lock": True})) == (SUGGESTED_BACKGROUND_LOCK, 1.0, 0.0)
    assert callbacks.page_config(studio, {"background_lock": False}).background_latents_until == 0.0
