"""How often can the belt evaluator say "kept" when the belt truly is kept? (research probe, issue 7)

    python scripts/belt_ceiling.py [MODEL] [--stories 32] [--bench-seed 20251107]

The results table's belt bar (the identity's belt colour kept in >= 70% of shots) is scored from pixels by
`shot_metrics` (the belt band's median colour within BELT_MATCH of the identity's). Here the world itself
renders the benchmark's stories as a perfectly consistent method would make them: each shot is the
identity's character (same seed: pattern, size, belt colour) doing the shot's action, on the shot's
background. Scored as the results table scores generated shots, once on the rendered pixels and once
after the model's VAE round trip (what any generated video goes through), beside the same shots with
their own seed's belt (a method that keeps nothing of the belt: chance). The truth's rate is the
evaluator's ceiling for any method on this model. ~2 min on one CPU thread.
"""
import argparse
import json
from pathlib import Path

import diffusers
import numpy as np
import torch

from bachvid.toy import results, shot_metrics, world


def round_trip(vae, frames: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    y = vae.decode(vae.encode(x).latent_dist.mode()).sample[0]
    return ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(Path(world.__file__).parents[1] / "models" / "toy-cogvideox"))
    parser.add_argument("--stories", type=int, default=32)
    parser.add_argument("--bench-seed", type=int, default=results.BENCH_SEED)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = json.loads((Path(args.model) / "vae" / "config.json").read_text())["_class_name"]
    vae = getattr(diffusers, name).from_pretrained(f"{args.model}/vae", torch_dtype=torch.float32).eval()
    rows: dict[str, list] = {}
    with torch.inference_mode():
        for story in results.benchmark_stories(args.stories, seed=args.bench_seed):
            identity = world.render_clip(story.background, story.character, "stand", story.seed, world="v2")
            decoded = round_trip(vae, identity.frames)
            for background, action in zip(story.shot_backgrounds, story.actions):
                kept = world.render_clip(background, story.character, action, story.seed, world="v2",
                                         accessory=identity.accessory)
                own = world.render_clip(background, story.character, action, story.seed, world="v2")
                for label, a, b in (("truth, pixels", identity.frames, kept.frames),
                                    ("truth, VAE round trip", decoded, round_trip(vae, kept.frames)),
                                    ("own belt, VAE round trip (chance)", decoded, round_trip(vae, own.frames))):
                    m = shot_metrics.compare(a, b, action, shared_background=False)
                    rows.setdefault(label, []).append((m["belt_kept"], m["shot_belt"] is not None, action))
    print(f"{args.stories} benchmark stories (--bench-seed {args.bench_seed}), {args.model}")
    print("| shots as the world renders them | belt kept | shot's belt readable | by action (left / right / jump / closer) |")
    print("| --- | --- | --- | --- |")
    for label, values in rows.items():
        scored = [(k, r, a) for k, r, a in values if k is not None]
        by = " / ".join(f"{np.mean([k for k, _, a in scored if a == act]):.0%}" for act in results.MOVING)
        print(f"| {label} | {np.mean([k for k, _, _ in scored]):.0%} ({len(scored)} shots) | "
              f"{np.mean([r for _, r, _ in scored]):.0%} | {by} |")


if __name__ == "__main__":
    main()
