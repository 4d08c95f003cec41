"""Where a world-v2 toy model's held-out actions go wrong, read from its loss (research probe).

    python scripts/probe_v2_generalisation.py MODEL LATENTS [--clips 48]

LATENTS: the training run's work/latents.pt (its own training clips). Prints the v-prediction loss,
with the same noise and timesteps for every set, on (1) the model's training clips, (2) new seeds of
the training combinations, (3) held-out combinations: a gap between 1 and 2 is memorised clips, a
gap between 2 and 3 is combinations. Then, on held-out clips at high noise (t >= 600, where a prompt
decides motion), per action: the loss under the full prompt, the action phrase alone, no action
phrase and the empty prompt (an action phrase that explains clips no better than the empty prompt
carries no motion on its own). ~3 min on one CPU thread. docs/TOY_MODEL.md quotes its figures.
"""
import argparse

import numpy as np
import torch

from bachvid.method.prompt import PART_SEPARATOR
from bachvid.toy import quality, train, world


def encode(pipe, items, frames):
    with torch.no_grad():
        return torch.cat([pipe.vae.encode(torch.stack([
            train.clip_tensor(world.render_clip(*combo, seed=seed, frames=frames, world="v2").frames)
            for combo, seed in items[k:k + 8]])).latent_dist.mode().float() for k in range(0, len(items), 8)])


def losses(pipe, rope, latents, prompts, t, noise):
    """Per-clip v-prediction MSE; latents (N, C, F, h, w) unscaled, as the VAE gives them."""
    x0 = latents.permute(0, 2, 1, 3, 4) * pipe.vae.config.scaling_factor
    xt, target = pipe.scheduler.add_noise(x0, noise, t), pipe.scheduler.get_velocity(x0, noise, t)
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=train.TEXT_LENGTH, truncation=True,
                         return_tensors="pt").input_ids
    out = []
    with torch.no_grad():
        for k in range(0, len(prompts), 8):
            pred = pipe.transformer(hidden_states=xt[k:k + 8], encoder_hidden_states=pipe.text_encoder(ids[k:k + 8])[0],
                                    timestep=t[k:k + 8], image_rotary_emb=rope, return_dict=False)[0]
            out.append(((pred - target[k:k + 8]) ** 2).mean(dim=(1, 2, 3, 4)))
    return torch.cat(out).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("latents")
    parser.add_argument("--clips", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe, defaults, _ = quality.load(args.model)
    data = torch.load(args.latents)
    train_combos, held_out = world.split_combinations()
    rng, n = np.random.default_rng(123), args.clips
    pick = rng.choice(len(data["prompts"]), n, replace=False)
    fresh = lambda combos: [(combos[i % len(combos)], int(rng.integers(1 << 30))) for i in range(n)]  # noqa: E731
    sets = {"training clips": (data["latents"][pick], [data["prompts"][i] for i in pick])}
    for name, combos in (("new seeds, training combinations", train_combos), ("held-out combinations", held_out)):
        items = fresh(combos)
        sets[name] = (encode(pipe, items, defaults["num_frames"]),
                      [PART_SEPARATOR.join(world.texts(*combo)) for combo, _ in items])
    rope = train.rotary_embeddings(pipe.transformer, data["latents"].shape[2], defaults["size"], 4)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(sets["held-out combinations"][0].permute(0, 2, 1, 3, 4).shape, generator=generator)
    for low in (0, 600):
        t = torch.randint(low, 1000, (n,), generator=generator)
        for name, (latents, prompts) in sets.items():
            value = losses(pipe, rope, latents, prompts, t, noise)
            print(f"t >= {low:3d}  {name:34s} loss {value.mean():.4f} +- {value.std() / n ** 0.5:.4f}", flush=True)
    items = [(combo, int(rng.integers(1 << 30))) for combo in held_out for _ in range(max(1, n // len(held_out)))]
    latents, actions = encode(pipe, items, defaults["num_frames"]), np.array([c[2] for c, _ in items])
    t = torch.randint(600, 1000, (len(items),), generator=generator)
    noise = torch.randn(latents.permute(0, 2, 1, 3, 4).shape, generator=generator)
    print("held-out clips, t >= 600, by prompt:")
    for name, keep in (("full prompt", (0, 1, 2)), ("action alone", (2,)), ("no action", (0, 1)), ("empty", ())):
        prompts = [PART_SEPARATOR.join(p for k, p in enumerate(world.texts(*c)) if k in keep) for c, _ in items]
        value = losses(pipe, rope, latents, prompts, t, noise)
        print(f"  {name:13s} {value.mean():.4f} | " + " ".join(
            f"{a} {value[actions == a].mean():.4f}" for a in world.ACTIONS), flush=True)


if __name__ == "__main__":
    main()
