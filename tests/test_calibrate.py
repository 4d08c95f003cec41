"""Mask calibration against the toy world's truth: a per-(step, layer) IoU table and a written choice."""

import json
import shutil

import pytest

from bachvid.method.config import BachVidConfig, read_step
from bachvid.method.plan import Schedule
from bachvid.models import DEFAULT_MODEL_DIR
from bachvid.pipeline import BachVidPipeline
from bachvid.toy import calibrate


@pytest.mark.slow  # about 2 minutes on 2 cores: two full 30-step generations recorded at every layer
def test_calibration_scores_every_layer_and_writes_its_choice(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    assert calibrate.main(["--model", str(folder), "--videos", "2", "--out", str(tmp_path / "c"),
                           "--write-defaults", "--vital-layers", "5"]) == 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    table = report["per_layer_iou"]
    assert set(table) == {"after_background", "character"}
    singles = [v for span in table.values() for row in span.values() for v in row.values()]
    assert len(singles) == 2 * len(report["candidate_steps"]) * 8
    assert report["candidate_steps"] == sorted({read_step(f, report["steps"]) for f in calibrate.CALIBRATE_FRACTIONS})
    best, default = report["best"], report["default"]
    assert str(best["step"]) in table[best["span"]] and default["layers"] == [2, 3, 4, 5]
    method = BachVidConfig()  # the default is where the method itself reads, by its own schedule
    assert (default["span"], default["step"]) == (method.mask_foreground,
                                                  Schedule.of(method, report["steps"]).mask_step)

    config = BachVidPipeline.from_pretrained(folder).default_config()
    assert list(config.mask_layers) == best["layers"] and config.mask_foreground == best["span"]
    assert round(config.tau_mask * report["steps"]) == best["step"] and config.vital_layers == (0, 1, 2, 3, 4)
    kept = json.loads((folder / "bachvid.json").read_text())
    assert kept["guidance_scale"] == json.loads((DEFAULT_MODEL_DIR / "bachvid.json").read_text())["guidance_scale"]


def test_greedy_layers_add_only_what_helps():
    value = {(0,): 0.5, (1,): 0.2, (2,): 0.1, (0, 1): 0.6, (0, 2): 0.4, (0, 1, 2): 0.55}
    chosen, iou = calibrate._greedy_layers(lambda c: value[tuple(c)], {0: 0.5, 1: 0.2, 2: 0.1})
    assert chosen == [0, 1] and iou == 0.6
