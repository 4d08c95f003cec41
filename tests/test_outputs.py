"""Output files are readable, atomic, and show what they claim."""

import numpy as np
import pytest
from PIL import Image

from bachvid import outputs


def frames(n=9, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_video_roundtrip_and_gif(tmp_path):
    video = frames()
    outputs.save_video(tmp_path / "v.mp4", video, fps=8)
    back = outputs.read_video(tmp_path / "v.mp4")
    assert back.shape == (9, 256, 256, 3)  # upscaled x8 nearest so codecs and players accept it
    outputs.save_gif(tmp_path / "v.gif", video)
    assert Image.open(tmp_path / "v.gif").n_frames == 9


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "m.json"
    outputs.write_manifest(target, {"a": 1})

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        outputs.write_atomic(target, broken)
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


def test_mask_overlay_tints_exactly_the_mask():
    video = np.full((9, 32, 32, 3), 100, dtype=np.uint8)
    mask = np.zeros((3, 4, 4), dtype=bool)
    mask[1, 1, 2] = True  # latent frame 1 = frames 1..4, token (1, 2) = pixels y 8..15, x 16..23
    out = outputs.mask_overlay(video, mask)
    changed = np.any(out != video, axis=-1)
    expected = np.zeros_like(changed)
    expected[1:5, 8:16, 16:24] = True
    assert np.array_equal(changed, expected)
    assert out[1, 8, 16, 0] > 100 and out[1, 8, 16, 1] < 100


def test_latent_frame_mapping_follows_the_causal_vae():
    assert [outputs.latent_frame_of(f) for f in range(10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]


def test_contact_sheet_has_a_row_per_video(tmp_path):
    outputs.contact_sheet(tmp_path / "c.png", [("identity", frames()), ("shot 1", frames(seed=1))], cell=64)
    image = Image.open(tmp_path / "c.png")
    assert image.height == 24 + 2 * (64 + 6)
