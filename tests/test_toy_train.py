"""The toy recipe runs end to end at smoke scale, and the shipped model is what the README says."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bachvid.io.story import Shot, Story
from bachvid.method.config import BachVidConfig
from bachvid.models import DEFAULT_MODEL_DIR
from bachvid.pipeline import BachVidPipeline
from bachvid.toy import train, world


def test_smoke_recipe_exports_a_loadable_cogvideox_folder(tmp_path):
    code = train.main(["--scale", "smoke", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "model"),
                       "--vae-steps", "2", "--vae-batch", "2", "--clips-per-combo", "1", "--steps", "3",
                       "--batch-size", "2", "--sample-steps", "3", "--minutes", "2"])
    assert code == 0
    folder = tmp_path / "model"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXPipeline" and index["vae"][1] == "AutoencoderKLCogVideoX"
    pipe = BachVidPipeline.from_pretrained(folder)
    assert pipe.backbone.has_rope and pipe.backbone.num_layers >= 8
    settings = pipe.default_settings()
    assert (settings.num_frames, settings.height, settings.width, settings.num_inference_steps) == (17, 64, 64, 3)
    story = Story(name="s", character="a red robot", identity=Shot("a green meadow", "jumps"), shots=())
    result = pipe.generate_identity(story, settings, BachVidConfig(enabled=False), progress=False)
    assert result.frames.shape == (world.FRAMES, world.SIZE, world.SIZE, 3)


def test_training_prompts_come_from_training_combinations_only(tmp_path):
    train.main(["--scale", "smoke", "--work", str(tmp_path), "--stages", "vae,latents", "--vae-steps", "1",
                "--vae-batch", "1", "--clips-per-combo", "1", "--minutes", "1"])
    import torch

    prompts = set(torch.load(tmp_path / "latents.pt")["prompts"])
    _, held = world.split_combinations()
    from bachvid.method.prompt import compose_prompt

    assert prompts and not prompts & {compose_prompt(*world.texts(*c)) for c in held}


def test_shipped_model_is_small_and_loads_by_default():
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*.safetensors"))
    assert size <= 25 * 2**20
    pipe = BachVidPipeline.from_pretrained()
    assert pipe.model_note and "toy" in pipe.model_note
    assert pipe.backbone.num_layers >= 8 and pipe.backbone.token_grid(17, 64, 64) == (5, 8, 8)


def test_learning_rate_warms_up_decays_and_restarts():
    args = SimpleNamespace(lr=1e-3, steps=1000, restart_at=None)
    assert train.learning_rate(args, 0) < train.learning_rate(args, 199) == pytest.approx(1e-3, rel=0.1)
    assert train.learning_rate(args, 1000) == pytest.approx(1e-4)
    args.restart_at, args.steps = 1000, 2000  # continuing: fresh warmup from the restart, cosine to --steps
    assert train.learning_rate(args, 1000) == pytest.approx(1e-5)
    assert train.learning_rate(args, 1099) == pytest.approx(1e-3, rel=0.05)
    assert train.learning_rate(args, 2000) == pytest.approx(1e-4)


def test_stop_at_ends_a_stage_without_changing_its_schedule(tmp_path):
    """--vae-stop-at / --stop-at replay a run the time budget ended: same schedule, fewer steps."""
    import torch

    common = ["--scale", "smoke", "--stages", "vae,latents,transformer", "--vae-batch", "1", "--clips-per-combo", "1",
              "--batch-size", "2", "--threads", "1", "--vae-steps", "100"]
    stopped, short = tmp_path / "stopped", tmp_path / "short"
    assert train.main([*common, "--work", str(stopped), "--vae-stop-at", "2", "--steps", "100", "--stop-at", "3"]) == 0
    assert train.main([*common, "--work", str(short), "--vae-stop-at", "2", "--steps", "3"]) == 0
    assert "vae done: 2 steps" in (stopped / "train.log").read_text()
    a, b = (torch.load(w / "transformer.pt") for w in (stopped, short))
    assert a["step"] == b["step"] == 3
    # the same three batches, but learning rates from a 100-step schedule rather than a 3-step one
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(train.learning_rate(
        SimpleNamespace(lr=1e-3, steps=100, restart_at=None), 2))
    assert any(not torch.equal(x, y) for x, y in zip(a["transformer"].values(), b["transformer"].values()))


def test_a_stop_file_ends_the_stage_keeps_its_steps_and_the_next_run_goes_on(tmp_path, monkeypatch):
    """`touch WORK/STOP` mid-stage: the transformer saves the steps it made and ends, later stages
    (export) still run, and the file is gone so the next --resume run takes the stage on."""
    import torch

    work = tmp_path / "work"
    common = ["--scale", "smoke", "--work", str(work), "--vae-batch", "1", "--clips-per-combo", "1",
              "--batch-size", "2", "--threads", "1", "--vae-steps", "1", "--steps", "5", "--sample-steps", "2"]
    assert train.main([*common, "--stages", "vae,latents"]) == 0
    calls, schedule = [], train.learning_rate

    def learning_rate(args, step, elapsed=None):  # called once per step: someone asks for the stop in step 1
        calls.append(step)
        if step == 1:
            (work / train.STOP_FILE).touch()
        return schedule(args, step, elapsed)

    monkeypatch.setattr(train, "learning_rate", learning_rate)
    assert train.main([*common, "--stages", "transformer,export", "--out", str(tmp_path / "model")]) == 0
    assert calls == [0, 1] and torch.load(work / "transformer.pt")["step"] == 2
    assert (tmp_path / "model" / "model_index.json").is_file() and not (work / train.STOP_FILE).exists()
    assert train.main([*common, "--stages", "transformer", "--resume"]) == 0
    assert calls == [0, 1, 2, 3, 4] and torch.load(work / "transformer.pt")["step"] == 5


def test_a_vae_stage_stopped_mid_way_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """The VAE stage checkpoints as the transformer does (work/vae.pt): stopped after 2 of 4 steps
    and resumed, it ends with the weights of a straight 4-step run."""
    import torch

    monkeypatch.setattr(train, "CHECKPOINT_SECONDS", 0)
    common = ["--scale", "smoke", "--stages", "vae", "--vae-batch", "1", "--threads", "1", "--vae-steps", "4"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.main([*common, "--work", str(straight)]) == 0
    assert train.main([*common, "--work", str(resumed), "--vae-stop-at", "2"]) == 0
    assert torch.load(resumed / "vae.pt", weights_only=False)["step"] == 2
    assert train.main([*common, "--work", str(resumed), "--resume"]) == 0
    assert "vae: resumed at step 2" in (resumed / "train.log").read_text()
    a, b = (torch.load(w / "vae.pt", weights_only=False) for w in (straight, resumed))
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(x, b["vae"][k]) for k, x in a["vae"].items())
    without = tmp_path / "without"  # a control: a 2-step VAE differs from the 4-step one
    assert train.main([*common, "--work", str(without), "--vae-steps", "2"]) == 0
    assert any(not torch.equal(x, y) for x, y in
               zip(a["vae"].values(), torch.load(without / "vae.pt", weights_only=False)["vae"].values()))


def test_continuing_a_model_with_ema_and_scoring_it(tmp_path):
    """Train 2 steps, continue to 4 with a restarted schedule and an EMA, export the EMA, score it."""
    import torch

    from bachvid.toy import quality

    work, out = tmp_path / "work", tmp_path / "model"
    common = ["--scale", "smoke", "--work", str(work), "--out", str(out), "--batch-size", "2", "--sample-steps", "2",
              "--threads", "1"]
    assert train.main([*common, "--stages", "vae,latents,transformer", "--vae-steps", "1", "--vae-batch", "1",
                       "--clips-per-combo", "1", "--steps", "2"]) == 0
    assert "ema" not in torch.load(work / "transformer.pt")
    scale = torch.load(work / "latents.pt")["scaling_factor"]
    assert train.main([*common, "--stages", "latents,transformer,export", "--resume", "--clips-per-combo", "1",
                       "--scaling-factor", str(scale), "--steps", "4", "--restart-at", "2", "--ema-decay", "0.5"]) == 0
    state = torch.load(work / "transformer.pt")
    assert state["step"] == 4
    assert json.loads((out / "bachvid.json").read_text())["ema_decay"] == 0.5
    assert "(resume)" in (work / "train.log").read_text()  # latents were not encoded again
    # exported again on its own, without the training flags: the checkpoint still knows its EMA's decay
    assert train.main([*common, "--stages", "export"]) == 0
    assert json.loads((out / "bachvid.json").read_text())["ema_decay"] == 0.5

    pipe, defaults, _ = quality.load(out)
    assert len(state["ema"]) == len(list(pipe.transformer.parameters())) + len(list(pipe.text_encoder.parameters()))
    report = quality.measure(pipe, defaults, samples=2, steps=1, batch=2, out=tmp_path / "q", log=lambda m: None)
    records = [json.loads(line) for line in (tmp_path / "q" / "samples.jsonl").read_text().splitlines()]
    assert report["samples"] == len(records) == 2
    assert report["action"] == sum(r["action"] == r["combo"][2] for r in records) / 2  # read from the scored samples
    from PIL import Image
    assert Image.open(tmp_path / "q" / "sheet.png").size[1] == 26 + 2 * (128 + 8)  # a row per video
    again = quality.measure(pipe, defaults, samples=2, steps=1, batch=2, out=tmp_path / "q", log=lambda m: None)
    assert "seconds_per_video_batched" not in again and again["action"] == report["action"]  # resumed, not redone
    refs = quality.references(pipe, samples=2)
    assert refs["rendered"]["background"] == 1.0 and refs["rendered"]["mask_iou_vs_truth"] > 0.9


def test_phrase_variants_leave_out_each_phrase():
    tokenizer = train.world_tokenizer()
    prompts = ["a green meadow, a red robot, jumps", "a blue ocean, a white ghost, stands still"]
    rows, ids = train.phrase_variants(prompts, tokenizer)
    assert rows.shape == (2, 8) and len(ids) == rows.max() + 2  # + the empty prompt
    decode = lambda row: tokenizer.decode(ids[row], skip_special_tokens=True).replace(" ,", ",")  # noqa: E731
    assert decode(rows[0, 0]) == prompts[0]
    assert decode(rows[0, 4]) == "a green meadow, a red robot"  # action left out
    assert decode(rows[1, 1 | 2]) == "stands still"  # background and character left out
    assert decode(rows[1, 7]) == "" and decode(len(ids) - 1) == ""


def test_scene_dropout_leaves_out_background_and_character_at_its_own_rate():
    codes = train.dropout_codes(4000, 0.5, 0.1, torch.Generator().manual_seed(0))
    background, character, action = (codes & 1) > 0, (codes & 2) > 0, (codes & 4) > 0
    assert abs(background.float().mean() - 0.5) < 0.03 and abs(character.float().mean() - 0.5) < 0.03
    assert abs(action.float().mean() - 0.1) < 0.02
    assert abs((codes == 3).float().mean() - 0.5 * 0.5 * 0.9) < 0.03  # action-only prompts
    # equal rates draw exactly what the single --phrase-dropout recipe drew
    generator = torch.Generator().manual_seed(1)
    old = ((torch.rand(64, 3, generator=generator) < 0.2) * torch.tensor([1, 2, 4])).sum(1)
    assert torch.equal(train.dropout_codes(64, 0.2, 0.2, torch.Generator().manual_seed(1)), old)


def test_a_timestep_shift_for_wan_is_refused_not_ignored(tmp_path):
    with pytest.raises(SystemExit, match="CogVideoX only"):
        train.main(["--backbone", "wan", "--scale", "smoke", "--work", str(tmp_path), "--timestep-shift", "3"])


def test_motion_weights_raise_the_loss_where_a_clip_changes_in_both_layouts():
    import torch

    still = torch.randn(1, 1, 8, 1, 6, 6).expand(2, 5, 8, 1, 6, 6).reshape(2, 5, 8, 6, 6).clone()  # (B, F, C, h, w)
    moving = still.clone()
    for f in range(5):  # a bright square walks one latent pixel per frame along the top row of clip 1
        moving[1, f, :, 0, f] += 3.0
    assert torch.allclose(train.motion_weights(still, 4.0), torch.ones(2, 5, 1, 6, 6))  # nothing moves: plain MSE
    weights = train.motion_weights(moving, 4.0)
    assert weights.shape == (2, 5, 1, 6, 6)
    assert torch.allclose(weights[0], torch.ones(5, 1, 6, 6))  # the other clip of the batch is untouched
    assert weights[1, 2, 0, 0, 2] == 5.0 and abs(weights[1, 2, 0, 3, 3] - 1.0) < 1e-6  # capped at 1 + strength; still places stay 1
    wan_layout = train.motion_weights(moving.transpose(1, 2), 4.0, frame_dim=2)  # (B, C, F, h, w)
    assert torch.equal(wan_layout, weights.transpose(1, 2))


def test_training_timesteps_stay_uniform_unshifted_and_move_to_high_noise_when_shifted():
    import torch

    plain = train.training_timesteps(64, 1000, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(plain, torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(5)))  # replays
    shifted = train.training_timesteps(20000, 1000, 3.0, torch.Generator().manual_seed(5))
    assert shifted.min() >= 0 and shifted.max() <= 999
    assert 700 < shifted.float().median() < 800  # shift 3 maps the median draw 0.5 to 0.75
    assert (shifted >= 800).float().mean() > 0.35  # uniform: 0.2


def test_continuing_an_exported_model_keeps_its_vae(tmp_path):
    """--init-from: the VAE and scaling factor stay, the weights are the start, the steps add up."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    first, second, work = tmp_path / "first", tmp_path / "second", tmp_path / "work2"
    common = ["--scale", "smoke", "--batch-size", "2", "--sample-steps", "2", "--threads", "1",
              "--clips-per-combo", "1"]
    assert train.main([*common, "--work", str(tmp_path / "work1"), "--out", str(first), "--vae-steps", "1",
                       "--vae-batch", "1", "--steps", "2"]) == 0
    marked = CogVideoXTransformer3DModel.from_pretrained(first / "transformer")
    with torch.no_grad():
        marked.proj_out.bias.fill_(0.25)  # a mark a fresh start could not have
    marked.save_pretrained(first / "transformer")
    assert train.main([*common, "--work", str(work), "--out", str(second), "--init-from", str(first),
                       "--stages", "latents,transformer,export", "--steps", "3", "--phrase-dropout", "0.5"]) == 0
    assert json.loads((second / "bachvid.json").read_text())["trained_steps"] == 5
    a, b = (json.loads((f / "vae" / "config.json").read_text()) for f in (first, second))
    assert a["scaling_factor"] == b["scaling_factor"]
    assert "starting from the weights" in (work / "train.log").read_text()
    after = CogVideoXTransformer3DModel.from_pretrained(second / "transformer")
    assert torch.allclose(after.proj_out.bias.float(), torch.full_like(after.proj_out.bias.float(), 0.25), atol=0.01)
    assert not torch.equal(after.proj_out.weight, marked.proj_out.weight.to(after.dtype))  # and trained on
    with pytest.raises(SystemExit):
        train.main([*common, "--work", str(work), "--init-from", str(first), "--stages", "vae"])


