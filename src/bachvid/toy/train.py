"""Train the toy CogVideoX model from scratch on the toy world: `bachvid toy train`.

Stages, each resumable from its checkpoint under --work (the VAE and transformer stages save
every CHECKPOINT_SECONDS; `--resume` goes on from there):
1. vae          AutoencoderKLCogVideoX on 9-frame clips (x4 space, x4 time; 4k+1 frames in and out);
2. latents      encode clips of the *training* combinations once, measure the latent scale;
3. transformer  CogVideoXTransformer3DModel (RoPE, the 5B layout) + a small T5 encoder, trained
                jointly with v-prediction on the CogVideoX scheduler's noise schedule, 10% empty
                prompts for classifier-free guidance;
4. export       a diffusers folder (model_index.json, safetensors in fp16) + bachvid.json defaults.
Deterministic from --seed; --minutes bounds each training stage's wall time.

--backbone wan runs the same recipe for a diffusers WanPipeline: a tiny AutoencoderKLWan (x4 space,
x4 time, causal; 17 frames -> 5 latent frames), latents normalised per channel (the VAE's
latents_mean / latents_std, as Wan's own VAE stores them), a WanTransformer3DModel (patch 1x2x2:
8 x 8 tokens per latent frame at 64 px, as the toy CogVideoX) and a small umT5 encoder trained
jointly by flow matching (the velocity noise - x0 at sigmas drawn as UniPC's flow_shift 3 draws them),
exported as a WanPipeline folder with the UniPC flow scheduler (see docs/TOY_MODEL.md, "Wan").

--world v2 trains on the 96 px world (12 x 12 tokens per latent frame) and --scale v2 sizes the
model for it; --device cuda with bf16 autocast, --workers N render clips in N processes and
--schedule time lets the learning rates follow the time budget (scripts/train_toy_v2_gpu.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.tiny import (
    build_word_tokenizer,
    cogvideox_scheduler,
    tiny_text_encoder,
    tiny_transformer,
    tiny_umt5_encoder,
    tiny_vae,
    tiny_wan_transformer,
    tiny_wan_vae,
    wan_scheduler,
)
from ..method.prompt import PART_SEPARATOR, compose_prompt
from . import world

TEXT_LENGTH = 24
VAE_CHANNELS = (16, 32, 32)
LATENT_CHANNELS = 8
CHECKPOINT_SECONDS = 120  # both training stages save their state this often (and at their end)
STOP_FILE = "STOP"  # `touch WORK/STOP`: the running stage saves and ends at its next step, later stages run


def stop_requested(work: Path) -> bool:
    """Whether someone asked the run to end its training stage now (a file WORK/STOP, then removed, so
    the next run goes on): a session that must end keeps every step and still exports."""
    flag = work / STOP_FILE
    if not flag.exists():
        return False
    flag.unlink(missing_ok=True)
    log(work, f"{flag} found: this stage saves and ends here")
    return True


def model_sizes(scale: str) -> dict:
    """'full' is the shipped model; 'smoke' is the same recipe at toy-of-toy size for CI; 'v2' is
    the model for world v2 (96 px, 720 video tokens): 12 layers of 6 heads x 32, a wider VAE."""
    if scale == "smoke":
        return dict(vae=(8, 8, 8), layers=8, heads=2, head_dim=16, text_dim=32)
    if scale == "v2":
        return dict(vae=(32, 64, 64), layers=12, heads=6, head_dim=32, text_dim=64)
    return dict(vae=VAE_CHANNELS, layers=8, heads=4, head_dim=32, text_dim=64)


def is_wan(args) -> bool:
    return getattr(args, "backbone", "cogvideox") == "wan"


WAN_FLOW_SHIFT = 3.0  # the UniPC flow scheduler's shift (Wan 2.1's default): training draws sigmas the same way


def wan_vae(sizes: dict, seed: int = 0):
    """The toy Wan VAE: AutoencoderKLWan with stages sizes["vae"] wide, x4 space, x4 time."""
    channels = sizes["vae"]
    return tiny_wan_vae(latent_channels=LATENT_CHANNELS, base_dim=channels[0],
                        dim_mult=[c // channels[0] for c in channels], seed=seed)


def wan_transformer(sizes: dict, seed: int = 0):
    """The toy Wan transformer: WanTransformer3DModel, patch 1 x 2 x 2 (8 x 8 tokens per latent frame at
    64 px), feed-forward 4x wide (as CogVideoX's), Wan's 256-wide timestep features."""
    return tiny_wan_transformer(num_layers=sizes["layers"], heads=sizes["heads"], head_dim=sizes["head_dim"],
                                in_channels=LATENT_CHANNELS, text_dim=sizes["text_dim"], ffn_mult=4, freq_dim=256,
                                seed=seed)


def wan_text(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings as WanPipeline makes them: umT5 with the attention mask, zeros past the prompt."""
    mask = (ids != 0).long()  # <pad> is 0 (tiny.build_word_tokenizer)
    return text_encoder(ids, attention_mask=mask).last_hidden_state * mask[..., None]


def wan_sigmas(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Flow-matching noise levels, uniform then shifted as the UniPC flow scheduler shifts its sigmas."""
    u = torch.rand(batch, generator=generator)
    return WAN_FLOW_SHIFT * u / (1 + (WAN_FLOW_SHIFT - 1) * u)


def world_of(args) -> world.WorldSpec:
    return world.get_world(getattr(args, "world", None))


def device_of(args) -> torch.device:
    return torch.device(getattr(args, "device", None) or "cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the toy model's matmuls are small: half the bytes, tensor cores);
    fp32 on CPU, as the shipped model was trained."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _render(item) -> np.ndarray:
    """One clip's frames for a worker process: item = (combo, seed, frames, world name)."""
    combo, seed, frames, name = item
    return world.render_clip(*combo, seed=seed, frames=frames, world=name).frames


class Renderer:
    """Renders clips in this process (workers <= 1, the original recipe) or in a process pool;
    either way the clips are the same, in the same order."""

    def __init__(self, workers: int = 1):
        self.pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None

    def submit(self, items):
        """Start rendering items; returns a callable giving the list of frames (in order)."""
        if self.pool is None:
            return lambda: [_render(item) for item in items]
        pending = self.pool.map_async(_render, items, chunksize=max(1, len(items) // (4 * self.pool._processes)))
        return pending.get

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def world_tokenizer():
    phrases = [*world.BACKGROUNDS.values(), *world.CHARACTERS.values(), *world.ACTIONS.values(), ", ."]
    return build_word_tokenizer(phrases, model_max_length=TEXT_LENGTH)


def clip_tensor(clip_frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (3, F, H, W) in [-1, 1], the VAE's input."""
    return torch.from_numpy(clip_frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def log(path: Path, message: str) -> None:
    print(message, flush=True)
    with open(path / "train.log", "a") as f:
        f.write(message + "\n")


# Stage 1 ----------------------------------------------------------------------------------------
def train_vae(args, work: Path, sizes: dict, renderer: Renderer | None = None):
    spec, device = world_of(args), device_of(args)
    renderer = renderer or Renderer()
    if is_wan(args):
        vae = wan_vae(sizes, seed=args.seed).train()
    else:
        vae = tiny_vae(latent_channels=LATENT_CHANNELS, block_out_channels=sizes["vae"], seed=args.seed).train()
        vae.config.sample_height = vae.config.sample_width = spec.size
    vae.to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    combos = world.all_combinations()
    # Clip length: CogVideoX's VAE learns from 9-frame clips and decodes 17 as well (the original
    # recipe, kept for exact replays). Wan's causal VAE decodes in chunks with a feature cache and
    # did not carry over: trained on 9 frames, its error on 17-frame clips jumped at frame 9 (25 ->
    # 34, 48 by frame 16; docs/TOY_MODEL.md), so it learns from clips as long as it will decode.
    clip_frames = spec.frames if is_wan(args) else 9

    def draw():  # the next batch's clips, drawn in the original recipe's order, rendering started
        items = [(combos[rng.integers(len(combos))], int(rng.integers(1 << 30)), clip_frames, spec.name)
                 for _ in range(args.vae_batch)]
        return renderer.submit(items)

    start, step = time.time(), 0
    checkpoint = work / "vae.pt"
    if args.resume and checkpoint.is_file():  # a VAE stage stopped mid-way goes on where it was
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])  # the posterior samples draw from torch's generator
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        step, start = state["step"], time.time() - state["seconds"]  # the clock schedule goes on too
        log(work, f"vae: resumed at step {step}")

    def save():
        save_atomic({"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                     "seconds": time.time() - start}, checkpoint)

    budget = args.minutes * 60 * args.vae_share
    last = min(args.vae_steps, args.vae_stop_at or args.vae_steps)
    last_save = time.time()
    pending = draw() if renderer.pool is not None and step < last else None
    while step < last and time.time() - start < budget and not stop_requested(work):
        if renderer.pool is None:
            frames = draw()()
        else:
            frames = pending()
            if step + 1 < last:
                pending = draw()  # the workers render the next batch while this one trains
        batch = torch.stack([clip_tensor(f) for f in frames]).to(device, non_blocking=True)
        with autocast(device):
            posterior = vae.encode(batch).latent_dist
            recon = vae.decode(posterior.sample()).sample.float()
            kl = posterior.kl().float().mean()
        loss = F.l1_loss(recon, batch) + 0.5 * F.mse_loss(recon, batch) + 1e-6 * kl
        progress = (time.time() - start) / budget if args.schedule == "time" else step / args.vae_steps
        lr = 2e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, progress))))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0:
            log(work, f"vae step {step} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
        step += 1
        if time.time() - last_save > CHECKPOINT_SECONDS:
            save()
            last_save = time.time()
    save()
    vae.eval().to("cpu").save_pretrained(work / "vae")
    vae.to(device)
    log(work, f"vae done: {step} steps in {time.time() - start:.0f}s")
    return vae


# Stage 2 ----------------------------------------------------------------------------------------
@torch.no_grad()
def encode_latents(args, work: Path, vae, renderer: Renderer | None = None):
    from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan

    spec, device = world_of(args), device_of(args)
    renderer = renderer or Renderer()
    vae_class = AutoencoderKLWan if is_wan(args) else AutoencoderKLCogVideoX
    vae = (vae or vae_class.from_pretrained(work / "vae")).to(device).eval()
    train_combos, _ = world.split_combinations()
    rng = np.random.default_rng(args.seed + 1)
    items = [(combo, int(rng.integers(1 << 30))) for combo in train_combos for _ in range(args.clips_per_combo)]
    latents, prompts, start = [], [], time.time()
    chunk_size = 8 if device.type == "cpu" else 32

    def submit(i):
        return renderer.submit([(combo, seed, spec.frames, spec.name) for combo, seed in items[i : i + chunk_size]])

    pending = submit(0)
    for i in range(0, len(items), chunk_size):
        chunk = items[i : i + chunk_size]
        frames = pending()
        if i + chunk_size < len(items):
            pending = submit(i + chunk_size)  # workers render the next chunk while this one encodes
        batch = torch.stack([clip_tensor(f) for f in frames]).to(device)
        latents.append(vae.encode(batch).latent_dist.mode().float().cpu())  # fp32: the data stays exact
        prompts += [compose_prompt(*world.texts(*combo)) for combo, _ in chunk]
    latents = torch.cat(latents)  # (N, C, F, h, w)
    render_note = f" ({len(items) / max(time.time() - start, 1e-9):.1f} clips/s)"
    if is_wan(args):  # per-channel mean and std, kept in the VAE's config as Wan's VAE keeps them
        if args.init_from:
            mean, std = list(vae.config.latents_mean), list(vae.config.latents_std)
        else:
            mean = latents.mean(dim=(0, 2, 3, 4)).tolist()
            std = latents.std(dim=(0, 2, 3, 4)).tolist()
        torch.save({"latents": latents, "prompts": prompts, "latents_mean": mean, "latents_std": std,
                    "world": spec.name, "backbone": "wan"}, work / "latents.pt")
        log(work, f"encoded {len(prompts)} clips to {tuple(latents.shape[1:])} latents in {time.time() - start:.0f}s"
                  f"{render_note}, latents std {min(std):.3f}..{max(std):.3f}")
        return
    measured = float(1.0 / latents.std())
    scale = args.scaling_factor or measured
    if args.scaling_factor:
        log(work, f"latents: keeping scaling factor {scale:.4f} (these latents measure {measured:.4f})")
    torch.save({"latents": latents, "prompts": prompts, "scaling_factor": scale, "world": spec.name}, work / "latents.pt")
    log(work, f"encoded {len(prompts)} clips to {tuple(latents.shape[1:])} latents in {time.time() - start:.0f}s"
              f"{render_note}, scaling factor {scale:.4f}")


# Stage 3 ----------------------------------------------------------------------------------------
def rotary_embeddings(transformer, latent_frames: int, pixels: int, spatial: int, device="cpu"):
    """The RoPE table CogVideoXPipeline builds for this size (same function, same arguments)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p = transformer.config.patch_size
    grid = pixels // (spatial * p)
    base_w, base_h = transformer.config.sample_width // p, transformer.config.sample_height // p
    crops = get_resize_crop_region_for_grid((grid, grid), base_w, base_h)
    return get_3d_rotary_pos_embed(embed_dim=transformer.config.attention_head_dim, crops_coords=crops,
                                   grid_size=(grid, grid), temporal_size=latent_frames, device=device)


def train_transformer(args, work: Path, sizes: dict):
    spec, device = world_of(args), device_of(args)
    data = torch.load(work / "latents.pt")
    wan = is_wan(args)
    if wan != (data.get("backbone", "cogvideox") == "wan"):
        raise SystemExit(f"{work / 'latents.pt'} was encoded for another backbone: run the 'latents' stage")
    prompts = data["prompts"]
    tokenizer = world_tokenizer()
    if wan:  # (N, C, F, h, w), normalised per channel as WanPipeline's decode undoes it
        shape = (1, -1, 1, 1, 1)
        latents = (data["latents"] - torch.tensor(data["latents_mean"]).view(shape)) / torch.tensor(
            data["latents_std"]).view(shape)
        text_encoder = tiny_umt5_encoder(len(tokenizer), d_model=sizes["text_dim"], num_layers=args.text_layers, seed=args.seed).train()
        transformer = wan_transformer(sizes, seed=args.seed + 1).train()
        scheduler = rope = None
    else:
        latents = data["latents"].permute(0, 2, 1, 3, 4) * data["scaling_factor"]  # (N, F, C, h, w)
        text_encoder = tiny_text_encoder(len(tokenizer), d_model=sizes["text_dim"], num_layers=args.text_layers,
                                         seed=args.seed).train()
        transformer = tiny_transformer(rope=True, num_layers=sizes["layers"], heads=sizes["heads"],
                                       head_dim=sizes["head_dim"], in_channels=LATENT_CHANNELS,
                                       text_dim=sizes["text_dim"], text_length=TEXT_LENGTH,
                                       latent_size=latents.shape[-1], frames=spec.frames, seed=args.seed + 1).train()
        scheduler = cogvideox_scheduler()
        rope = rotary_embeddings(transformer, latents.shape[1], spec.size, 4, device)
    unique = sorted(set(prompts)) + [""]
    ids = tokenizer(unique, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    prompt_index = torch.tensor([unique.index(p) for p in prompts])
    scene_dropout = args.phrase_dropout if args.scene_dropout is None else args.scene_dropout
    if args.phrase_dropout > 0 or scene_dropout > 0:  # rows of ids for every prompt with any of its phrases left out
        variant_rows, ids = phrase_variants(unique[:-1], tokenizer)
    if args.init_from:
        start_from_model(Path(args.init_from), transformer, text_encoder, wan)
        log(work, f"transformer: starting from the weights of {args.init_from}")
    transformer.to(device)
    text_encoder.to(device)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, **({"fused": True} if device.type == "cuda" else {}))
    checkpoint = work / "transformer.pt"
    step = 0
    ema_params = None
    if args.resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device)
        transformer.load_state_dict(state["transformer"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        ema_params = state.get("ema")
        log(work, f"transformer: resumed at step {step}{'' if ema_params is None else ' (with EMA)'}")
    if args.ema_decay > 0 and ema_params is None:  # EMA starts from the weights at hand
        ema_params = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(args.seed + step)
    noise_generator = torch.Generator(device).manual_seed(args.seed + step) if device.type != "cpu" else None
    start, last_save, ema, first_step = time.time(), time.time(), None, step
    budget = args.minutes * 60 * (1 - args.vae_share)
    last = min(args.steps, args.stop_at or args.steps)
    latents, ids = latents.to(device), ids.to(device)
    losses = []  # on the device: reading a loss each step would wait for the GPU
    while step < last and time.time() - start < budget and not stop_requested(work):
        pick = torch.randint(len(latents), (args.batch_size,), generator=generator)
        x0 = latents[pick.to(device)]
        token_rows = prompt_index[pick].clone()
        if args.phrase_dropout > 0 or scene_dropout > 0:
            token_rows = variant_rows[token_rows, dropout_codes(args.batch_size, scene_dropout,
                                                                args.phrase_dropout, generator)]
        token_rows[torch.rand(args.batch_size, generator=generator) < 0.1] = len(ids) - 1  # CFG dropout
        if wan:
            sigma = wan_sigmas(args.batch_size, generator)
        else:
            t = training_timesteps(args.batch_size, scheduler.config.num_train_timesteps, args.timestep_shift, generator)
        if device.type == "cpu":
            noise = torch.randn(x0.shape, generator=generator)
        else:  # drawn on the GPU: the CPU would be the bottleneck
            noise = torch.randn(x0.shape, generator=noise_generator, device=device)
        token_rows = token_rows.to(device)
        if wan:  # flow matching: x_t = (1 - s) x0 + s noise, the model predicts noise - x0 at timestep 1000 s
            sigma = sigma.to(device)
            s = sigma.view(-1, 1, 1, 1, 1)
            xt, target, t = (1 - s) * x0 + s * noise, noise - x0, sigma * 1000
        else:
            t = t.to(device)
            xt = scheduler.add_noise(x0, noise, t)
            target = scheduler.get_velocity(x0, noise, t)  # v = sqrt(a) eps - sqrt(1 - a) x0
        with autocast(device):
            if wan:
                text = wan_text(text_encoder, ids[token_rows])
                pred = transformer(hidden_states=xt, encoder_hidden_states=text, timestep=t, return_dict=False)[0]
            else:
                text = text_encoder(ids[token_rows])[0]
                pred = transformer(hidden_states=xt, encoder_hidden_states=text, timestep=t, image_rotary_emb=rope,
                                   return_dict=False)[0]
        if args.motion_weight > 0:  # (B, F, 1, h, w) for CogVideoX's layout, (B, 1, F, h, w) for Wan's
            weight = motion_weights(x0, args.motion_weight, frame_dim=2 if wan else 1)
            loss = (weight * (pred.float() - target) ** 2).mean() / weight.mean()
        else:
            loss = F.mse_loss(pred.float(), target)
        lr = learning_rate(args, step, (time.time() - start) / budget if args.schedule == "time" else None)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if device.type == "cpu":
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        else:
            losses.append(loss.detach())
        if args.ema_decay > 0:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - args.ema_decay)
        if step % 50 == 0:
            for value in torch.stack(losses).tolist() if losses else []:  # one sync per 50 steps
                ema = value if ema is None else 0.98 * ema + 0.02 * value
            losses = []
            rate = (step - first_step) / max(time.time() - start, 1e-9)
            log(work, f"transformer step {step} loss {ema:.4f} lr {lr:.2e} ({time.time() - start:.0f}s, {rate:.2f} steps/s)")
        step += 1
        if time.time() - last_save > CHECKPOINT_SECONDS:
            save_transformer(checkpoint, transformer, text_encoder, optimizer, step, ema_params, args.ema_decay)
            last_save = time.time()
    for value in torch.stack(losses).tolist() if losses else []:
        ema = value if ema is None else 0.98 * ema + 0.02 * value
    save_transformer(checkpoint, transformer, text_encoder, optimizer, step, ema_params, args.ema_decay)
    log(work, f"transformer done: {step} steps in {time.time() - start:.0f}s, loss {ema if ema is None else round(ema, 4)}")


def training_timesteps(batch: int, total: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Timesteps to train on: uniform for shift 1 (drawn exactly as before), else u ~ U(0, 1) mapped
    to shift u / (1 + (shift - 1) u), which moves the draws toward high noise (shift 3: median t 750).

    Why: what a prompt decides that the noisy clip does not show yet (where a character goes) is
    learnt at high noise; a larger frame (v2: 2.25x v1's tokens) keeps more of the clip visible at each
    noise level, the reason SD3 and Wan shift their schedules with resolution."""
    if shift == 1:
        return torch.randint(0, total, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator)
    return (total * shift * u / (1 + (shift - 1) * u)).long().clamp(max=total - 1)


def motion_weights(x0: torch.Tensor, strength: float, frame_dim: int = 1, scale: float = 0.5) -> torch.Tensor:
    """Per-latent loss weights 1 + strength * min(1, |x0 - its mean over frames| / scale), channels averaged.

    Why: on world v2 the model learnt scenery and characters but ignored the action words (action
    steering 0.03, the v1 model's 0.27: `bachvid.toy.steering`): the latents that move are a small
    share of the loss. Weighting them makes motion count. `scale` is
    about a moving character's latent change (its 99th percentile is ~0.8-1.0 on v2's latents;
    standing clips stay below ~0.02 on average)."""
    channel_dim = 2 if frame_dim == 1 else 1
    change = (x0 - x0.mean(dim=frame_dim, keepdim=True)).abs().mean(dim=channel_dim, keepdim=True)
    return 1 + strength * (change / scale).clamp(max=1)


def phrase_variants(prompts: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (P, 8), ids (V + 1, T)): ids[rows[p, code]] is prompt p without the phrases whose bit is set
    in code (1 background, 2 character, 4 action); the last row of ids is the empty prompt.

    Training on prompts that name only some phrases ties each phrase to what it shows on its own,
    which is what held-out combinations need (a model that only saw "a meadow, a blob" stand still
    must still make "a meadow, a blob, walks to the left" walk left)."""
    texts, rows = [], []
    for prompt in prompts:
        parts = prompt.split(PART_SEPARATOR)
        if len(parts) != 3:
            raise ValueError(f"expected background, character and action in {prompt!r}")
        row = []
        for code in range(8):
            text = PART_SEPARATOR.join(part for k, part in enumerate(parts) if not code >> k & 1)
            if text not in texts:
                texts.append(text)
            row.append(texts.index(text))
        rows.append(row)
    ids = tokenizer(texts + [""], padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    return torch.tensor(rows), ids


def dropout_codes(batch_size: int, scene_dropout: float, action_dropout: float, generator) -> torch.Tensor:
    """(batch,) codes for `phrase_variants` rows: bit 1 leaves the background out, 2 the character, 4 the
    action, each drawn on its own (one uniform draw per phrase, so equal rates replay the old recipe)."""
    left_out = torch.rand(batch_size, 3, generator=generator) < torch.tensor(
        [scene_dropout, scene_dropout, action_dropout])
    return (left_out * torch.tensor([1, 2, 4])).sum(1)


def start_from_model(folder: Path, transformer, text_encoder, wan: bool = False) -> None:
    """Continue training an exported model: its transformer and text encoder weights (fp16 on disk)."""
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel
    from transformers import T5EncoderModel, UMT5EncoderModel

    trained = (WanTransformer3DModel if wan else CogVideoXTransformer3DModel).from_pretrained(
        folder / "transformer", torch_dtype=torch.float32)
    transformer.load_state_dict(trained.state_dict())
    encoder = (UMT5EncoderModel if wan else T5EncoderModel).from_pretrained(folder / "text_encoder",
                                                                            dtype=torch.float32)
    # A shallower encoder (--text-layers) keeps the model's token embeddings and final norm and drops
    # the blocks it does not have; anything else missing or left over is an error.
    missing, extra = text_encoder.load_state_dict(encoder.state_dict(), strict=False)
    kept_blocks = len(text_encoder.encoder.block)
    dropped = [k for k in extra if k.startswith("encoder.block.") and int(k.split(".")[2]) >= kept_blocks]
    if missing or len(dropped) != len(extra):
        raise SystemExit(f"{folder / 'text_encoder'} does not fit this text encoder: missing {missing}, "
                         f"unexpected {sorted(set(extra) - set(dropped))}")


def learning_rate(args, step: int, elapsed: float | None = None) -> float:
    """Warmup, then cosine to 10% at --steps; with --restart-at R a fresh warmup and cosine run from R.
    With `elapsed` (the share of the time budget spent: --schedule time) the cosine follows the clock."""
    begin = args.restart_at if args.restart_at is not None else 0
    progress = min(1.0, (step - begin) / max(1, args.steps - begin)) if elapsed is None else min(1.0, elapsed)
    warmup = min(1.0, (step - begin + 1) / (200 if begin == 0 else 100))
    return args.lr * warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_atomic(state: dict, path: Path) -> None:
    """torch.save under a temporary name, then renamed: a kill mid-save leaves the last checkpoint."""
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def save_transformer(path, transformer, text_encoder, optimizer, step, ema_params=None, ema_decay=0.0):
    state = {"transformer": transformer.state_dict(), "text_encoder": text_encoder.state_dict(),
             "optimizer": optimizer.state_dict(), "step": step}
    if ema_params is not None:  # the decay travels with the EMA: a later `--stages export` reports it right
        state["ema"] = [e.detach().clone() for e in ema_params]
        state["ema_decay"] = ema_decay
    save_atomic(state, path)


# Stage 4 ----------------------------------------------------------------------------------------
def export(args, work: Path, sizes: dict, out: Path):
    if is_wan(args):
        return export_wan(args, work, sizes, out)
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline

    spec = world_of(args)
    data = torch.load(work / "latents.pt")
    state = torch.load(work / "transformer.pt", map_location="cpu")
    tokenizer = world_tokenizer()
    text_encoder = tiny_text_encoder(len(tokenizer), d_model=sizes["text_dim"], num_layers=args.text_layers)
    transformer = tiny_transformer(rope=True, num_layers=sizes["layers"], heads=sizes["heads"],
                                   head_dim=sizes["head_dim"], in_channels=LATENT_CHANNELS,
                                   text_dim=sizes["text_dim"], text_length=TEXT_LENGTH,
                                   latent_size=data["latents"].shape[-1], frames=spec.frames)
    use_ema = load_trained_weights(args, state, transformer, text_encoder)
    vae = AutoencoderKLCogVideoX.from_pretrained(work / "vae")
    vae.register_to_config(scaling_factor=data["scaling_factor"])
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
                             transformer=transformer.eval(), scheduler=cogvideox_scheduler())
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    write_model_defaults(out, args, state, spec, use_ema)
    log(work, f"exported to {out}" + (" (EMA weights)" if use_ema else ""))


def export_wan(args, work: Path, sizes: dict, out: Path):
    """The Wan model: a WanPipeline folder (fp16 safetensors) + bachvid.json, as `export` writes CogVideoX's."""
    from diffusers import AutoencoderKLWan, WanPipeline

    spec = world_of(args)
    data = torch.load(work / "latents.pt")
    state = torch.load(work / "transformer.pt", map_location="cpu")
    tokenizer = world_tokenizer()
    text_encoder = tiny_umt5_encoder(len(tokenizer), d_model=sizes["text_dim"], num_layers=args.text_layers)
    transformer = wan_transformer(sizes)
    use_ema = load_trained_weights(args, state, transformer, text_encoder)
    vae = AutoencoderKLWan.from_pretrained(work / "vae")
    vae.register_to_config(latents_mean=list(data["latents_mean"]), latents_std=list(data["latents_std"]))
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
                       transformer=transformer.eval(), scheduler=wan_scheduler(WAN_FLOW_SHIFT))
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    write_model_defaults(out, args, state, spec, use_ema, backbone="wan")
    log(work, f"exported to {out}" + (" (EMA weights)" if use_ema else ""))


def load_trained_weights(args, state: dict, transformer, text_encoder) -> bool:
    """Load a transformer checkpoint into the export's models: its EMA weights (same order as
    training's parameter list) unless --no-ema or the run kept none. Returns whether the EMA was used."""
    text_encoder.load_state_dict(state["text_encoder"])
    transformer.load_state_dict(state["transformer"])
    use_ema = state.get("ema") is not None and not args.no_ema
    if use_ema:
        with torch.no_grad():
            for p, e in zip(list(transformer.parameters()) + list(text_encoder.parameters()), state["ema"]):
                p.copy_(e)
    return use_ema


def write_model_defaults(out: Path, args, state: dict, spec, use_ema: bool, **extra) -> None:
    """The exported model's bachvid.json: how to sample it, what it was trained on and for how long."""
    (out / "bachvid.json").write_text(json.dumps(
        {"num_inference_steps": args.sample_steps, "guidance_scale": args.guidance, "fps": 8,
         "trained_steps": state["step"] + base_steps(args), "seed": args.seed,
         **({"ema_decay": state.get("ema_decay", args.ema_decay)} if use_ema else {}),
         "world": spec.name, "num_frames": spec.frames, "height": spec.size, "width": spec.size, **extra},
        indent=2))


def base_steps(args) -> int:
    """Transformer steps already in the --init-from model (0 when training from scratch)."""
    if not args.init_from:
        return 0
    defaults = Path(args.init_from) / "bachvid.json"
    return int(json.loads(defaults.read_text()).get("trained_steps", 0)) if defaults.is_file() else 0


def take_vae(folder: Path, work: Path, wan: bool = False) -> float | None:
    """Continuing a model keeps its VAE (copied to work/vae) and its latent scaling factor (Wan: its
    latents_mean / latents_std, which stay in the copied VAE's config; None)."""
    from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan

    vae_class = AutoencoderKLWan if wan else AutoencoderKLCogVideoX
    vae = vae_class.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    if not (work / "vae" / "config.json").is_file():
        vae.save_pretrained(work / "vae")
    return None if wan else float(vae.config.scaling_factor)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="diffusers folder to write (default: the package's toy model)")
    parser.add_argument("--work", default="runs/toy", help="checkpoints, latents and log")
    parser.add_argument("--stages", default="vae,latents,transformer,export")
    parser.add_argument("--scale", choices=("full", "smoke", "v2"), default="full",
                        help="model size: full (the shipped v1 model), smoke (CI), v2 (for --world v2)")
    parser.add_argument("--backbone", choices=("cogvideox", "wan"), default="cogvideox",
                        help="the model to train: cogvideox (the shipped toy model) or wan (a WanPipeline; "
                             "needs --out)")
    parser.add_argument("--world", choices=tuple(world.WORLDS), default="v1",
                        help="the toy world to train on (v1: 64 px, the shipped model; v2: 96 px with scenery)")
    parser.add_argument("--device", default="cpu", help="torch device (cuda: bf16 autocast)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering clips (1: in this process)")
    parser.add_argument("--schedule", choices=("steps", "time"), default="steps",
                        help="learning-rate cosine over --steps / --vae-steps (exact replays) or over the time "
                             "budget (--minutes: the decay ends when the time does; not replayable step for step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=50, help="wall-time budget of the two training stages")
    parser.add_argument("--vae-share", type=float, default=0.25, help="fraction of --minutes for the VAE")
    parser.add_argument("--vae-steps", type=int, default=100_000)
    parser.add_argument("--vae-stop-at", type=int, default=None,
                        help="end the VAE stage at this step without changing its schedule (exact replays)")
    parser.add_argument("--vae-batch", type=int, default=4)
    parser.add_argument("--clips-per-combo", type=int, default=20)
    parser.add_argument("--scaling-factor", type=float, default=None,
                        help="keep this latent scaling factor instead of measuring it (continuing a model)")
    parser.add_argument("--ema-decay", type=float, default=0.0, help="keep an EMA of the weights (0: off)")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights even if an EMA exists")
    parser.add_argument("--restart-at", type=int, default=None,
                        help="continuing: a fresh warmup + cosine schedule from this step to --steps")
    parser.add_argument("--init-from", default=None,
                        help="continue an exported model folder: its VAE, scaling factor, transformer and text encoder")
    parser.add_argument("--timestep-shift", type=float, default=1.0,
                        help="CogVideoX: draw training timesteps shifted toward high noise (1: uniform)")
    parser.add_argument("--motion-weight", type=float, default=0.0,
                        help="weight the loss on latents that change over the clip up to 1 + this (0: plain MSE)")
    parser.add_argument("--phrase-dropout", type=float, default=0.0,
                        help="probability of leaving each phrase (background, character, action) out of a prompt")
    parser.add_argument("--text-layers", type=int, default=2,
                        help="text encoder blocks (2: the recipe's; 0: token embeddings only, which cannot tie "
                             "an action word to the scene it was seen with; --init-from keeps the embeddings)")
    parser.add_argument("--scene-dropout", type=float, default=None,
                        help="probability of leaving the background and the character phrases out (default: "
                             "--phrase-dropout); higher values train more action-only prompts, which tie each "
                             "action word to its motion whatever the scene")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=100_000, help="transformer steps (the time budget may end it first)")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="end the transformer stage at this step without changing the schedule of --steps "
                             "(replays a run that the time budget ended)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sample-steps", type=int, default=30, help="default inference steps of the exported model")
    parser.add_argument("--guidance", type=float, default=6.0, help="default guidance of the exported model")
    parser.add_argument("--resume", action="store_true")


