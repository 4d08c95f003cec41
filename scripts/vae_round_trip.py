"""Per-frame VAE round-trip error of a toy model folder on held-out rendered clips (CogVideoX or Wan
VAE). Why: a causal video VAE that decodes late frames badly caps every sample's quality, whatever
the transformer learns. Usage: python scripts/vae_round_trip.py MODEL [CLIPS]"""

import json
import sys

import diffusers
import numpy as np
import torch

from bachvid.toy import world
from bachvid.toy.quality import FRAMES, SIZE, held_out_prompts


def main(folder: str, clips: int = 12) -> None:
    torch.set_num_threads(1)
    name = json.loads(open(f"{folder}/vae/config.json").read())["_class_name"]
    vae = getattr(diffusers, name).from_pretrained(f"{folder}/vae", torch_dtype=torch.float32).eval()
    per_frame = []
    with torch.inference_mode():
        for combo, seed in held_out_prompts(clips, 0):
            clip = world.render_clip(*combo, seed=seed, frames=FRAMES, size=SIZE)
            x = torch.from_numpy(clip.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample[0]
            recon = ((y.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 3, 0).numpy()
            per_frame.append(np.abs(recon - clip.frames).mean(axis=(1, 2, 3)))
    print(f"{name} round-trip L1 (0-255) per frame, mean over {clips} held-out clips:",
          np.round(np.mean(per_frame, 0), 1))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12)
