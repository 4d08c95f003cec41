"""The research commands (`python -m bachvid.toy.*`) as a user runs them with stderr to a file or a
CI log: shipped models by name, and none of diffusers' nested loading bars (ESC [A moves the cursor
up, junk off a terminal) - they used to appear in every toy command's log."""

import json
import subprocess
import sys


def test_quality_by_shipped_name_without_cursor_moves_on_piped_stderr(tmp_path):
    out = tmp_path / "quality"
    done = subprocess.run([sys.executable, "-m", "bachvid.toy.quality", "--model", "toy-wan", "--samples", "1",
                           "--steps", "2", "--batch", "1", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\x1b[A" not in done.stderr and "\x1b[A" not in done.stdout
    assert "Loading" not in done.stderr  # the loading bars, not only their cursor moves, are gone
    report = json.loads((out / "report.json").read_text())
    assert report["generated"]["samples"] == 1 and report["model"].endswith("toy-wan")
