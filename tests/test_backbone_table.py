"""`bachvid toy backbone-table`: each backbone's rows carry its own numbers; other stories are refused."""

import copy
import json
from pathlib import Path

import pytest

from bachvid import cli
from bachvid.toy import backbone_table

SHIPPED = Path(__file__).resolve().parents[1] / "docs" / "results" / "results.json"


def _summaries():
    cog = json.loads(SHIPPED.read_text())
    wan = copy.deepcopy(cog)
    del wan["conditions"]["bachvid-idseed"]  # Wan's model default may be own seeds: its "bachvid" row stands in
    wan["conditions"]["bachvid"]["metrics"]["background_psnr"]["vs vanilla-idseed"] = {
        "mean": 4.25, "low": 3.5, "high": 5.0, "significant": True}
    return cog, wan


def _write(folder: Path, summary: dict) -> str:
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(summary))
    return str(folder)


def test_each_backbone_row_shows_its_own_results(tmp_path):
    cog, wan = _summaries()
    out = tmp_path / "table.md"
    code = cli.main(["toy", "backbone-table", "--results", f"CogVideoX={_write(tmp_path / 'c', cog)}",
                     f"Wan={_write(tmp_path / 'w', wan)}", "--out", str(out)])
    assert code == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| CogVideoX") or line.startswith("| Wan")]
    assert len(rows) == 6
    wan_bachvid = rows[5]
    assert "own seed per shot" in wan_bachvid and "**+4.2 [+3.5, +5.0]**" in wan_bachvid
    cog_bachvid = rows[2]
    assert "BachVid, shots on the identity's seed" in cog_bachvid and "+4.2" not in cog_bachvid
    expected = backbone_table.format_delta("background_psnr",
                                           cog["conditions"]["bachvid-idseed"]["metrics"]["background_psnr"]["vs vanilla-idseed"])
    assert expected in cog_bachvid
    assert rows[0].count("[") == 0  # baselines carry no differences


def test_other_stories_or_a_missing_baseline_are_refused(tmp_path, capsys):
    cog, wan = _summaries()
    wan["story_list"] = wan["story_list"][:-1]
    with pytest.raises(SystemExit, match="other stories"):
        backbone_table.backbone_table({"CogVideoX": cog, "Wan": wan})
    cog, wan = _summaries()
    del wan["conditions"]["vanilla-idseed"]
    with pytest.raises(SystemExit, match="vanilla-idseed"):
        backbone_table.backbone_table({"CogVideoX": cog, "Wan": wan})
    assert cli.main(["toy", "backbone-table", "--results", "Wan"]) == 2
    assert "NAME=FOLDER" in capsys.readouterr().err


def test_rows_chooses_the_bachvid_conditions_and_refuses_missing_ones(tmp_path, capsys):
    cog, wan = _summaries()
    cog["conditions"]["char-lock"] = copy.deepcopy(cog["conditions"]["bachvid-idseed"])
    cog["conditions"]["char-lock"]["label"] = "BachVid + character lock"
    wan["conditions"]["char-lock"] = copy.deepcopy(cog["conditions"]["char-lock"])
    folders = [f"CogVideoX={_write(tmp_path / 'c', cog)}", f"Wan={_write(tmp_path / 'w', wan)}"]
    assert cli.main(["toy", "backbone-table", "--results", *folders, "--rows", "bachvid,char-lock"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| CogVideoX", "| Wan"))]
    assert len(rows) == 8 and sum("character lock" in r for r in rows) == 2
    with pytest.raises(SystemExit, match="lack the condition"):
        cli.main(["toy", "backbone-table", "--results", *folders, "--rows", "no-such-condition"])
