"""Small CogVideoX and Wan pipelines built from configs, for tests and for machines without weights.

Every part is a real diffusers/transformers class (CogVideoXTransformer3DModel,
AutoencoderKLCogVideoX, WanTransformer3DModel, AutoencoderKLWan, T5/umT5 encoders, a `tokenizers`
word-level tokenizer saved as a transformers tokenizer), so the same loading and attention code
runs on them as on CogVideoX-5B or Wan. Only the sizes differ. The pipeline falls back to one when
no model is given and none is shipped; the tests and the toy recipe build theirs here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextlib import contextmanager

import torch

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")

# Words a tiny random model knows besides the toy world's: enough for tests and examples.
BASIC_WORDS = (
    "a an the , . of in on at to with and is his her its left right still closer jumps walks "
    "stands runs sits green sandy blue night red white yellow purple meadow desert ocean city "
    "forest room beach robot ghost bird cat dog fox man woman girl boy"
).split()


def words_of(texts: Iterable[str]) -> list[str]:
    """Lower-case words and punctuation marks, split the way the word tokenizer splits them."""
    return [w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())]


def build_word_tokenizer(words: Iterable[str], model_max_length: int = 226):
    """A word-level tokenizer (T5 conventions: <pad>=0, </s>=1 appended, <unk>=2) with offsets."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words_of(words):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def tiny_text_encoder(vocab_size: int, d_model: int = 32, num_layers: int = 2, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def tiny_vae(latent_channels: int = 4, block_out_channels=(8, 8, 8), seed: int = 0):
    """CogVideoX VAE: x4 in space (3 blocks), x4 in time; 4k+1 frames <-> k+1 latent frames."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    blocks = len(block_out_channels)
    return AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * blocks,
        up_block_types=("CogVideoXUpBlock3D",) * blocks,
        block_out_channels=tuple(block_out_channels),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=min(4, block_out_channels[0]),
        temporal_compression_ratio=4,
        sample_height=32,
        sample_width=32,
    ).eval()


def tiny_transformer(
    *,
    rope: bool = True,
    num_layers: int = 4,
    heads: int = 2,
    head_dim: int = 16,
    in_channels: int = 4,
    text_dim: int = 32,
    text_length: int = 16,
    latent_size: int = 8,
    frames: int = 9,
    seed: int = 0,
    patch_size_t: int | None = None,
):
    """CogVideoX transformer in the 5B layout (rope=True: 3D RoPE) or the 2B layout (sin-cos positions);
    patch_size_t=2: CogVideoX 1.5's temporal patches (with RoPE, no patch bias)."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=in_channels,
        time_embed_dim=4 * heads * head_dim // 2,
        text_embed_dim=text_dim,
        num_layers=num_layers,
        sample_width=latent_size,
        sample_height=latent_size,
        sample_frames=frames,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=text_length,
        use_rotary_positional_embeddings=rope or patch_size_t is not None,
        patch_size_t=patch_size_t,
        patch_bias=patch_size_t is None,
    ).eval()


def cogvideox_scheduler():
    """The CogVideoX-5B scheduler settings (v-prediction, zero-SNR, trailing spacing)."""
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        snr_shift_scale=1.0,
    )


def tiny_cogvideox_pipeline(*, rope: bool = True, num_layers: int = 4, text_length: int = 16, seed: int = 0, words=(),
                            patch_size_t: int | None = None):
    """A random CogVideoX pipeline small enough for CPU tests: 32x32 pixels, 9 frames, 48 video tokens
    (patch_size_t=2: the CogVideoX 1.5 layout)."""
    from diffusers import CogVideoXPipeline

    tokenizer = build_word_tokenizer(list(BASIC_WORDS) + list(words), model_max_length=text_length)
    text_encoder = tiny_text_encoder(len(tokenizer), seed=seed)
    transformer = tiny_transformer(rope=rope, num_layers=num_layers, text_length=text_length, seed=seed + 1,
                                   patch_size_t=patch_size_t)
    vae = tiny_vae(seed=seed + 2)
    return CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=cogvideox_scheduler(),
    )


