"""Seconds per DOODL iteration on a Stable-Diffusion-1.5-sized model (512 px, 50 steps, CFG), built from
configs with random weights (compute does not depend on the weights), plus one CFG UNet forward and peak
memory. Meant for a GPU in bf16 (`--device cuda`); `--tiny` runs the same path at toy size on the CPU."""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import torch

from doodl_ray.config import DoodlConfig, MethodConfig, SamplerConfig
from doodl_ray.models.sd import LatentTextDiffusion

SD15_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=3, help="timed DOODL iterations after a warm-up")
    parser.add_argument("--gradient", choices=["checkpoint", "reversible"], default="checkpoint")
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="toy-size model: checks the script on a CPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def offline_clip_tokenizer(folder: Path):
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
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


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


def sd15_components(tiny: bool):
    """UNet2DConditionModel, AutoencoderKL and CLIPTextModel with SD 1.5's configs (or toy ones)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    if tiny:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                    norm_num_groups=8, attention_head_dim=4)
        vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4)
        text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    else:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                            sample_size=512)
        text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              hidden_act="quick_gelu")
    return unet, vae, CLIPTextModel(text)


def run(args: argparse.Namespace) -> int:
    import torchvision

    from doodl_ray.engine import Engine, Item
    from doodl_ray.guidance.classifier import ClassifierGuidance
    from doodl_ray.guidance.crops import MultiCrop
    from doodl_ray.guidance.preprocess import Preprocess

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    unet, vae, text_encoder = sd15_components(args.tiny)
    with tempfile.TemporaryDirectory() as vocab:
        tokenizer = offline_clip_tokenizer(Path(vocab))
    model = LatentTextDiffusion(unet.to(device, dtype), vae.to(device, dtype), text_encoder.to(device, dtype),
                                tokenizer, SD15_SCHEDULER)
    classifier = torchvision.models.resnet50(weights=None).to(device)
    preprocess = Preprocess(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    guide = ClassifierGuidance(classifier, 1000, preprocess, crops=MultiCrop(args.crops)).to(device)
    item = Item(id="bench", seed=0, prompt="a photograph of an astronaut riding a horse", target=1)
    sampler = SamplerConfig(steps=args.steps, cfg_scale=7.5)

    def run_doodl(iterations: int) -> float:
        method = MethodConfig(name="doodl", sampler=sampler, doodl=DoodlConfig(iterations=iterations,
                                                                                gradient=args.gradient))
        engine = Engine(model, guide, method, device=device, dtype=dtype)
        _sync(device)
        start = time.perf_counter()
        engine.run([engine.validate(item)])
        _sync(device)
        return time.perf_counter() - start

    engine = Engine(model, guide, MethodConfig(name="none", sampler=sampler), device=device, dtype=dtype)
    eps = model.condition([item.prompt], None, 7.5)
    schedule = engine.schedule
    noise = engine.problem([item]).noise
    with torch.no_grad():
        for _ in range(2):
            eps(noise, schedule.timesteps[0])
        _sync(device)
        start = time.perf_counter()
        for k in range(5):
            eps(noise, schedule.timesteps[k % len(schedule)])
        _sync(device)
    unet_forward = (time.perf_counter() - start) / 5
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = run_doodl(1)
    timed = run_doodl(1 + args.iterations)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype, "steps": args.steps, "gradient": args.gradient, "tiny": args.tiny,
        "sec_per_iteration": (timed - warm) / args.iterations,
        "sec_per_cfg_unet_forward": unet_forward,
        "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    print(f"{result['device']} {args.dtype}: {result['sec_per_iteration']:.2f} s per DOODL iteration "
          f"({args.steps} steps, CFG, {args.gradient}), {unet_forward * 1000:.1f} ms per CFG UNet forward, "
          f"peak {result['peak_gpu_gb'] or 0:.1f} GB")
    if args.json:
        print(json.dumps(result))
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
