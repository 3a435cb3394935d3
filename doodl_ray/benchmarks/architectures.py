"""Text-to-image pipelines built from configs with random weights, at the published models' sizes or at toy
size: what `bench sd` times (compute does not depend on the weights) and what the test suite saves as tiny
model folders. Tokenizers are built offline (CLIP's real BPE vocabulary from open_clip's wheel; a small
character-level T5 vocabulary), so nothing needs the model hub.

Full sizes follow the published configs of the denoising network and VAE (SD 1.5, SDXL base 1.0, SD 3.5 Large,
FLUX.1-dev); text encoders keep their real widths and output shapes but only two layers, since they run once per
prompt, not once per step. Toy sizes are diffusers' own test configs, shrunk further."""

from __future__ import annotations

import gzip
import json
import string
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

FAMILIES = ("sd15", "sdxl", "sd3", "flux")

SD15_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
SDXL_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
                  "timestep_spacing": "leading", "set_alpha_to_one": False, "clip_sample": False,
                  "interpolation_type": "linear", "prediction_type": "epsilon"}  # SDXL base 1.0's (Euler)
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                  "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}  # FLUX.1-dev's


def offline_clip_tokenizer(folder: Path, max_length: int = 77):
    """CLIP's real BPE vocabulary (49,408 ids), built from the file open_clip's wheel bundles: no hub needed."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def offline_t5_tokenizer():
    """A T5 (SentencePiece-unigram) tokenizer over characters: T5's special ids (pad 0, eos 1, unk 2) and its
    word-start marker, a vocabulary of 88 pieces. Prompts pad to the pipeline's length either way."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for char in string.ascii_lowercase + string.digits + ".,'!?-":
        pieces += [(char, -3.0), ("▁" + char, -2.5)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip(hidden: int, layers: int, heads: int, inter: int, projection: int | None, act: str = "gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                            num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                            projection_dim=projection or hidden)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5(d_model: int, d_ff: int, heads: int, d_kv: int, layers: int, vocab: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=d_model, d_ff=d_ff, num_heads=heads, d_kv=d_kv,
                                   num_layers=layers, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32))


def _vae(tiny: bool, latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    widths = (8, 16) if tiny else (128, 256, 512, 512)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=widths,
        layers_per_block=1 if tiny else 2, down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths), norm_num_groups=4 if tiny else 32,
        sample_size=16 if tiny else 1024, **extra,
    )


def _scheduler(cls: Any, config: dict[str, Any]):
    """A scheduler from a config, its tables on the CPU whatever device modules are being created on."""
    with torch.device("cpu"):
        return cls.from_config(config)


def sd15(tiny: bool):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    if tiny:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                    norm_num_groups=8, attention_head_dim=4)
        text = _clip(32, 2, 4, 64, None)
    else:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        text = _clip(768, 2, 12, 3072, None, "quick_gelu")
    with tempfile.TemporaryDirectory() as vocab:
        return StableDiffusionPipeline(
            unet=unet, vae=_vae(tiny, 4), text_encoder=text,
            tokenizer=offline_clip_tokenizer(Path(vocab)), scheduler=_scheduler(DDIMScheduler, SD15_SCHEDULER),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )


