"""Quality bars of a toy model: plain generations of held-out prompts, scored from pixels.

    python -m bachvid.toy.quality --samples 64            # the shipped model
    python -m bachvid.toy.quality --model runs/toy/model  # any toy-world model folder
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np

from ..config import BachVidConfig
from ..story import Shot, Story
from . import world
from .evaluate import score_clip


def held_out_prompts(samples: int, seed: int = 0):
    _, held = world.split_combinations()
    rng = np.random.default_rng(seed)
    return [(held[i % len(held)], int(rng.integers(1 << 20))) for i in range(samples)]


def measure(pipe, samples: int = 64, seed: int = 0, progress: bool = False) -> dict:
    settings = pipe.default_settings()
    right, confusion, start = Counter(), Counter(), time.perf_counter()
    for (b, c, a), sample_seed in held_out_prompts(samples, seed):
        background, character, action = world.texts(b, c, a)
        story = Story(name="q", character=character, identity=Shot(background, action), shots=())
        result = pipe.generate_identity(story, settings.__class__(**{**settings.__dict__, "seed": sample_seed}),
                                        BachVidConfig(enabled=False), progress=progress)
        score = score_clip(result.frames)
        right["background"] += score.background_kind == b
        right["character"] += score.character_kind == c
        right["action"] += score.action == a
        if score.action != a:
            confusion[f"{a}->{score.action}"] += 1
    seconds = time.perf_counter() - start
    return {"samples": samples, **{k: right[k] / samples for k in ("background", "character", "action")},
            "action_confusions": dict(confusion.most_common(6)), "seconds_per_video": seconds / samples,
            "settings": settings.__dict__}


def main(argv=None) -> int:
    from ..pipeline import BachVidPipeline

    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pipe = BachVidPipeline.from_pretrained(args.model)
    report = measure(pipe, args.samples, args.seed)
    print(json.dumps(report, indent=2))
    bars = {"background": 0.9, "character": 0.9, "action": 0.8}
    for key, bar in bars.items():
        print(f"{key:10s} {report[key]:.1%}  (bar {bar:.0%})  {'ok' if report[key] >= bar else 'BELOW'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
