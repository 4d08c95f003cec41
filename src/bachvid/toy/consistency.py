"""Does BachVid keep background and character while shots still act? Measured on the toy world.

For toy stories (identity "stands still", then several actions), generate the shots twice from
the same seeds: vanilla (each shot alone) and with BachVid. From pixels only (the toy evaluator):
- background error: mean absolute pixel difference to the identity where neither shows the character;
- character similarity: colour-histogram intersection of the character's pixels with the identity's
  (the belt colour and body pattern are per-seed details the text never names);
- action fidelity: the evaluator reads the shot's action as the one asked for;
- time per shot.
It prints both rows and the ratios BachVid / vanilla:

    python -m bachvid.toy.consistency --stories 8
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ..config import BachVidConfig
from ..story import Shot, Story
from . import world
from .evaluate import score_clip

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


def measure(pipe, stories: list[Story], config: BachVidConfig | None = None, progress: bool = False) -> dict:
    config = config or BachVidConfig()
    base = pipe.default_settings()
    rows = {"vanilla": [], "bachvid": []}
    for story in stories:
        settings = base.for_story(story)
        identity = pipe.generate_identity(story, settings, config, progress=progress)
        for mode, mode_config in (("vanilla", config.replace(enabled=False)), ("bachvid", config)):
            for i, action in enumerate(SHOT_ACTIONS):
                start = time.perf_counter()
                shot = pipe.generate_shot(story, i, identity, settings, mode_config, progress=progress)
                row = compare(identity.frames, shot.frames, action)
                row["seconds"] = time.perf_counter() - start
                rows[mode].append(row)
    summary = {mode: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for mode, rs in rows.items()}
    summary["ratio bachvid/vanilla"] = {k: summary["bachvid"][k] / max(summary["vanilla"][k], 1e-9)
                                        for k in summary["vanilla"]}
    summary["shots"] = len(rows["bachvid"])
    return summary


def main(argv=None) -> int:
    from ..pipeline import BachVidPipeline

    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.consistency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--stories", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shared-background", action="store_true")
    args = parser.parse_args(argv)
    pipe = BachVidPipeline.from_pretrained(args.model)
    config = BachVidConfig(shared_background=not args.no_shared_background)
    summary = measure(pipe, toy_stories(args.stories, args.seed), config)
    print(json.dumps(summary, indent=2))
    print(f"\n{'metric':24s} {'vanilla':>10s} {'bachvid':>10s} {'ratio':>8s}")
    for key in summary["vanilla"]:
        print(f"{key:24s} {summary['vanilla'][key]:10.3f} {summary['bachvid'][key]:10.3f} "
              f"{summary['ratio bachvid/vanilla'][key]:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
