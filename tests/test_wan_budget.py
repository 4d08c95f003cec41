"""`bachvid plan` for Wan: the analytic parameter count against diffusers' WanTransformer3DModel,
the activation model against a live-tensor count of a real bf16 forward under BachVid's Wan
processor, token grids and what an identity keeps against the Wan backbone itself, and the
bundled Wan2.1-T2V-1.3B / 14B, Wan2.2-A14B and TI2V-5B configs through the command."""

import json

import pytest

from bachvid import cli
from bachvid.budget import BudgetError, WanTransformer, Workload, estimate, load_model
from bachvid.method.config import BachVidConfig


def small_config(**changes):
    config = dict(_class_name="WanTransformer3DModel", num_attention_heads=4, attention_head_dim=16, num_layers=3,
                  in_channels=8, out_channels=8, text_dim=32, freq_dim=16, ffn_dim=96, patch_size=[1, 2, 2])
    config.update(changes)
    return config


def _diffusers_model(config):
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights():
        return WanTransformer3DModel.from_config(config)


@pytest.mark.parametrize("changes", [
    {},
    dict(cross_attn_norm=False),
    dict(in_channels=48, out_channels=48),  # TI2V-5B's channels
    dict(image_dim=40, added_kv_proj_dim=64),  # I2V: image embedder and image keys/values in attn2
    dict(image_dim=40, added_kv_proj_dim=64, pos_embed_seq_len=10),  # FLF2V
    dict(patch_size=[2, 2, 2]),
], ids=["t2v", "no-cross-norm", "ti2v", "i2v", "flf2v", "patch-t2"])
def test_parameter_count_matches_diffusers(changes):
    config = small_config(**changes)
    assert WanTransformer.from_config(config).parameter_count() == \
        sum(p.numel() for p in _diffusers_model(config).parameters())


@pytest.mark.parametrize("name, billions", [("wan2.1-t2v-1.3b", 1.42), ("wan2.1-t2v-14b", 14.29),
                                            ("wan2.2-ti2v-5b", 5.00)])
def test_bundled_configs_build_the_real_models(name, billions):
    from bachvid.budget import BUNDLED, CONFIG_DIR

    config = json.loads((CONFIG_DIR / BUNDLED[name]).read_text())
    count = load_model(name).transformer.parameter_count()
    assert count == sum(p.numel() for p in _diffusers_model(config).parameters())
    assert round(count / 1e9, 2) == billions


def test_bundled_wan_vae_config_builds():
    from diffusers import AutoencoderKLWan

    from bachvid.budget import CONFIG_DIR

    config = json.loads((CONFIG_DIR / "wan2.1-vae.json").read_text())
    assert AutoencoderKLWan.extract_init_dict(config)[1] == {}  # every key is a real argument
    assert len(config["latents_mean"]) == len(config["latents_std"]) == config["z_dim"] == 16


def test_a14b_keeps_two_experts_resident():
    one, two = load_model("wan2.1-t2v-14b").transformer, load_model("wan2.2-t2v-a14b").transformer
    assert two.experts == 2 and two.parameter_count() == 2 * one.parameter_count()
    a, b = estimate(one, Workload(frames=81, height=480, width=832)), estimate(two, Workload(frames=81, height=480,
                                                                                             width=832))
    assert b.weight_bytes == 2 * a.weight_bytes and b.forward_flops == a.forward_flops
    assert b.modes["replay"].time_ratio == a.modes["replay"].time_ratio


def test_tokens_of_the_wan_shapes():
    wan13 = load_model("wan2.1-t2v-1.3b").transformer
    tokens = wan13.tokens(81, 480, 832)
    assert tokens.grid == (21, 30, 52) and tokens.video == tokens.total == 32_760 and tokens.text == 512
    assert tokens.latent_elements == 16 * 21 * 60 * 104 and not tokens.joint
    ti2v = load_model("wan2.2-ti2v-5b").transformer  # 16x16x4 VAE: a token per 32 x 32 pixels
    assert (ti2v.sample_frames, ti2v.sample_height * 16, ti2v.sample_width * 16) == (121, 704, 1280)
    assert ti2v.tokens(121, 704, 1280).grid == (31, 22, 40)
    with pytest.raises(BudgetError, match="4k\\+1"):
        wan13.tokens(80, 480, 832)
    with pytest.raises(BudgetError, match="multiples of 16"):
        wan13.tokens(81, 480, 840)
    with pytest.raises(BudgetError, match="multiples of 32"):
        ti2v.tokens(121, 720, 1280)


# Activations against a real forward -------------------------------------------------------------