def test_a_token_only_text_encoder_continues_a_model_and_cannot_mix_phrases(tmp_path):
    """--text-layers 0: the model's token embeddings go on without the encoder blocks, so an action
    word's encoding no longer depends on the scene around it; a deeper encoder cannot start from it."""
    from transformers import T5EncoderModel

    first, bare = tmp_path / "first", tmp_path / "bare"
    common = ["--scale", "smoke", "--batch-size", "2", "--sample-steps", "2", "--threads", "1",
              "--clips-per-combo", "1"]
    assert train.main([*common, "--work", str(tmp_path / "w1"), "--out", str(first), "--vae-steps", "1",
                       "--vae-batch", "1", "--steps", "2"]) == 0
    assert train.main([*common, "--work", str(tmp_path / "w2"), "--out", str(bare), "--init-from", str(first),
                       "--stages", "latents,transformer,export", "--steps", "3", "--text-layers", "0"]) == 0
    source, encoder = (T5EncoderModel.from_pretrained(f / "text_encoder", dtype=torch.float32) for f in (first, bare))
    assert len(source.encoder.block) == 2 and len(encoder.encoder.block) == 0
    assert torch.allclose(encoder.shared.weight, source.shared.weight, atol=0.02)  # kept, then trained one step
    tokenizer = train.world_tokenizer()
    ids = [tokenizer(f"{scene}, walks to the left", return_tensors="pt").input_ids
           for scene in ("a green meadow, a red robot", "a night city, a white ghost")]
    n = len(tokenizer("walks to the left", add_special_tokens=False).input_ids) + 1  # + the end token
    with torch.no_grad():
        left = [encoder(i)[0][0, -n:] for i in ids]
        mixed = [source(i)[0][0, -n:] for i in ids]
    assert torch.equal(left[0], left[1]) and not torch.allclose(mixed[0], mixed[1])
    with pytest.raises(SystemExit, match="does not fit"):
        train.main([*common, "--work", str(tmp_path / "w3"), "--out", str(tmp_path / "deep"), "--init-from",
                    str(bare), "--stages", "latents,transformer", "--steps", "4"])


