"""Does BachVid keep background and character while shots still act? Measured on the toy world.

For toy stories (identity "stands still", then several actions), generate the shots twice from
the same seeds: vanilla (each shot alone) and with BachVid. From pixels only (the toy evaluator):
- background error: mean absolute pixel difference to the identity where neither shows the character;
- character similarity: colour-histogram intersection of the character's pixels with the identity's
  (the belt colour and body pattern are per-seed details the text never names);
- action fidelity: the evaluator reads the shot's action as the one asked for;
- time per shot;
- for BachVid, how well the foreground mask read from attention fits the character: IoU with the
  evaluator's pixel mask on the video token grid (identity and shots).
It prints both rows and the ratios BachVid / vanilla, and with --out writes report.json and a
contact sheet (identity, then each shot vanilla | BachVid):

    python -m bachvid.toy.consistency --stories 8 --out runs/consistency
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..io.outputs import contact_sheet
from ..io.story import Shot, Story
from ..io.terminal import quiet_loading_bars_off_terminal
from ..method.config import BachVidConfig, parse_knob
from ..method.prompt import FOREGROUND_SPANS
from . import world
from .evaluate import iou, score_clip

SHOT_ACTIONS = ("left", "jump", "closer")


def toy_stories(count: int, seed: int = 0) -> list[Story]:
    rng = np.random.default_rng(seed)
    stories = []
    for i in range(count):
        b = list(world.BACKGROUNDS)[rng.integers(len(world.BACKGROUNDS))]
        c = list(world.CHARACTERS)[rng.integers(len(world.CHARACTERS))]
        background, character = world.BACKGROUNDS[b], world.CHARACTERS[c]
        shots = tuple(Shot(background, world.ACTIONS[a]) for a in SHOT_ACTIONS)
        stories.append(Story(name=f"toy-{i:02d}", character=character, identity=Shot(background, world.ACTIONS["stand"]),
                             shots=shots, seed=int(rng.integers(1 << 20))))
    return stories


def colour_histogram(frames: np.ndarray, mask: np.ndarray, bins: int = 6) -> np.ndarray:
    pixels = frames[mask].astype(np.int64) * bins // 256
    index = (pixels[:, 0] * bins + pixels[:, 1]) * bins + pixels[:, 2]
    hist = np.bincount(index, minlength=bins**3).astype(np.float64)
    return hist / max(hist.sum(), 1)


def compare(identity_frames: np.ndarray, shot_frames: np.ndarray, action: str) -> dict:
    ident, shot = score_clip(identity_frames), score_clip(shot_frames)
    background = ~ident.mask & ~shot.mask
    bg_error = float(np.abs(identity_frames.astype(np.float32) - shot_frames.astype(np.float32))[background].mean())
    similarity = float(np.minimum(colour_histogram(identity_frames, ident.mask),
                                  colour_histogram(shot_frames, shot.mask)).sum())
    return {"background_error": bg_error, "character_similarity": similarity, "action_right": float(shot.action == action),
            "character_kind_kept": float(shot.character_kind == ident.character_kind)}


def mask_iou(attention_mask: np.ndarray, frames: np.ndarray) -> float:
    """IoU of a mask read from attention (token grid) with the evaluator's character pixels on that grid."""
    return iou(attention_mask, world.latent_token_mask(score_clip(frames).mask))


