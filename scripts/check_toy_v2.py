"""Quick check of a trained toy model folder: plain generations (stock CogVideoXPipeline) of prompts
from the world, read by the pixel evaluator. Usage: python scripts/check_toy_v2.py MODEL [N] [--cpu]"""

import json
import sys
import time

import numpy as np
import torch

from bachvid.method.prompt import compose_prompt
from bachvid.toy import evaluate, world


def main(argv):
    folder, n = argv[0], int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 16
    device = "cpu" if "--cpu" in argv or not torch.cuda.is_available() else "cuda"
    from diffusers import CogVideoXPipeline

    defaults = json.load(open(f"{folder}/bachvid.json"))
    spec = world.get_world(defaults.get("world", "v1"))
    pipe = CogVideoXPipeline.from_pretrained(folder, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    _, held = world.split_combinations()
    train, _ = world.split_combinations()
    rng = np.random.default_rng(0)
    report = {}
    for name, combos in (("heldout", held), ("train", train)):
        picks = [combos[i % len(combos)] for i in rng.permutation(max(n, len(combos)))[:n]]
        start = time.time()
        out = pipe(prompt=[compose_prompt(*world.texts(*c)) for c in picks], num_frames=spec.frames,
                   height=spec.size, width=spec.size, num_inference_steps=defaults["num_inference_steps"],
                   guidance_scale=defaults["guidance_scale"], generator=torch.Generator(device).manual_seed(0),
                   output_type="np").frames
        videos = (np.asarray(out) * 255).round().clip(0, 255).astype(np.uint8)
        right = np.zeros(3)
        for combo, video in zip(picks, videos):
            s = evaluate.score_clip(video, spec)
            right += [s.background_kind == combo[0], s.character_kind == combo[1], s.action == combo[2]]
        report[name] = {"n": n, "background": right[0] / n, "character": right[1] / n, "action": right[2] / n,
                        "seconds": round(time.time() - start, 1)}
        print(name, report[name], flush=True)
        if len(sys.argv) > 3 and sys.argv[-1].endswith(".npy"):
            np.save(sys.argv[-1].replace(".npy", f"_{name}.npy"), videos[:8])
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