@pytest.mark.parametrize("ffn_ratio", [8960 / 1536, 13824 / 5120], ids=["1.3b-ffn", "14b-ffn"])
def test_activation_model_matches_a_real_forward(ffn_ratio):
    """The block-level model against diffusers' Wan forward under BachVid's processor, in bf16 with
    Wan's fp32 modules (norms, time embedder, RoPE tables), counted tensor by tensor."""
    import torch
    from diffusers import WanTransformer3DModel

    from bachvid.backbones.wan import WanBachVidProcessor
    from bachvid.method.controller import Controller, VideoState
    from bachvid.method.plan import StepPlan
    from test_budget import _live_peak

    heads, rows = 4, 2
    config = small_config(num_attention_heads=heads, attention_head_dim=128, num_layers=2, in_channels=16,
                          out_channels=16, text_dim=256, freq_dim=256, ffn_dim=int(heads * 128 * ffn_ratio))
    torch.manual_seed(0)
    model = WanTransformer3DModel.from_config(config)
    model = torch.nn.Module.to(model, torch.bfloat16)
    for name, param in model.named_parameters():
        if any(part in model._keep_in_fp32_modules for part in name.split(".")):
            param.data = param.data.float()
    model.rope.freqs_cos, model.rope.freqs_sin = model.rope.freqs_cos.float(), model.rope.freqs_sin.float()
    controller = Controller()
    controller.use([VideoState(plan=StepPlan(step=0)) for _ in range(rows)])
    model.set_attn_processor({n: WanBachVidProcessor(int(n.split(".")[1]), controller) for n in model.attn_processors})
    shape = WanTransformer.from_config(config)
    tokens = shape.tokens(17, 480, 480)
    frames, h, w = tokens.grid
    latents = torch.randn(rows, 16, frames, 2 * h, 2 * w, dtype=torch.bfloat16)
    text = torch.randn(rows, 512, 256, dtype=torch.bfloat16)
    with torch.inference_mode():
        peak = _live_peak(model, hidden_states=latents, timestep=torch.full((rows,), 500.0),
                          encoder_hidden_states=text, return_dict=False)
    rope_tables = 2 * tokens.video * shape.head_dim * 4  # step state in the estimate
    expected = shape.activation_units(tokens, rows, 2) * shape.unit_bytes(tokens, 2) + rope_tables
    assert abs(expected - peak) <= 0.10 * peak, expected / peak


# Against the Wan backbone ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_wan_folder(tmp_path_factory):
    from bachvid.backbones.tiny import tiny_wan_pipeline

    folder = tmp_path_factory.mktemp("wan") / "tiny-wan"
    tiny_wan_pipeline(num_layers=4, experts=2).save_pretrained(folder)
    return folder


def test_a_wan_folder_gives_the_backbones_grid_and_cache(tiny_wan_folder):
    """A saved two-expert Wan folder: both experts counted, the token grid of the backbone, and the
    cache mode's identity bytes equal to what the pipeline would keep (no text in self-attention)."""
    import torch

    from bachvid.pipeline import BachVidPipeline, GenerationSettings

    source = load_model(str(tiny_wan_folder))
    model = source.transformer
    assert isinstance(model, WanTransformer) and model.experts == 2 and model.spatial_compression == 4
    pipe = BachVidPipeline.from_pretrained(tiny_wan_folder)
    assert model.parameter_count() == sum(p.numel() for t in pipe.backbone.experts for p in t.parameters())
    for frames, height, width in ((9, 32, 32), (17, 48, 64)):
        assert model.tokens(frames, height, width).grid == pipe.backbone.token_grid(frames, height, width)
    settings = GenerationSettings(num_inference_steps=10, num_frames=9, height=32, width=48, guidance_scale=5.0)
    for config in (BachVidConfig(), BachVidConfig(vital_layers=(0, 1), token_merge=False)):
        work = Workload(frames=9, height=32, width=48, steps=10, guidance=5.0, dtype_bytes=4)
        kept = estimate(model, work, config).modes["cache"].identity_bytes
        tokens = model.tokens(9, 32, 48)
        assert kept - tokens.video == pipe.cache_bytes(settings, config)  # the estimate adds the mask
    assert pipe.pipe.transformer.dtype == torch.float32


# The command ------------------------------------------------------------------------------------

def test_plan_table_for_wan_1_3b(capsys):
    assert cli.main(["plan", "--model-config", "wan2.1-t2v-1.3b"]) == 0
    out = capsys.readouterr().out
    for text in ("81 frames 480x832", "guidance 5 (2 forwards per step)", "1,418,996,800",
                 "32,760 video (21 x 30 x 52) in self-attention; 512 text in cross-attention", "vital layers 0-10",
                 "2.64 GiB", "lockstep", "replay"):
        assert text in out, text


def test_plan_json_for_wan_14b(capsys):
    assert cli.main(["plan", "--model-config", "wan2.1-t2v-14b", "--group", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"] == 14_288_491_584 and data["schedule"]["vital"] == list(range(14))
    assert data["workload"]["guidance"] == 5.0 and data["tokens"]["total"] == 32_760
    modes = data["modes"]
    assert modes["cache"]["identity_bytes"] > 100 * 2**30  # 14 layers x 40 steps x 2 branches of K/V
    assert modes["lockstep"]["identity_bytes"] < modes["replay"]["identity_bytes"] < 300 * 2**20
    # groups of one: replay re-runs the identity's first blocks per shot, lockstep the whole identity
    assert 1.0 < modes["replay"]["time_ratio"] < 1.6 < modes["lockstep"]["time_ratio"] < 2.0
    assert data["vanilla"]["peak_bytes"] < modes["replay"]["peak_bytes"] < 80 * 2**30  # fits one H100


def test_plan_for_wan_2_2_a14b_names_its_experts(capsys):
    assert cli.main(["plan", "--model-config", "wan2.2-t2v-a14b"]) == 0
    assert "28.58 B (28,576,983,168): 2 experts of 14.29 B, one runs per step" in capsys.readouterr().out
    assert cli.main(["plan", "--model-config", "wan2.2-t2v-a14b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["experts"] == 2


def test_plan_refuses_frames_wan_would_round(capsys):
    assert cli.main(["plan", "--model-config", "wan2.1-t2v-1.3b", "--frames", "80"]) == 2
    assert "4k+1" in capsys.readouterr().err