@pytest.mark.slow
def test_the_cpu_v2_recipe_resumes_where_its_clock_stopped_it(tmp_path):
    """scripts/train_toy_v2_cpu.sh trains in sessions: a second run skips the finished VAE and latents
    and takes the transformer on from its checkpoint to the new STEPS, then exports a v2 model."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_toy_v2_cpu.sh"
    env = {**os.environ, "PYTHON": sys.executable, "SCALE": "smoke", "VAE_STEPS": "2", "THREADS": "1",
           "EXTRA": "--clips-per-combo 1 --batch-size 2 --sample-steps 3"}
    for steps in (2, 4):
        subprocess.run(["bash", str(script), str(tmp_path)], env={**env, "STEPS": str(steps)}, check=True,
                       capture_output=True, text=True)
        assert torch.load(tmp_path / "work" / "transformer.pt", map_location="cpu")["step"] == steps
    log = (tmp_path / "train.log").read_text()
    assert log.count("vae done") == 1 and "transformer: resumed at step 2" in log
    defaults = json.loads((tmp_path / "model" / "bachvid.json").read_text())
    assert defaults["world"] == "v2" and defaults["height"] == 96 and defaults["trained_steps"] == 4
    # a fresh machine (no work folder) continues the exported model: its VAE, 3 more steps on top of its 4
    again = tmp_path / "again"
    subprocess.run(["bash", str(script), str(again)], env={**env, "STEPS": "3", "INIT": str(tmp_path / "model")},
                   check=True, capture_output=True, text=True)
    log = (again / "train.log").read_text()
    assert "vae step" not in log and f"starting from the weights of {tmp_path / 'model'}" in log
    assert json.loads((again / "model" / "bachvid.json").read_text())["trained_steps"] == 7
    from diffusers import AutoencoderKLCogVideoX

    kept, first = (AutoencoderKLCogVideoX.from_pretrained(d / "model" / "vae") for d in (again, tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), first.state_dict().values()))
    # the quality bars' tool reads the world from the model: v2's 96 x 96 clips, rendered and generated
    from bachvid.toy import quality

    pipe, defaults, _ = quality.load(tmp_path / "model")
    assert (defaults["size"], defaults["num_frames"]) == (96, 17)
    report = quality.measure(pipe, defaults, samples=2, steps=1, batch=2, out=tmp_path / "q", log=lambda m: None)
    assert report["samples"] == 2
    assert np.load(tmp_path / "q" / "videos.npz")["videos"].shape[1:4] == (17, 96, 96)
    refs = quality.references(pipe, samples=2, size=defaults["size"])
    assert refs["rendered"]["background"] == 1.0 and refs["rendered"]["mask_iou_vs_truth"] > 0.9
