"""Every guide's whole-frame view equals its library's own eval transform applied to the same picture as a PIL
image (>= 45 dB PSNR on pixel values), at 512², 1024² and 512x768: open_clip tags (OpenAI, LAION, SigLIP, EVA02,
CLIPA), timm configs (crop_pct, interpolation, crop modes), torchvision weights and transformers processors
(ViT, ConvNext with crop_pct, MobileViT with BGR). No weights are needed: each transform comes from the config."""

from __future__ import annotations

from dataclasses import asdict

import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

from doodl_ray.guidance.preprocess import Preprocess, ProcessorTransform, from_open_clip, from_timm, from_torchvision
from tests.pictures import SHAPES, as_pil, picture

MIN_PSNR = 45.0


def psnr(ours: torch.Tensor, theirs: torch.Tensor, mean, std, scale: float = 1.0) -> float:
    """PSNR of two model inputs as pixel values in [0, 1] (both un-normalized with the library's constants)."""
    mean, std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    a, b = (ours.squeeze(0) * std + mean) / scale, (theirs.squeeze(0) * std + mean) / scale
    assert a.shape == b.shape, f"view {tuple(a.shape)} vs library {tuple(b.shape)}"
    return float(10 * torch.log10(1 / (a - b).pow(2).mean()))


def check_parity(ours, theirs, shape, mean, std, scale: float = 1.0) -> None:
    image = picture(*shape)
    expected = theirs(as_pil(image))
    got = ours(image.float().div(255).unsqueeze(0))
    value = psnr(got, expected, mean, std, scale)
    assert value >= MIN_PSNR, f"{value:.1f} dB"


def open_clip_cfg(model: str, tag: str, **changes) -> dict:
    """The preprocess cfg open_clip gives a model loaded with this tag: its defaults, the tag's fields, the tower's size."""
    cfg = merge_preprocess_dict(asdict(PreprocessCfg()), open_clip.get_pretrained_cfg(model, tag))
    return {**cfg, "size": open_clip.get_model_config(model)["vision_cfg"]["image_size"], **changes}


CLIP_CASES = [
    ("ViT-B-32-quickgelu", "openai", {}),  # shortest side + centre crop, bicubic
    ("ViT-B-32", "laion2b_s34b_b79k", {}),
    ("ViT-B-16-SigLIP", "webli", {}),  # squash
    ("EVA02-B-16", "merged2b_s8b_b131k", {}),
    ("ViT-L-14-CLIPA-336", "datacomp1b", {}),  # squash, bilinear, ImageNet constants
    ("ViT-B-32", "laion2b_s34b_b79k", {"resize_mode": "longest", "fill_color": 40}),  # fit and pad
    ("ViT-B-32", "laion2b_s34b_b79k", {"size": (224, 160)}),  # non-square: ResizeKeepRatio, always bicubic
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("model, tag, changes", CLIP_CASES, ids=lambda c: c if isinstance(c, str) else "")
def test_open_clip_tags(model, tag, changes, shape):
    cfg = open_clip_cfg(model, tag, **changes)
    check_parity(from_open_clip(cfg), image_transform_v2(PreprocessCfg(**cfg), is_train=False), shape, cfg["mean"], cfg["std"])


def timm_cfg(name: str, **changes) -> dict:
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    return {**resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(name).to_dict()), **changes}


TIMM_CASES = [
    ("resnet50.a1_in1k", {}),  # crop_pct 0.95, bicubic
    ("test_resnet.r160_in1k", {}),  # crop_pct 0.95, bilinear, 160 px
    ("vit_base_patch16_224.augreg_in21k", {}),  # crop_pct 0.9
    ("convnext_tiny.fb_in22k", {}),  # crop_pct 0.875
    ("eva02_base_patch14_448.mim_in22k_ft_in22k_in1k", {}),  # crop_mode squash, 448 px
    ("resnet50.a1_in1k", {"crop_mode": "border"}),  # fit and pad with the mean colour
    ("resnet50.a1_in1k", {"input_size": (3, 224, 160)}),  # non-square: ResizeKeepRatio
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name, changes", TIMM_CASES, ids=lambda c: c if isinstance(c, str) else "")
def test_timm_configs(name, changes, shape):
    from timm.data import create_transform

    cfg = timm_cfg(name, **changes)
    check_parity(from_timm(cfg), create_transform(**cfg), shape, cfg["mean"], cfg["std"])


TORCHVISION_WEIGHTS = ["ResNet50_Weights.IMAGENET1K_V2", "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1", "Inception_V3_Weights.IMAGENET1K_V1"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("weights", TORCHVISION_WEIGHTS)
def test_torchvision_weights(weights, shape):
    import torchvision

    transform = torchvision.models.get_weight(weights).transforms()
    check_parity(from_torchvision(transform), transform, shape, transform.mean, transform.std)


def hf_processor(kind: str):
    from transformers import ConvNextImageProcessor, MobileViTImageProcessor, ViTImageProcessor

    return {
        "vit": lambda: ViTImageProcessor(),  # squash to 224, bilinear, mean = std = 0.5
        "convnext-224": lambda: ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875),  # short side 256, crop
        "convnext-384": lambda: ConvNextImageProcessor(),  # 384: warp, no crop
        "mobilevit": lambda: MobileViTImageProcessor(size={"shortest_edge": 288}, crop_size={"height": 256, "width": 256}),
    }[kind]()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["vit", "convnext-224", "convnext-384", "mobilevit"])
def test_transformers_processors(kind, shape):
    processor = hf_processor(kind)
    normalized = processor.do_normalize
    mean, std = (processor.image_mean, processor.image_std) if normalized else ((0.0,) * 3, (1.0,) * 3)
    library = lambda pil: processor(images=pil, return_tensors="pt")["pixel_values"]  # noqa: E731
    check_parity(ProcessorTransform(processor), library, shape, mean, std, processor.rescale_factor * 255)


def test_mobilevit_sees_bgr_in_zero_one():
    """MobileViT's processor flips to BGR and does not normalize: a pure red picture is (0, 0, 1) there."""
    red = torch.zeros(1, 3, 300, 300)
    red[:, 0] = 1.0
    view = ProcessorTransform(hf_processor("mobilevit"))(red)
    assert view.shape == (1, 3, 256, 256)
    assert torch.allclose(view.mean(dim=(2, 3)), torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-5)


def test_crops_and_frames_share_the_transform():
    """A crop goes through the same resize and crop as the frame: a timm crop_pct model crops the crop too."""
    from doodl_ray.guidance.crops import MultiCrop

    preprocess = from_timm(timm_cfg("resnet50.a1_in1k"))
    x = picture(512, 768).float().div(255).unsqueeze(0)
    gen = torch.Generator().manual_seed(3)
    crops = MultiCrop(count=3).crops(x, [gen])
    views = MultiCrop(count=3).views(x, preprocess, [torch.Generator().manual_seed(3)])
    assert views.shape == (3, 3, 224, 224)
    for crop, view in zip(crops, views):
        assert torch.equal(preprocess(crop)[0], view)
    whole = MultiCrop(count=3).views(x, preprocess, None)
    assert torch.equal(whole, preprocess(x))


def test_one_channel_images_are_repeated_for_rgb_models():
    preprocess = Preprocess(size=(8, 8), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    gray = torch.rand(2, 1, 8, 8)
    assert torch.allclose(preprocess(gray), preprocess(gray.expand(-1, 3, -1, -1)))
