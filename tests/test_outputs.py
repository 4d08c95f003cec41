"""Output files are readable, atomic, and show what they claim."""

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from bachvid.io import outputs


def frames(n=9, size=32, seed=0, width=None):
    return np.random.default_rng(seed).integers(0, 255, (n, size, width or size, 3), dtype=np.uint8)


def blocky(n=9, size=16, seed=0):
    """Flat 4x4-pixel patches: what a codec keeps almost exactly."""
    small = np.random.default_rng(seed).integers(0, 255, (n, size // 4, size // 4, 3), dtype=np.uint8)
    return outputs.enlarge(small, 4)


def test_display_scale_is_even_and_reaches_the_minimum():
    assert outputs.display_scale(480, 720) == 1 and outputs.display_scale(256, 999) == 1
    assert outputs.display_scale(64, 64) == 4 and outputs.display_scale(32, 48) == 8
    assert outputs.display_scale(100, 100) == 4  # 3 would do, but colour blocks need an even factor


def test_mp4_round_trip_keeps_frame_count_and_size(tmp_path):
    video = blocky(n=9, size=64)
    outputs.save_video(tmp_path / "v.mp4", video, fps=8)
    stored = outputs.read_video(tmp_path / "v.mp4")
    assert stored.shape == (9, 256, 256, 3)  # 64x64 enlarged x4 nearest
    back = outputs.read_video(tmp_path / "v.mp4", size=(64, 64))
    assert back.shape == video.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - video).mean() < 8  # lossy, but the same picture


def test_mp4_of_odd_size_plays(tmp_path):
    video = frames(n=3, size=257, width=259)  # yuv420p needs even sides: the edge row/column is repeated
    outputs.save_video(tmp_path / "odd.mp4", video)
    assert outputs.read_video(tmp_path / "odd.mp4").shape == (3, 258, 260, 3)
    assert outputs.read_video(tmp_path / "odd.mp4", size=(257, 259)).shape == video.shape
    with pytest.raises(ValueError, match="not a 300x300 video"):
        outputs.read_video(tmp_path / "odd.mp4", size=(300, 300))


def test_gif_preview_frame_count_and_enlargement(tmp_path):
    outputs.save_gif(tmp_path / "v.gif", frames(n=7), fps=8)
    image = Image.open(tmp_path / "v.gif")
    assert image.n_frames == 7 and image.size == (256, 256)
    assert abs(image.info["duration"] - 125) <= 10  # GIF counts in hundredths of a second


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8), np.uint8), "shaped"),
    (np.zeros((0, 8, 8, 3), np.uint8), "shaped"),
    (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
])
def test_bad_frames_are_refused_before_any_file_is_made(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        outputs.save_video(tmp_path / "v.mp4", bad)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "m.json"
    outputs.write_manifest(target, {"a": 1})

    def broken(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        outputs.write_atomic(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


def test_atomic_write_makes_folders_and_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = outputs.write_manifest(tmp_path / "a" / "b" / "m.json", {"x": np.float32(0.5), "n": np.arange(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert json.loads(path.read_text()) == {"x": 0.5, "n": [0, 1]}


def test_mask_overlay_tints_exactly_the_mask():
    video = np.full((9, 32, 32, 3), 100, dtype=np.uint8)
    mask = np.zeros((3, 4, 4), dtype=bool)
    mask[1, 1, 2] = True  # latent frame 1 = frames 1..4, token (1, 2) = pixels y 8..15, x 16..23
    mask[2, 0, 0] = True  # latent frame 2 = frames 5..8
    out = outputs.mask_overlay(video, mask)
    changed = np.any(out != video, axis=-1)
    expected = np.zeros_like(changed)
    expected[1:5, 8:16, 16:24] = True
    expected[5:9, 0:8, 0:8] = True
    assert np.array_equal(changed, expected)
    assert out[1, 10, 18].tolist() == [170, 55, 55]  # inside: 45% red over grey 100
    assert out[1, 8, 16].tolist() == list(outputs.OUTLINE_COLOUR)  # the inner edge
    assert out[5, 0, 0].tolist() == [170, 55, 55]  # the frame's border is not outlined


def test_mask_overlay_in_time():
    mask = np.zeros((3, 1, 1), dtype=bool)
    mask[1] = True

    def tinted(frames, temporal=4):
        video = np.zeros((frames, 8, 8, 3), dtype=np.uint8)
        return np.any(outputs.mask_overlay(video, mask, temporal=temporal) != 0, axis=(1, 2, 3)).tolist()

    assert tinted(5, temporal=2) == [False, True, True, False, False]  # causal: 1 + 2 x 2 frames
    # 12 = 3 x 4 frames is not causal packing (CogVideoX decodes even latent counts so): spread evenly
    assert tinted(12) == [False] * 4 + [True] * 4 + [False] * 4
    with pytest.raises(ValueError, match="finer"):
        outputs.mask_overlay(np.zeros((5, 8, 8, 3), dtype=np.uint8), np.zeros((2, 16, 16), dtype=bool))


def test_latent_frame_mapping_follows_the_causal_vae():
    assert [outputs.latent_frame_of(f) for f in range(10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]


def test_contact_sheet_has_a_row_per_video_and_keeps_aspect(tmp_path):
    videos = [("identity: a red robot stands still", frames()), ("shot-01: " + "words " * 20, frames(seed=1)),
              ("wide", frames(size=32, width=64))]
    outputs.contact_sheet(tmp_path / "c.png", videos, cell=64)
    image = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))
    assert image.shape[0] == 26 + 3 * (64 + 8)
    first = videos[0][1][0]
    cell = image[26:26 + 64, 320:320 + 64]
    assert np.array_equal(cell[::2, ::2], first)  # enlarged x2, nearest: every pixel kept
    assert not (image[26 + 2 * 72:, 320 + 64:320 + 128] == 255).all()  # the wide video is twice as wide
    with pytest.raises(ValueError):
        outputs.contact_sheet(tmp_path / "e.png", [])


def test_a_contact_sheet_of_short_labels_keeps_them_whole_in_a_narrow_column(tmp_path):
    videos = [("city cat jump", frames()), ("city cat", frames(seed=1))]
    outputs.contact_sheet(tmp_path / "s.png", videos, cell=64)
    image = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))
    row = image[26:26 + 64]
    first_frame = next(x for x in range(image.shape[1]) if np.array_equal(row[::2, x], videos[0][1][0][:, 0]))
    assert 60 < first_frame < 200  # not the 320 pixels a long label gets
    ink = np.nonzero((row[:, :first_frame] < 128).all(axis=2))[1]
    assert len(ink) and ink.max() < first_frame - 4  # the label's text ends before the frames start


def test_a_contact_sheet_of_sheet_frames_is_the_same_png(tmp_path):
    videos = [("identity", frames(n=9)), ("shot-01", frames(n=5, seed=1))]
    outputs.contact_sheet(tmp_path / "full.png", videos)
    outputs.contact_sheet(tmp_path / "kept.png", [(label, outputs.sheet_frames(v)) for label, v in videos])
    assert (tmp_path / "full.png").read_bytes() == (tmp_path / "kept.png").read_bytes()
    assert np.array_equal(outputs.sheet_frames(videos[0][1]), videos[0][1][[0, 4, 8]])


def test_before_replace_sees_the_finished_file_before_it_has_its_name(tmp_path):
    seen = []

    def before(tmp):
        seen.append((tmp.read_bytes(), (tmp_path / "v.txt").exists()))

    outputs.write_atomic(tmp_path / "v.txt", lambda tmp: tmp.write_text("video"), before_replace=before)
    assert seen == [(b"video", False)] and (tmp_path / "v.txt").read_text() == "video"

    def dies(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        outputs.write_atomic(tmp_path / "v.txt", lambda tmp: tmp.write_text("new"), before_replace=dies)
    assert (tmp_path / "v.txt").read_text() == "video" and [p.name for p in tmp_path.iterdir()] == ["v.txt"]


def test_an_entry_round_trips_and_describes_only_its_own_video_and_recipe(tmp_path):
    video = frames(n=5)
    outputs.save_video(tmp_path / "shot-01.mp4", video, before_replace=lambda tmp: outputs.save_entry(
        tmp_path / "entries" / "shot-01.npz", {"prompt": "p", "seed": np.int64(3)}, {"steps": 2},
        outputs.file_sha256(tmp), video))
    entry = outputs.read_entry(tmp_path / "entries" / "shot-01.npz")
    assert entry.entry == {"prompt": "p", "seed": 3} and entry.recipe == {"steps": 2}
    assert np.array_equal(entry.sheet, video[[0, 2, 4]]) and entry.sheet.dtype == np.uint8  # lossless
    assert entry.describes(tmp_path / "shot-01.mp4", {"steps": 2})
    assert not entry.describes(tmp_path / "shot-01.mp4", {"steps": 3})  # another recipe
    outputs.save_video(tmp_path / "shot-01.mp4", frames(n=5, seed=9))  # another video under the name
    assert not entry.describes(tmp_path / "shot-01.mp4", {"steps": 2})
    assert not entry.describes(tmp_path / "missing.mp4", {"steps": 2})


@pytest.mark.parametrize("content", [b"", b"not a zip", None])
def test_a_missing_or_damaged_entry_reads_as_none(tmp_path, content):
    path = tmp_path / "e.npz"
    if content is not None:
        path.write_bytes(content)
    assert outputs.read_entry(path) is None
    np.savez(path, meta=np.array("{}"), sheet=frames(n=3))  # readable, but not an entry
    assert outputs.read_entry(path) is None


def test_stale_temporaries_are_found_in_entries_too(tmp_path):
    (tmp_path / "entries").mkdir()
    left = tmp_path / "entries" / ".shot-01-ab12cd34.npz"
    left.write_bytes(b"partial")
    (tmp_path / "entries" / "shot-01.npz").write_bytes(b"kept")
    assert outputs.remove_stale_temporaries(tmp_path) == [left]
    assert (tmp_path / "entries" / "shot-01.npz").exists()


def test_a_contact_sheet_row_may_hold_several_videos_and_chosen_frames(tmp_path):
    story = np.stack([frames(n=17, seed=s) for s in range(3)])  # identity and two shots, side by side
    outputs.contact_sheet(tmp_path / "grid.png", [("one story", story), ("another", story[:2])], cell=64,
                          frames=(0, 16, 99))  # 99: past the end, left out
    image = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    label = image.shape[1] - 6 * (64 + 8)  # 3 videos x 2 frames; rows of 6 and 4
    assert image.shape[0] == 26 + 2 * (64 + 8) and 50 < label < 320  # short labels: a narrow label column
    assert np.array_equal(image[26:26 + 64:2, label + 5 * 72:label + 5 * 72 + 64:2], story[2, 16])
    assert (image[26 + 72:, label + 4 * 72:] == 255).all()  # the shorter row leaves the rest white