def run(args) -> int:
    if is_wan(args) and args.timestep_shift != 1.0:  # Wan draws flow-matching sigmas, not timesteps
        raise SystemExit("--timestep-shift applies to CogVideoX only; Wan's sigmas have their own draw (wan_sigmas)")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = model_sizes(args.scale)
    stages = args.stages.split(",")
    started = time.time()
    renderer = Renderer(args.workers)  # fork the workers before CUDA starts
    if device_of(args).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    log(work, f"backbone {args.backbone}, world {args.world}, scale {args.scale}, device {args.device}, "
              f"workers {args.workers}, stages {args.stages}")
    try:
        _run_stages(args, work, sizes, stages, renderer)
    finally:
        renderer.close()
    log(work, f"all stages done in {time.time() - started:.0f}s")
    return 0


def _run_stages(args, work: Path, sizes: dict, stages: list, renderer: Renderer) -> None:
    from ..models import DEFAULT_MODEL_DIR

    if args.init_from:
        if "vae" in stages:
            raise SystemExit("--init-from keeps the model's VAE: leave 'vae' out of --stages")
        args.scaling_factor = args.scaling_factor or take_vae(Path(args.init_from), work, is_wan(args))
    if "vae" in stages and is_wan(args) and args.resume and (work / "vae" / "config.json").is_file():
        log(work, "vae: kept from the finished VAE stage (resume)")  # the Wan recipe resumes in one command
        stages = [stage for stage in stages if stage != "vae"]
    vae = train_vae(args, work, sizes, renderer) if "vae" in stages else None
    if "latents" in stages:
        expected = len(world.split_combinations()[0]) * args.clips_per_combo
        saved = torch.load(work / "latents.pt") if args.resume and vae is None and (work / "latents.pt").is_file() else {}
        if (saved and len(saved["prompts"]) == expected and saved.get("world", "v1") == args.world
                and saved.get("backbone", "cogvideox") == args.backbone):
            log(work, f"latents: {expected} clips already encoded (resume)")
        else:
            encode_latents(args, work, vae, renderer)
    if "transformer" in stages:
        stage = time.time()
        train_transformer(args, work, sizes)
        log(work, f"transformer stage: {time.time() - stage:.0f}s with loading")
    if "export" in stages:
        if args.world != "v1" and not args.out:
            raise SystemExit("--world v2 needs --out: the package's toy model is the v1 model")
        if is_wan(args) and not args.out:
            raise SystemExit("--backbone wan needs --out: the package's default toy model is the CogVideoX one")
        export(args, work, sizes, Path(args.out) if args.out else DEFAULT_MODEL_DIR)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bachvid toy train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
