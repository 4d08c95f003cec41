"""BachVid against the same two baselines on each backbone, side by side.

`bachvid toy results` scores one model; run it once per backbone's toy model on the same benchmark
(same `--stories`, `--shots`, `--bench-seed`: same stories and seeds), then put the folders side by side:

    bachvid toy backbone-table --results CogVideoX=docs/results Wan=docs/results-wan \\
        --out docs/results/backbones.md

Rows: for each backbone, the two baselines ("own seed per shot", "the identity's seed") and BachVid
with that model's defaults; columns: each metric's mean and BachVid's paired difference to each
baseline (the CIs `results` computed, over the same stories). Folders made on other stories are
refused: a difference between backbones then means nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .results import METRIC_LABELS, format_delta, format_value
from .shot_metrics import METRICS

BASELINE_ROWS = ("vanilla-own", "vanilla-idseed")


def load(folder: Path) -> dict:
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `bachvid toy results --out {folder}` first")
    return json.loads(path.read_text())


def default_row(summary: dict) -> str:
    """BachVid as the model ships it: the toy models' default runs shots on the identity's seed."""
    for name in ("bachvid-idseed", "bachvid"):
        if name in summary["conditions"]:
            return name
    raise SystemExit("a results folder without a BachVid condition (bachvid or bachvid-idseed)")


def backbone_table(summaries: dict[str, dict], rows: list[str] | None = None) -> str:
    """rows: the BachVid conditions shown per backbone (None: BachVid as the model ships it)."""
    stories = {name: s["story_list"] for name, s in summaries.items()}
    first = next(iter(stories.values()))
    other = [name for name, story_list in stories.items() if story_list != first]
    if other:
        raise SystemExit(f"{', '.join(other)} scored other stories than {next(iter(stories))}: "
                         "run `bachvid toy results` with the same --stories, --shots and --bench-seed")
    head = ["backbone", "condition"]
    for m in METRICS:
        head += [METRIC_LABELS[m], "vs identity's seed", "vs own seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for backbone, summary in summaries.items():
        missing = [c for c in BASELINE_ROWS if c not in summary["conditions"]]
        if missing:
            raise SystemExit(f"{backbone}: results lack the baseline(s) {', '.join(missing)}")
        wanted = rows or [default_row(summary)]
        absent = [c for c in wanted if c not in summary["conditions"]]
        if absent:
            raise SystemExit(f"{backbone}: results lack the condition(s) {', '.join(absent)}")
        for c in (*BASELINE_ROWS, *wanted):
            entry = summary["conditions"][c]
            row = [backbone, entry["label"]]
            for m in METRICS:
                x = entry["metrics"].get(m, {})
                deltas = ("", "") if c in BASELINE_ROWS else (format_delta(m, x.get("vs vanilla-idseed")),
                                                               format_delta(m, x.get("vs vanilla-own")))
                row += [format_value(m, x.get("mean")), *deltas]
            lines.append("| " + " | ".join(row) + " |")
    s = next(iter(summaries.values()))
    lines += ["", f"Same {s['stories']} benchmark stories and seeds on every backbone ({s['shared_stories']} with a "
                  "shared background); differences paired over stories, mean [95% bootstrap CI]; **bold**: the CI "
                  "excludes 0."]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", nargs="+", required=True, metavar="NAME=FOLDER",
                        help="a backbone's name and its `bachvid toy results` folder, e.g. Wan=runs/results-wan")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    parser.add_argument("--rows", default=None, metavar="COND,...",
                        help="BachVid conditions to show per backbone (default: the model's defaults, bachvid-idseed "
                             "or bachvid), e.g. bachvid-idseed,char-lock,locks")
    parser.set_defaults(run=run)


def run(args) -> int:
    summaries = {}
    for item in args.results:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            print(f"error: --results takes NAME=FOLDER, got {item!r}", file=sys.stderr)
            return 2
        summaries[name] = load(Path(folder))
    table = backbone_table(summaries, [c for c in (args.rows or "").split(",") if c] or None)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.backbone_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
