"""Which layers and which step give the best foreground masks and matches? Answered against the
toy world's truth, by `bachvid analyze`.

BachVid reads the character's mask from video-to-text attention at one step (tau_mask) over some
layers, and point matches from attention outputs at tau_match over other layers; which ones work
depends on the model. `bachvid.toy.analyze` scores every (step, layer) against the truth of
held-out toy videos (mask IoU on the token grid, match accuracy against body coordinates). This
command runs that analysis (or reads one: `--analysis DIR`) and reports, in the form it always
had:

- IoU per (step, layer), for both foreground spans (character + action, character alone);
- the best step, and the best set of layers at that step (layers added greedily while the
  layer-averaged mask improves), as a `BachVidConfig` override;
- likewise the match step and layers (by match accuracy), unless `--no-matches`.

    python -m bachvid.toy.calibrate --videos 12 --out runs/calibrate
    python -m bachvid.toy.calibrate --analysis runs/analyze --write-defaults   # from `bachvid analyze --out runs/analyze`
    python -m bachvid.toy.calibrate --videos 24 --seed 1 --write-defaults --vital-layers 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..io.terminal import quiet_loading_bars_off_terminal
from ..method.config import BachVidConfig, parse_knob
from . import analyze as analysis
from .analyze import SPANS, AttentionRecorder, layer_mask  # noqa: F401  (kept importable from here)

_greedy_layers = analysis.greedy_layers
CALIBRATE_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def from_analysis(report: dict) -> dict:
    """The calibration report (per-layer IoU, default, best mask, best match, config) of an
    `analyze` report."""
    out = {
        "videos": report["videos"], "steps": report["steps"], "candidate_steps": report["candidate_steps"],
        "per_layer_iou": report["mask_iou"], "default": report["default_mask"], "best": report["best_mask"],
        "config": {k: report["config"][k] for k in ("mask_layers", "tau_mask", "mask_foreground", "mask_rule")
                   if k in report["config"]},
    }
    if "best_match" in report:
        out["match"] = report["best_match"]
        out["default_match"] = report.get("default_match")
        out["config"].update(match_layers=report["config"]["match_layers"], tau_match=report["config"]["tau_match"])
    return out


def calibrate(pipe, videos: int = 12, fractions=CALIBRATE_FRACTIONS, seed: int = 0, settings=None,
              kernel: int = 3, matches: bool = True, out: Path | None = None) -> dict:
    """Run `analyze` on `videos` held-out videos (videos // 2 stories) and pick from its tables;
    with `out`, the analysis's CSVs and heatmaps are written there too."""
    report = analysis.analyze(pipe, max(2, videos), seed, fractions, settings, kernel, matches=matches)
    if out is not None:
        analysis.write_outputs(report, out)
    return from_analysis(report)


def main(argv=None) -> int:
    from ..pipeline import DEFAULTS_FILE, BachVidPipeline

    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="toy-world model folder (default: the shipped one)")
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for report.json (and the analysis's CSVs and heatmaps)")
    parser.add_argument("--analysis", default=None, metavar="DIR",
                        help="read the choice from a `bachvid analyze --out DIR` report instead of running it")
    parser.add_argument("--no-matches", action="store_true", help="calibrate the mask only (faster)")
    parser.add_argument("--vital-layers", type=int, default=None, metavar="N",
                        help="with --write-defaults, also store injection into the first N layers (a choice made "
                             "with python -m bachvid.toy.consistency --vital-layers N)")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                        help="with --write-defaults, also store this BachVidConfig knob (repeatable; e.g. "
                             "foreground_injection=false, a choice made with python -m bachvid.toy.diagnose)")
    parser.add_argument("--shot-seeds", choices=("own", "identity"), default=None,
                        help="with --write-defaults, also store the model's default shot seeds")
    parser.add_argument("--write-defaults", action="store_true",
                        help="store the best mask layers, step and span (and match layers and step) under "
                             "'bachvid' in the model's bachvid.json")
    args = parser.parse_args(argv)
    try:
        knobs = dict(parse_knob(text) for text in args.set)
        BachVidConfig(**knobs)  # refuse bad values before any work
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if args.analysis:
        report = from_analysis(json.loads((Path(args.analysis) / "report.json").read_text()))
    else:
        quiet_loading_bars_off_terminal()
        pipe = BachVidPipeline.from_pretrained(args.model)
        report = calibrate(pipe, args.videos, seed=args.seed, matches=not args.no_matches,
                           out=Path(args.out) / "analysis" if args.out else None)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    default, best = report["default"], report["best"]
    shown = "not a candidate step" if default["iou"] is None else f"IoU {default['iou']:.3f}"
    print(f"\ndefault mask ({default['span']}, step {default['step']}, layers {default['layers']}): {shown}")
    print(f"best mask    ({best['span']}, step {best['step']}, layers {best['layers']}): IoU {best['iou']:.3f}")
    if "match" in report:
        match = report["match"]
        print(f"best match   (step {match['step']}, layers {match['layers']}): accuracy "
              f"{match['match_accuracy']:.3f}")
    if args.write_defaults:
        from ..models import DEFAULT_MODEL_DIR

        path = Path(args.model or DEFAULT_MODEL_DIR) / DEFAULTS_FILE
        defaults = json.loads(path.read_text()) if path.is_file() else {}
        chosen = dict(report["config"])
        if args.vital_layers:
            chosen["vital_layers"] = list(range(args.vital_layers))
        chosen.update({k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()})
        defaults["bachvid"] = {**defaults.get("bachvid", {}), **chosen}
        if args.shot_seeds:
            defaults["shot_seeds"] = args.shot_seeds
        path.write_text(json.dumps(defaults, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
