"""A real `bachvid generate` killed with SIGKILL mid-story, then run again, ends with the same
files, frames and manifest entries as a run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

STORY = """a green meadow # a red robot # stands still
a green meadow # a red robot # jumps
a green meadow # a red robot # walks to the left
"""
# the built-in toy model, as small as it goes; one mode and group, so the runs' stats agree too
FLAGS = ["--steps", "2", "--frames", "5", "--height", "32", "--width", "32", "--identity-mode", "cache",
         "--group", "1"]

# `bachvid generate` that SIGKILLs itself inside outputs.<argv[1]> once it has written argv[2]:
# - save_video, the MP4's final name just given: the MP4 says "done", the manifest knows nothing;
# - save_entry, the video's entry just written, its MP4 still a temporary file under another name:
#   the entry says "done", the MP4 does not exist.
KILLED = """
import os, signal, sys
from bachvid import cli
from bachvid.io import outputs
write = getattr(outputs, sys.argv[1])
def write_then_die(path, *args, **kwargs):
    written = write(path, *args, **kwargs)
    if path.name == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)
    return written
setattr(outputs, sys.argv[1], write_then_die)
sys.exit(cli.main(sys.argv[3:]))
"""


def bachvid(*args, killed_after=()):
    # one thread: the same arithmetic in every run, and far faster than two on a busy machine
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", KILLED, *killed_after] if killed_after else [sys.executable, "-m", "bachvid.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=600)


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def without_seconds(entry):
    return {k: v for k, v in entry.items() if k != "seconds"}  # wall time: the one thing runs may differ in


def entry_file(path):
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return without_seconds(meta["entry"]), meta["recipe"], meta["video_sha256"], data["sheet"]


KILL_POINTS = {  # where the kill lands -> (what the killed run left, what the re-run reports)
    # the identity's video is done but what shots read of it (kept in memory) is gone with the process
    "identity done, no shot": (("save_video", "identity.mp4"), "2 made, 1 kept"),
    "mp4 written, manifest not": (("save_video", "shot-01.mp4"), "1 made, 2 kept"),
    "entry written, mp4 not": (("save_entry", "shot-01.npz"), "2 made, 1 kept"),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_mid_story_then_rerun_equals_an_uninterrupted_run(tmp_path, point):
    (tmp_path / "s.txt").write_text(STORY)
    story = str(tmp_path / "s.txt")
    done = bachvid("generate", story, "--out", str(tmp_path / "whole"), *FLAGS)
    assert done.returncode == 0, done.stderr
    assert "\x1b[A" not in done.stderr  # stderr is a pipe here: no nested bars moving the cursor up

    kill_at, rerun_says = KILL_POINTS[point]
    killed = bachvid("generate", story, "--out", str(tmp_path / "resumed"), *FLAGS, killed_after=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder, whole = tmp_path / "resumed" / "story-000", tmp_path / "whole" / "story-000"
    assert not (folder / "shot-02.mp4").exists()
    known = json.loads((folder / "manifest.json").read_text())["videos"] if (folder / "manifest.json").exists() else {}
    assert set(known) <= {"identity"}  # shot-01 unknown to it
    if kill_at[1] == "identity.mp4":
        assert (folder / "identity.mp4").is_file() and not (folder / "shot-01.mp4").exists()
    elif kill_at[0] == "save_video":
        assert (folder / "shot-01.mp4").is_file()
    else:  # the entry is there, the MP4 only as a temporary file that the re-run must not trust
        assert (folder / "entries" / "shot-01.npz").is_file() and not (folder / "shot-01.mp4").exists()
        assert any(f.startswith(".shot-01-") and f.endswith(".mp4") for f in files(folder)), files(folder)

    resumed = bachvid("generate", story, "--out", str(tmp_path / "resumed"), *FLAGS)
    assert resumed.returncode == 0, resumed.stderr
    assert rerun_says in resumed.stdout, resumed.stdout  # shot-01 kept when its MP4 was whole, else made again

    assert files(folder) == files(whole)
    for name in files(whole):
        if name == "manifest.json" or name.startswith("entries/"):
            continue
        assert (folder / name).read_bytes() == (whole / name).read_bytes(), name  # videos, previews, sheet
    manifests = [json.loads((f / "manifest.json").read_text()) for f in (folder, whole)]
    assert all(m["finished"] for m in manifests)
    assert [{n: without_seconds(e) for n, e in m["videos"].items()} for m in manifests][0] == \
        {n: without_seconds(e) for n, e in manifests[1]["videos"].items()}
    assert manifests[0]["recipe"] == manifests[1]["recipe"]
    for name in ("identity", "shot-01", "shot-02"):
        (entry, recipe, sha, sheet), (entry_w, recipe_w, sha_w, sheet_w) = (
            entry_file(f / "entries" / f"{name}.npz") for f in (folder, whole))
        assert (entry, recipe, sha) == (entry_w, recipe_w, sha_w) and np.array_equal(sheet, sheet_w), name
