"""The toy harness's contact sheets are outputs.contact_sheet: one row per story, its videos side by side."""

import numpy as np
from PIL import Image

from bachvid.toy import results


def test_results_sheet_has_a_row_per_story_with_identity_same_seed_and_bachvid_shots(tmp_path):
    stories = results.benchmark_stories(3, shots=2)
    rng = np.random.default_rng(0)
    for bs in stories[:2]:  # the third story has no videos yet: left out
        folder = tmp_path / "videos" / bs.name
        folder.mkdir(parents=True)
        np.savez(folder / "identity.npz", frames=rng.integers(0, 255, (17, 64, 64, 3), dtype=np.uint8))
        for condition in ("vanilla-idseed", "bachvid"):
            np.savez(folder / f"{condition}.npz", frames=rng.integers(0, 255, (2, 17, 64, 64, 3), dtype=np.uint8))
    assert results.sheet(tmp_path, stories, 5, tmp_path / "sheet.png")
    image = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    label = image.shape[1] - 5 * 3 * (128 + 8)  # 5 videos x first/middle/last after the label column
    assert image.shape[0] == 26 + 2 * (128 + 8) and 0 < label <= 320
    ours = np.load(tmp_path / "videos" / stories[1].name / "bachvid.npz")["frames"]
    last = image[26 + 136:26 + 136 + 128:2, label + 14 * 136:label + 14 * 136 + 128:2]
    assert np.array_equal(last, ours[1, 16])  # second story, last shot's last frame, enlarged x2
    assert not results.sheet(tmp_path, stories[2:], 5, tmp_path / "none.png")


def test_results_sheet_puts_each_options_shots_under_bachvids(tmp_path):
    """A locks-only run (no own-seed BachVid) still makes a sheet: BachVid on the identity's seed, then a
    row per option that ran, its shots in BachVid's columns."""
    stories = results.benchmark_stories(1, shots=2)
    folder = tmp_path / "videos" / stories[0].name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    videos = {"identity": (17, 64, 64, 3)} | {c: (2, 17, 64, 64, 3) for c in ("vanilla-idseed", "bachvid-idseed",
                                                                           "bg-soft")}
    for condition, shape in videos.items():
        np.savez(folder / f"{condition}.npz", frames=rng.integers(0, 255, shape, dtype=np.uint8))
    assert results.sheet(tmp_path, stories, 5, tmp_path / "sheet.png")
    image = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    label = image.shape[1] - 5 * 3 * (128 + 8)
    assert image.shape[0] == 26 + 2 * (128 + 8) and 0 < label <= 320  # a story row and an option row
    soft = np.load(folder / "bg-soft.npz")["frames"]
    last = image[26 + 136:26 + 136 + 128:2, label + 14 * 136:label + 14 * 136 + 128:2]
    assert np.array_equal(last, soft[1, 16])  # the option's last shot sits under BachVid's last shot
    assert (image[26 + 136:26 + 136 + 128, label:label + 128] == 255).all()  # no identity repeated