def tiny_wan_transformer(*, num_layers: int = 4, heads: int = 2, head_dim: int = 12, in_channels: int = 4,
                         text_dim: int = 32, ffn_mult: int = 2, freq_dim: int = 32, seed: int = 0):
    """Wan transformer (attn1: video self-attention with 3D RoPE, attn2: cross-attention to text).
    head_dim 12 splits into RoPE parts of 4 (frames), 4 (height), 4 (width), as Wan splits 128."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=in_channels,
        text_dim=text_dim,
        freq_dim=freq_dim,
        ffn_dim=ffn_mult * heads * head_dim,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def tiny_wan_vae(latent_channels: int = 4, base_dim: int = 4, dim_mult=(1, 1, 1), seed: int = 0):
    """Wan VAE: x4 in space (2 down blocks), x4 in time; 4k+1 frames <-> k+1 latent frames.
    Its stages are base_dim x dim_mult channels wide."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=latent_channels,
        dim_mult=list(dim_mult),
        num_res_blocks=1,
        temperal_downsample=[True, True],
        latents_mean=[0.0] * latent_channels,
        latents_std=[1.0] * latent_channels,
        scale_factor_temporal=4,
        scale_factor_spatial=4,
    ).eval()


def tiny_umt5_encoder(vocab_size: int, d_model: int = 32, num_layers: int = 2, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model, num_layers=num_layers,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def wan_scheduler(flow_shift: float = 3.0):
    """Wan 2.1's scheduler: UniPC multistep on flow-matching sigmas (a stateful multistep solver)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, flow_shift=flow_shift)


def tiny_wan_pipeline(*, num_layers: int = 4, text_length: int = 16, seed: int = 0, words=(),
                      experts: int = 1, boundary_ratio: float = 0.875):
    """A random WanPipeline small enough for CPU tests: 32x32 pixels, 9 frames, 48 video tokens.
    experts=2 builds Wan 2.2 A14B's layout: a high-noise `transformer` and a low-noise
    `transformer_2` (other weights), switched at `boundary_ratio`."""
    from diffusers import WanPipeline

    tokenizer = build_word_tokenizer(list(BASIC_WORDS) + list(words), model_max_length=text_length)
    text_encoder = tiny_umt5_encoder(len(tokenizer), seed=seed)
    transformer = tiny_wan_transformer(num_layers=num_layers, seed=seed + 1)
    transformer_2 = tiny_wan_transformer(num_layers=num_layers, seed=seed + 3) if experts == 2 else None
    if experts not in (1, 2):
        raise ValueError(f"Wan pipelines have 1 or 2 experts, not {experts}")
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=tiny_wan_vae(seed=seed + 2),
        transformer=transformer,
        transformer_2=transformer_2,
        scheduler=wan_scheduler(),
        boundary_ratio=boundary_ratio if experts == 2 else None,
    )


BUNDLED_CONFIGS = ("cogvideox-5b", "cogvideox-2b")


def bundled_config(name: str) -> dict:
    """A real model's transformer config shipped with bachvid (configs/NAME.json): no download."""
    import json
    from importlib.resources import files

    if name not in BUNDLED_CONFIGS + ("cogvideox-vae",):
        raise ValueError(f"no bundled config {name!r}; bundled: {', '.join(BUNDLED_CONFIGS)}")
    return json.loads(files("bachvid").joinpath("configs", f"{name}.json").read_text())


def shrunk(config: dict, num_layers: int | None = None, num_heads: int | None = None) -> dict:
    """A bundled transformer config with fewer layers / heads, for CPU smoke runs of a real architecture."""
    if num_layers is not None:
        config["num_layers"] = num_layers
    if num_heads is not None:
        config["num_attention_heads"] = num_heads
    return config


@contextmanager
def random_modules(dtype, device, seed: int):
    """Modules made inside are seeded, in `dtype` and on `device`; the default dtype is restored after."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def random_cogvideox_pipeline(name: str = "cogvideox-5b", *, dtype=torch.bfloat16, device="cpu", num_layers=None,
                              num_heads=None, seed: int = 0):
    """A real model's architecture with random weights, built on `device` in `dtype`: times and
    fills memory like the real weights (CogVideoX-5B: 42 layers, 48 x 64) without a download.

    The transformer and VAE come from the bundled configs (num_layers / num_heads shrink the
    transformer for CPU smoke runs); the text encoder is a one-layer T5 of the real output width
    (4096), since text encoding is a negligible part of a video's cost."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    config = shrunk(bundled_config(name), num_layers, num_heads)
    with random_modules(dtype, device, seed):
        transformer = CogVideoXTransformer3DModel.from_config(config).eval()
        vae = AutoencoderKLCogVideoX.from_config(bundled_config("cogvideox-vae")).eval()
        tokenizer = build_word_tokenizer(BASIC_WORDS, model_max_length=config["max_text_seq_length"])
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=config["text_embed_dim"], d_kv=64, d_ff=1024, num_layers=1,
            num_heads=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    scheduler = cogvideox_scheduler()  # THUDM's CogVideoX-2b and -5b ship this DDIM scheduler
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder.to(device, dtype),
                             vae=vae.to(device, dtype), transformer=transformer.to(device, dtype), scheduler=scheduler)
