"""Which layers and which step give the best foreground masks? Answered against the toy world's truth.

BachVid reads the character's mask from video-to-text attention at one step (tau_mask) over some
layers; which ones work depends on the model. On the toy world every generated video can be read
back by the pixel evaluator, so the mask each (step, layer) would give can be scored against the
character the video actually shows (IoU on the video token grid). For each candidate step this
runs plain generations that read the text attention of every layer, then reports:

- IoU per (step, layer), for both foreground spans (character + action, character alone);
- the best step, and the best set of layers at that step (layers added greedily while the
  layer-averaged mask improves), as a `BachVidConfig` override.

    python -m bachvid.toy.calibrate --videos 12 --out runs/calibrate
    python -m bachvid.toy.calibrate --write-defaults   # store the choice in the model's bachvid.json
    python -m bachvid.toy.calibrate --videos 24 --seed 1 --write-defaults --vital-layers 5   # the shipped one
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..config import BachVidConfig, step_index
from ..mask import open_mask, text_attention_scores
from ..plan import PLAIN, StepPlan
from . import world
from .evaluate import iou, score_clip

SPANS = ("after_background", "character")


class AttentionRecorder:
    """Stands in for the controller's MaskReader: keeps the background/foreground scores of every
    (foreground span, step, layer) apart instead of averaging them."""

    def __init__(self, spans):
        self.step = -1  # set by the plan of each step
        self.real_length = spans.real_length
        self.words = {span: (torch.tensor(spans.background), torch.tensor(spans.foreground(span))) for span in SPANS}
        self.scores: dict[str, dict[int, dict[int, tuple]]] = {span: {} for span in SPANS}

    def add(self, layer, video_queries, text_keys):
        step = self.step
        for span, (background, foreground) in self.words.items():
            self.scores[span].setdefault(step, {})[layer] = text_attention_scores(
                video_queries, text_keys, self.real_length, background, foreground)


def layer_mask(scores: list[tuple[torch.Tensor, torch.Tensor]], grid, kernel: int) -> np.ndarray:
    """The cleaned mask of the layer-averaged scores, as the method computes it."""
    bg = sum(s[0] for s in scores) / len(scores)
    fg = sum(s[1] for s in scores) / len(scores)
    return open_mask((fg >= bg).reshape(grid).cpu(), kernel).numpy()


def read_all(pipe, combo, seed: int, steps: list[int], settings) -> dict:
    """One plain generation reading every layer at `steps`: the scores, the token grid and the truth."""
    spans = pipe.spans(*world.texts(*combo))
    layers = frozenset(range(pipe.backbone.num_layers))
    recorder = AttentionRecorder(spans)

    def plan(step: int) -> StepPlan:
        recorder.step = step
        return StepPlan(step=step, read_mask=layers) if step in steps else PLAIN

    frames = pipe.denoise(spans, seed, settings, plan, mask_reader=recorder).frames
    return {"truth": world.latent_token_mask(score_clip(frames).mask), "scores": recorder.scores,
            "grid": pipe.backbone.token_grid(settings.num_frames, settings.height, settings.width)}


def calibrate(pipe, videos: int = 12, fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6), seed: int = 0,
              settings=None, kernel: int = 3) -> dict:
    settings = settings or pipe.default_settings()
    n = settings.num_inference_steps
    steps = sorted({min(step_index(f, n), n - 1) for f in fractions})
    rng = np.random.default_rng(seed)
    combos = world.all_combinations()
    runs = [read_all(pipe, combos[rng.integers(len(combos))], int(rng.integers(1 << 20)), steps, settings)
            for _ in range(videos)]
    layers = list(range(pipe.backbone.num_layers))

    def score(span, step, chosen) -> float:
        return float(np.mean([iou(layer_mask([r["scores"][span][step][layer] for layer in chosen], r["grid"], kernel),
                                  r["truth"]) for r in runs]))

    table = {span: {step: {layer: score(span, step, [layer]) for layer in layers} for step in steps} for span in SPANS}
    defaults = pipe.layers(BachVidConfig())
    default_step = min(step_index(BachVidConfig().tau_mask, n), n - 1)
    best = {"iou": -1.0}
    for span in SPANS:
        for step in steps:
            chosen, value = _greedy_layers(lambda c: score(span, step, c), table[span][step])
            if value > best["iou"]:
                best = {"iou": value, "span": span, "step": step, "layers": chosen}
    return {
        "videos": videos, "steps": n, "candidate_steps": steps,
        "per_layer_iou": {span: {str(s): {str(l): round(v, 3) for l, v in row.items()} for s, row in t.items()}
                          for span, t in table.items()},
        "default": {"span": "after_background", "step": default_step, "layers": sorted(defaults.mask),
                    "iou": score("after_background", default_step, sorted(defaults.mask))
                    if default_step in steps else None},
        "best": best,
        "config": {"mask_layers": best["layers"], "tau_mask": round(best["step"] / n, 4),
                   "mask_foreground": best["span"]},
    }


def _greedy_layers(score, single: dict[int, float]) -> tuple[list[int], float]:
    """Start from the best single layer; add the layer that helps most while the IoU rises."""
    order = sorted(single, key=single.get, reverse=True)
    chosen, value = [order[0]], single[order[0]]
    while True:
        trials = [(score(sorted(chosen + [layer])), layer) for layer in order if layer not in chosen]
        if not trials:
            break
        gain, layer = max(trials)
        if gain <= value + 1e-3:
            break
        chosen, value = sorted(chosen + [layer]), gain
    return chosen, value


def main(argv=None) -> int:
    from ..pipeline import DEFAULTS_FILE, BachVidPipeline

    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="toy-world model folder (default: the shipped one)")
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for report.json")
    parser.add_argument("--vital-layers", type=int, default=None, metavar="N",
                        help="with --write-defaults, also store injection into the first N layers (a choice made "
                             "with python -m bachvid.toy.consistency --vital-layers N)")
    parser.add_argument("--write-defaults", action="store_true",
                        help="store the best mask layers, step and span under 'bachvid' in the model's bachvid.json")
    args = parser.parse_args(argv)
    pipe = BachVidPipeline.from_pretrained(args.model)
    report = calibrate(pipe, args.videos, seed=args.seed)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    default, best = report["default"], report["best"]
    shown = "not a candidate step" if default["iou"] is None else f"IoU {default['iou']:.3f}"
    print(f"\ndefault mask ({default['span']}, step {default['step']}, layers {default['layers']}): {shown}")
    print(f"best mask    ({best['span']}, step {best['step']}, layers {best['layers']}): IoU {best['iou']:.3f}")
    if args.write_defaults:
        from ..models import DEFAULT_MODEL_DIR

        path = Path(args.model or DEFAULT_MODEL_DIR) / DEFAULTS_FILE
        defaults = json.loads(path.read_text()) if path.is_file() else {}
        chosen = dict(report["config"])
        if args.vital_layers:
            chosen["vital_layers"] = list(range(args.vital_layers))
        defaults["bachvid"] = {**defaults.get("bachvid", {}), **chosen}
        path.write_text(json.dumps(defaults, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