def sdxl(tiny: bool):
    """SDXL base 1.0 (UNet 2.6 B); toy: diffusers' SDXL test UNet (text_time conditioning, two CLIPs)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    if tiny:
        widths, heads, depth, time_dim, clip_l, clip_g = (16, 32), (2, 4), (1, 1), 8, (16, 2, 2, 32), (16, 2, 2, 32)
    else:
        widths, heads, depth, time_dim, clip_l, clip_g = (320, 640, 1280), (5, 10, 20), (1, 2, 10), 256, \
            (768, 2, 12, 3072), (1280, 2, 20, 5120)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(widths) - 1)
    unet = UNet2DConditionModel(
        sample_size=8 if tiny else 128, in_channels=4, out_channels=4, block_out_channels=widths,
        layers_per_block=1 if tiny else 2, down_block_types=down, up_block_types=tuple(
            "CrossAttnUpBlock2D" if b.startswith("CrossAttn") else "UpBlock2D" for b in reversed(down)),
        attention_head_dim=heads, transformer_layers_per_block=depth, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim, cross_attention_dim=clip_l[0] + clip_g[0],
        projection_class_embeddings_input_dim=6 * time_dim + clip_g[0], norm_num_groups=8 if tiny else 32,
    )
    vae = _vae(tiny, 4, scaling_factor=0.13025, force_upcast=True)
    with tempfile.TemporaryDirectory() as vocab:
        tokenizer = offline_clip_tokenizer(Path(vocab))
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=_clip(*clip_l, None, "quick_gelu"), text_encoder_2=_clip(*clip_g, clip_g[0]),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=_scheduler(EulerDiscreteScheduler, SDXL_SCHEDULER),
    )


def sd3(tiny: bool):
    """SD 3.5 Large (MMDiT 8.1 B, 38 layers); toy: diffusers' SD3 test transformer with patch 2. The toy CLIPs'
    concatenated width (32) is narrower than its T5 (48), so the pipeline's zero padding is exercised."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    if tiny:
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
            num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=48, pooled_projection_dim=32,
            pos_embed_max_size=16,
        )
        clip_l, clip_g, t5 = (16, 2, 2, 32), (16, 2, 2, 32), (48, 64, 4, 8, 2, 88)
    else:
        transformer = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
            num_attention_heads=38, caption_projection_dim=2432, joint_attention_dim=4096, pooled_projection_dim=2048,
            pos_embed_max_size=192, qk_norm="rms_norm",
        )
        clip_l, clip_g, t5 = (768, 2, 12, 3072), (1280, 2, 20, 5120), (4096, 10240, 64, 64, 2, 32128)
    vae = _vae(tiny, 4 if tiny else 16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
               use_post_quant_conv=False)
    with tempfile.TemporaryDirectory() as vocab:
        tokenizer = offline_clip_tokenizer(Path(vocab))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_scheduler(FlowMatchEulerDiscreteScheduler, SD3_SCHEDULER), vae=vae,
        text_encoder=_clip(*clip_l, clip_l[0], "quick_gelu"), tokenizer=tokenizer,
        text_encoder_2=_clip(*clip_g, clip_g[0]), tokenizer_2=tokenizer,
        text_encoder_3=_t5(*t5), tokenizer_3=offline_t5_tokenizer(),
    )


def flux(tiny: bool):
    """FLUX.1-dev (12 B: 19 double and 38 single blocks, guidance embedding); toy: diffusers' FLUX test
    transformer on 4-channel latents (16 packed channels)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    if tiny:
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=48, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        )
        clip_l, t5 = (32, 2, 2, 32), (48, 64, 4, 8, 2, 88)
    else:
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        )
        clip_l, t5 = (768, 2, 12, 3072), (4096, 10240, 64, 64, 2, 32128)
    vae = _vae(tiny, 4 if tiny else 16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
               use_post_quant_conv=False)
    with tempfile.TemporaryDirectory() as vocab:
        tokenizer = offline_clip_tokenizer(Path(vocab))
    return FluxPipeline(
        scheduler=_scheduler(FlowMatchEulerDiscreteScheduler, FLUX_SCHEDULER), vae=vae,
        text_encoder=_clip(*clip_l, None, "quick_gelu"), tokenizer=tokenizer, text_encoder_2=_t5(*t5),
        tokenizer_2=offline_t5_tokenizer(), transformer=transformer,
    )


PIPELINES: dict[str, Callable[[bool], Any]] = {"sd15": sd15, "sdxl": sdxl, "sd3": sd3, "flux": flux}


def build_pipeline(family: str, tiny: bool, device: torch.device | str = "cpu", seed: int = 0):
    """A pipeline of `family` with random weights (fixed seed), its modules created on `device` (a 12 B
    transformer initializes in seconds on a GPU, in minutes on a CPU)."""
    torch.manual_seed(seed)
    with torch.device(device):
        return PIPELINES[family](tiny)
