"""How strongly each prompt phrase steers a toy model, read from one denoising step (seconds, no video).

    python -m bachvid.toy.steering                          # the shipped model
    python -m bachvid.toy.steering --model runs/toy-v2-cpu/model

From pure noise, one step of the model's own pipeline (its scheduler with one inference step, no
guidance, output_type="latent") returns the model's guess of the clean clip for a prompt: at zero
SNR that is its mean clip for the prompt. Swap one phrase (background, character or action) for
another of its kind, keep the noise, and compare the two guesses:

    steering = mean |guess(prompt) - guess(swapped)| / mean |guess(prompt)|

A phrase the model ignores steers ~0. Why this exists: the world-v2 CPU model drew characters and
scenery right but read 16% of actions right; sampling and scoring 48 videos took minutes and could not
say why. Its action steering was 0.03 (the shipped v1 model's: 0.27), i.e. the model had not tied the
action words to anything, which pointed at training, not the sampler or the scorer.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ..method.prompt import compose_prompt
from . import world

KINDS = ("background", "character", "action")


def swapped_prompt_pairs(pairs: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """For each phrase kind, `pairs` (prompt, prompt with only that phrase changed) over training combinations."""
    rng = np.random.default_rng(seed)
    train_combos, _ = world.split_combinations()
    options = (list(world.BACKGROUNDS), list(world.CHARACTERS), list(world.ACTIONS))
    out = {}
    for k, kind in enumerate(KINDS):
        out[kind] = []
        for _ in range(pairs):
            combo = list(train_combos[rng.integers(len(train_combos))])
            other = list(combo)
            other[k] = rng.choice([o for o in options[k] if o != combo[k]])
            out[kind].append((compose_prompt(*world.texts(*combo)), compose_prompt(*world.texts(*other))))
    return out


def one_step_guesses(pipe, prompts: list[str], seeds: list[int], frames: int, size: int) -> torch.Tensor:
    """The pipeline's latents after one inference step from the given seeds' noise, no guidance."""
    return pipe(prompt=prompts, num_frames=frames, height=size, width=size, num_inference_steps=1,
                guidance_scale=1.0, generator=[torch.Generator().manual_seed(s) for s in seeds],
                max_sequence_length=pipe.tokenizer.model_max_length, output_type="latent").frames.float()


def phrase_steering(pipe, frames: int, size: int, pairs: int = 8, seed: int = 0) -> dict[str, float]:
    """{kind: steering} (see the module docstring), averaged over `pairs` swaps per kind."""
    result = {}
    for kind, swaps in swapped_prompt_pairs(pairs, seed).items():
        seeds = [seed * 1000 + i for i in range(len(swaps))]
        with torch.inference_mode():
            first = one_step_guesses(pipe, [a for a, _ in swaps], seeds, frames, size)
            second = one_step_guesses(pipe, [b for _, b in swaps], seeds, frames, size)
        result[kind] = float((first - second).abs().mean() / first.abs().mean().clamp_min(1e-12))
    return result


def main(argv=None) -> int:
    from .quality import load

    parser = argparse.ArgumentParser(prog="python -m bachvid.toy.steering", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="diffusers folder (default: the shipped toy model)")
    parser.add_argument("--pairs", type=int, default=8, help="phrase swaps per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    pipe, defaults, folder = load(args.model)
    steering = phrase_steering(pipe, defaults["num_frames"], defaults["size"], args.pairs, args.seed)
    if args.json:
        print(json.dumps({"model": str(folder), "steering": steering}))
    else:
        print(f"phrase steering of {folder} (one step from noise; ~0: the phrase is ignored)")
        for kind, value in steering.items():
            print(f"  {kind:10s} {value:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
