"""CLIP text and image guidance on tiny open_clip models registered from configs."""

from __future__ import annotations

import math

import fsspec
import pytest
import torch

import doodl_ray.fetch
from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.guidance.clip import ClipImageGuidance, ClipTextGuidance, load_clip, spherical_distance
from doodl_ray.guidance.crops import MultiCrop
from doodl_ray.guidance.spec import ClipModelConfig, build_guidance, check_guidance, parse_guidance_config
from tests.tiny_guides import ARCH_A, ARCH_B, TAG, TAG_MEAN, TAG_STD, png_bytes, register_tiny_clips, save_clip_folder

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return register_tiny_clips(tmp_path_factory.mktemp("clip"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(doodl_ray.fetch, "DEFAULT_CACHE", tmp_path / "cache")


def images(batch: int = 2, size: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_spherical_distance_values():
    a = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(spherical_distance(a, b), torch.tensor([0.0, 2 * (math.pi / 4) ** 2]))


def test_each_model_keeps_its_own_preprocessing(clips, tmp_path):
    tagged = load_clip(ClipModelConfig(model=ARCH_A, pretrained=TAG))
    assert tagged.input_size == (32, 32) and tagged.preprocess.rule == "shortest"
    assert tagged.preprocess.mean == TAG_MEAN and tagged.preprocess.std == TAG_STD
    file_named = load_clip(ClipModelConfig(model=ARCH_A, pretrained=str(clips[ARCH_A]), tag=TAG))
    assert file_named.preprocess == tagged.preprocess  # a checkpoint file that names its tag gets the tag's transform
    with pytest.raises(InvalidInput, match="does not say how it was trained"):  # never OpenAI's constants by default
        load_clip(ClipModelConfig(model=ARCH_B, pretrained=str(clips[ARCH_B])))
    from_file = load_clip(ClipModelConfig(model=ARCH_B, pretrained=str(clips[ARCH_B]), mean=OPENAI_MEAN, std=(2, 2, 2),
                                          resize_mode="squash"))  # fmt: skip
    assert from_file.input_size == (24, 24) and from_file.preprocess.rule == "squash"
    assert from_file.preprocess.mean == OPENAI_MEAN and from_file.preprocess.std == (2.0,) * 3
    folder = save_clip_folder(tmp_path / "folder", clips[ARCH_A], mean=(0.3, 0.3, 0.3), std=(0.6, 0.6, 0.6))
    from_folder = load_clip(ClipModelConfig(model=str(folder)))
    assert from_folder.preprocess.mean == (0.3,) * 3
    # the folder holds the tagged checkpoint: same weights, so the same text embedding
    assert torch.allclose(from_folder.embed_texts(["a bird"]), tagged.embed_texts(["a bird"]), atol=1e-6)
    assert all(not p.requires_grad for p in tagged.parameters())


def test_checkpoint_and_folder_from_uri(clips, tmp_path):
    fs = fsspec.filesystem("memory")
    fs.pipe("/ckpt/tiny-b.safetensors", clips[ARCH_B].read_bytes())
    remote = load_clip(ClipModelConfig(model=ARCH_B, pretrained="memory://ckpt/tiny-b.safetensors", mean=TAG_MEAN, std=TAG_STD))
    local = load_clip(ClipModelConfig(model=ARCH_B, pretrained=str(clips[ARCH_B]), mean=TAG_MEAN, std=TAG_STD))
    assert torch.equal(remote.embed_texts(["x"]), local.embed_texts(["x"]))
    folder = save_clip_folder(tmp_path / "f", clips[ARCH_A], mean=(0.3,) * 3, std=(0.6,) * 3)
    fs.put(str(folder), "/models/clipfolder", recursive=True)
    encoder = load_clip(ClipModelConfig(model="memory://models/clipfolder"))
    assert encoder.preprocess.mean == (0.3,) * 3


def test_text_loss_is_the_weighted_mean_computed_by_hand(clips):
    encoders = [load_clip(ClipModelConfig(model=ARCH_A, pretrained=TAG)),
                load_clip(ClipModelConfig(model=ARCH_B, pretrained=str(clips[ARCH_B]), mean=TAG_MEAN, std=TAG_STD))]  # fmt: skip
    x = images()
    targets = ["a red bird", "a blue bird"]
    per_model = []
    for encoder in encoders:
        e = encoder.embed_images(x)  # the whole frame through each model's own transform
        per_model.append(spherical_distance(e, encoder.embed_texts(targets)))
    for weights in ([1.0, 1.0], [1.0, 3.0]):
        guide = ClipTextGuidance(encoders, weights, MultiCrop(count=0))
        by_hand = (weights[0] * per_model[0] + weights[1] * per_model[1]) / sum(weights)
        assert torch.allclose(guide.loss(x, targets, None), by_hand, atol=1e-5)
    assert not torch.allclose(per_model[0], per_model[1])  # so the weights matter


def test_text_guide_crops_gradient_cache_and_targets(clips, monkeypatch):
    guide = build_guidance(parse_guidance_config({
        "type": "clip-text", "models": [{"model": ARCH_A, "pretrained": TAG}], "crops": {"count": 4, "reduction": "min"},
    }))  # fmt: skip
    assert guide.validate_target(None, "a photo of a dog") == "a photo of a dog"
    assert guide.validate_target("a bird", "a photo of a dog") == "a bird"  # guidance text differs from the prompt
    with pytest.raises(InvalidInput):
        guide.validate_target(None, None)
    calls = []
    original = ClipTextGuidance.embed_target
    monkeypatch.setattr(ClipTextGuidance, "embed_target", lambda self, t: calls.append(t) or original(self, t))
    x = images(size=32).requires_grad_(True)  # the image is exactly the model's input size: crops must still differ
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    views = guide.crops.views(x, guide.encoders[0].preprocess, [torch.Generator().manual_seed(0)] * 2)
    assert views.shape == (8, 3, 32, 32) and not torch.allclose(views[0], views[1])
    loss = guide.loss(x, ["a bird", "a bird"], gens)
    loss.sum().backward()
    assert x.grad.abs().sum() > 0
    guide.loss(x.detach(), ["a bird", "a bird"], gens)
    assert calls == ["a bird"]  # one embedding per distinct target, across items and iterations
    mean_guide = ClipTextGuidance(list(guide.encoders), [1.0], MultiCrop(count=4, reduction="mean"))
    seeded = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    assert (guide.loss(x.detach(), ["a", "b"], seeded()) <= mean_guide.loss(x.detach(), ["a", "b"], seeded()) + 1e-6).all()
    score = guide.scores(x.detach(), ["a", "b"])["clip-text"]
    assert score.shape == (2,) and (score.abs() <= 1).all()


def test_image_guidance_targets_the_normalized_mean_embedding(clips, tmp_path):
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255), size=(20, 50))
    (tmp_path / "red.png").write_bytes(red)
    fsspec.filesystem("memory").pipe("/refs/blue.png", blue)
    guide = build_guidance(parse_guidance_config({
        "type": "clip-image", "models": [{"model": ARCH_A, "pretrained": TAG}], "references": [str(tmp_path / "red.png")],
        "crops": {"count": 0},
    }))  # fmt: skip
    assert guide.validate_target(None) == (red,)
    pair = guide.validate_target([str(tmp_path / "red.png"), "memory://refs/blue.png"])
    assert pair == (red, blue)
    assert guide.validate_target({"bytes": blue, "path": None}) == (blue,)  # a Parquet image struct
    encoder = guide.encoders[0]
    singles = [guide.embed_target((data,))[0] for data in (red, blue)]
    expected = torch.nn.functional.normalize(singles[0] + singles[1], dim=-1)
    assert torch.allclose(guide.embed_target(pair)[0], expected, atol=1e-6)
    x = images(size=32)
    by_hand = spherical_distance(encoder.embed_images(x), expected.expand(2, -1))
    assert torch.allclose(guide.loss(x, [pair, pair], None), by_hand, atol=1e-5)


def test_image_guidance_rejects_unreadable_references(clips, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    guide = ClipImageGuidance([load_clip(ClipModelConfig(model=ARCH_A, pretrained=TAG))], [1.0], MultiCrop(count=0))
    for bad in (str(tmp_path / "bad.png"), str(tmp_path / "missing.png"), b"\x89PNG garbage", [], 3, None):
        with pytest.raises(InvalidInput):
            guide.validate_target(bad)
    spec = parse_guidance_config({"type": "clip-image", "models": [{"model": ARCH_A, "pretrained": TAG}], "references": ["memory://nope.png"]})
    with pytest.raises(InvalidInput):
        check_guidance(spec)


@pytest.mark.parametrize(
    "model, error",
    [
        ({"model": "ViT-Nope-99", "pretrained": "openai"}, ModelLoadError),  # unknown architecture
        ({"model": ARCH_A, "pretrained": "/no/such/weights.safetensors"}, ModelLoadError),  # missing file
        ({"model": "ViT-H-14", "pretrained": "not-a-tag"}, ModelLoadError),  # unknown tag
        ({"model": "ViT-L-14", "pretrained": "openai"}, InvalidInput),  # OpenAI weights need the QuickGELU arch
        ({"model": ARCH_A}, InvalidInput),  # a random CLIP is no guide
        ({"model": "memory://no/folder"}, ModelLoadError),
    ],
)
def test_bad_clip_specs_fail_the_static_check(clips, model, error):
    with pytest.raises(error):
        check_guidance(parse_guidance_config({"type": "clip-text", "models": [model]}))


def test_bad_clip_weights_fail_validation():
    for weight in (0, -1, float("inf"), float("nan")):
        with pytest.raises(InvalidInput):
            parse_guidance_config({"type": "clip-text", "models": [{"model": ARCH_A, "pretrained": TAG, "weight": weight}]})
    with pytest.raises(InvalidInput):
        parse_guidance_config({"type": "clip-text", "models": []})