def measure(pipe, stories: list[Story], config: BachVidConfig | None = None, progress: bool = False,
            sheet: Path | None = None, settings=None) -> dict:
    """Summary rows (vanilla, bachvid, their ratio) over every shot of `stories`; `settings`
    (GenerationSettings) default to the model's."""
    config = config or pipe.default_config()
    base = settings or replace(pipe.default_settings(), shot_seeds="own")  # vanilla: each shot its own seed
    rows = {"vanilla": [], "bachvid": []}
    identity_ious, videos, labels = [], [], []
    for story in stories:
        settings = base.for_story(story)
        identity = pipe.generate_identity(story, settings, config, progress=progress)
        identity_ious.append(mask_iou(identity.mask, identity.frames))
        videos.append(identity.frames)
        labels.append(f"{story.name} identity")
        for i, action in enumerate(SHOT_ACTIONS):
            for mode, mode_config in (("vanilla", config.replace(enabled=False)), ("bachvid", config)):
                start = time.perf_counter()
                shot = pipe.generate_shot(story, i, identity, settings, mode_config, progress=progress)
                row = compare(identity.frames, shot.frames, action)
                row["seconds"] = time.perf_counter() - start
                if shot.mask is not None:
                    row["mask_iou"] = mask_iou(shot.mask, shot.frames)
                rows[mode].append(row)
                videos.append(shot.frames)
                labels.append(f"{action} {mode}")
    summary = {mode: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for mode, rs in rows.items()}
    summary["bachvid"]["identity_mask_iou"] = float(np.mean(identity_ious))
    summary["ratio bachvid/vanilla"] = {k: summary["bachvid"][k] / max(summary["vanilla"][k], 1e-9)
                                        for k in summary["vanilla"]}
    summary["shots"] = len(rows["bachvid"])
    if sheet is not None:
        per_story = 1 + 2 * len(SHOT_ACTIONS)  # identity, then each action vanilla and BachVid
        contact_sheet(sheet, [(" | ".join(labels[i:i + per_story]), np.stack(videos[i:i + per_story]))
                              for i in range(0, len(videos), per_story)], cell=128, frames=(0, 16))
    return summary


def knob(text: str) -> tuple[str, object]:
    """'name=value' -> (name, value), see config.parse_knob; a bad one ends the program."""
    try:
        return parse_knob(text)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def main(argv=None) -> int:
    from ..pipeline import BachVidPipeline

    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.consistency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--stories", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shared-background", action="store_true")
    parser.add_argument("--mask-foreground", choices=FOREGROUND_SPANS, default=None,
                        help="which words make the foreground mask (default: the config's)")
    parser.add_argument("--vital-layers", type=int, default=None, metavar="N",
                        help="inject into the first N layers (default: the model's / the backbone's choice)")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                        help="any BachVidConfig knob, e.g. --set inject_end=1.0 --set mask_layers=[4,7] (repeatable)")
    parser.add_argument("--plain-defaults", action="store_true",
                        help="ignore the model's calibrated settings (bachvid.json) and use BachVidConfig's defaults")
    parser.add_argument("--out", default=None, help="folder for report.json and sheet.png")
    args = parser.parse_args(argv)
    quiet_loading_bars_off_terminal()
    pipe = BachVidPipeline.from_pretrained(args.model)
    config = pipe.default_config(shared_background=not args.no_shared_background)
    if args.mask_foreground:
        config = config.replace(mask_foreground=args.mask_foreground)
    if args.plain_defaults:
        config = BachVidConfig(shared_background=not args.no_shared_background, mask_foreground=config.mask_foreground)
    if args.vital_layers:
        config = config.replace(vital_layers=tuple(range(args.vital_layers)))
    if args.set:
        config = config.replace(**dict(knob(text) for text in args.set))
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    summary = measure(pipe, toy_stories(args.stories, args.seed), config,
                      sheet=out / "sheet.png" if out is not None else None)
    print(json.dumps(summary, indent=2))
    if out is not None:
        (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{'metric':24s} {'vanilla':>10s} {'bachvid':>10s} {'ratio':>8s}")
    for key in summary["bachvid"]:
        vanilla = summary["vanilla"].get(key)
        shown = (f"{vanilla:10.3f}", f"{summary['ratio bachvid/vanilla'][key]:8.2f}") if vanilla is not None \
            else (f"{'-':>10s}", f"{'-':>8s}")
        print(f"{key:24s} {shown[0]} {summary['bachvid'][key]:10.3f} {shown[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
