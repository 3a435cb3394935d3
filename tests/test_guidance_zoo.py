"""Classifiers from timm, torchvision, transformers and TorchScript, built from configs and loaded from files."""

from __future__ import annotations

import fsspec
import pytest
import torch

import doodl_ray.fetch
from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.guidance.spec import build_guidance, check_guidance, parse_guidance_config
from tests.tiny_guides import HF_LABELS, HF_MEAN, HF_STD, save_hf_classifier, save_timm, save_torchvision
from tests.tiny_models import save_tiny_classifier

IMAGENET_MEAN = [0.485, 0.456, 0.406]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(doodl_ray.fetch, "DEFAULT_CACHE", tmp_path / "cache")


def load(**fields):
    return build_guidance(parse_guidance_config({"type": "classifier", "crops": {"count": 2}, **fields}))


def check_gradient(guide, target: int) -> None:
    x = torch.rand(1, 3, 48, 48, requires_grad=True)
    loss = guide.loss(x, [target], [torch.Generator().manual_seed(0)])
    loss.sum().backward()
    assert loss.shape == (1,) and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in guide.parameters())


def test_timm_checkpoint_uses_timm_preprocessing(tmp_path):
    labels = ["a", "b", "c", "d", "e"]
    guide = load(model="timm:test_resnet", weights=str(save_timm(tmp_path / "r.safetensors")), labels=labels)
    assert guide.input_size == (160, 160) and guide.num_classes == 5
    assert guide.preprocess.resize == (168, 168) and guide.preprocess.interpolation == "bilinear"  # crop_pct 0.95
    assert guide.preprocess.mean == (0.5,) * 3
    assert guide.validate_target("c") == 2
    check_gradient(guide, 2)


def test_torchvision_checkpoint_uses_torchvision_preprocessing(tmp_path):
    guide = load(model="torchvision:mobilenet_v3_small", weights=str(save_torchvision(tmp_path / "m.pth")), num_classes=4)
    assert guide.input_size == (224, 224) and guide.num_classes == 4
    assert guide.preprocess.resize == (256, 256) and guide.preprocess.mean == tuple(IMAGENET_MEAN)
    assert guide.labels is None  # a checkpoint's classes are not the default weights' categories
    check_gradient(guide, 3)


def test_transformers_folder_labels_and_processor(tmp_path):
    folder = save_hf_classifier(tmp_path / "vit")
    guide = load(model=f"hf:{folder}")
    assert guide.input_size == (24, 24) and guide.labels == HF_LABELS
    x = torch.rand(1, 3, 24, 24)
    by_hand = (x - torch.tensor(HF_MEAN).view(1, 3, 1, 1)) / torch.tensor(HF_STD).view(1, 3, 1, 1)
    assert torch.allclose(guide.preprocess(x), by_hand, atol=1e-5)
    assert guide.validate_target("Blue Jay") == 1 and guide.validate_target(2) == 2
    with pytest.raises(InvalidInput, match="not among"):
        guide.validate_target("ostrich")
    check_gradient(guide, 1)
    fs = fsspec.filesystem("memory")
    fs.put(str(folder), "/hf/vit", recursive=True)
    remote = load(model="hf:memory://hf/vit")
    x = torch.rand(2, 3, 24, 24)
    assert torch.allclose(remote.probabilities(x), guide.probabilities(x), atol=1e-6)


def test_torchscript_with_spec_overrides(tmp_path):
    path = save_tiny_classifier(tmp_path / "c.pt", classes=3, labels=["x", "y", "z"])
    guide = load(model=str(path), mean=(0.2, 0.2, 0.2))
    assert guide.input_size == (16, 16) and guide.labels == ["x", "y", "z"]
    assert guide.preprocess.mean == (0.2,) * 3
    assert guide.preprocess.std == (0.5,) * 3  # from the file's doodl.json
    score = guide.scores(torch.rand(2, 3, 16, 16), [0, 2])["classifier"]
    assert score.shape == (2,) and ((0 < score) & (score < 1)).all()


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"model": "timm:no_such_net"}, ModelLoadError),
        ({"model": "torchvision:no_such_net"}, ModelLoadError),
        ({"model": "timm:test_resnet", "weights": "/missing.safetensors"}, ModelLoadError),
        ({"model": "/missing/classifier.pt"}, ModelLoadError),
        ({"model": "hf:memory://no/such/folder"}, ModelLoadError),
    ],
)
def test_bad_classifier_specs_fail_the_static_check(fields, error):
    with pytest.raises(error):
        check_guidance(parse_guidance_config({"type": "classifier", **fields}))


def test_bad_classifier_specs_fail_at_parse_or_load(tmp_path):
    with pytest.raises(InvalidInput):  # weights for a TorchScript file
        parse_guidance_config({"type": "classifier", "model": "c.pt", "weights": "w.pth"})
    with pytest.raises(InvalidInput):  # labels and class count disagree
        parse_guidance_config({"type": "classifier", "model": "timm:test_resnet", "labels": ["a"], "num_classes": 2})
    with pytest.raises(InvalidInput):  # a new head size on library weights would be a random head
        load(model="timm:test_resnet", num_classes=5)
    with pytest.raises(ModelLoadError):  # checkpoint head (5) and requested head (3) disagree
        load(model="timm:test_resnet", weights=str(save_timm(tmp_path / "r.safetensors")), num_classes=3)


def test_one_channel_torchscript_classifier_through_the_spec(tmp_path):
    """A grayscale TorchScript classifier (its metadata says 1 channel) builds from a spec and scores images."""
    import torch

    from doodl_ray.guidance.spec import build_guidance, parse_guidance_config
    from tests.tiny_models import save_tiny_classifier

    path = save_tiny_classifier(tmp_path / "gray.pt", channels=1, classes=10, size=16)
    guide = build_guidance(parse_guidance_config({"type": "classifier", "model": str(path)}))
    assert guide.num_classes == 10
    assert guide.loss(torch.rand(2, 1, 16, 16), [3, 4], None).shape == (2,)


def test_labels_are_the_models_own_or_the_specs(tmp_path):
    """A 1000-way checkpoint gets no ImageNet names for its class count; `labels: imagenet` names them."""
    weights = str(save_timm(tmp_path / "r1000.safetensors", classes=1000))
    unnamed = load(model="timm:test_resnet", weights=weights)
    assert unnamed.labels is None and unnamed.validate_target(1) == 1
    with pytest.raises(InvalidInput, match="no labels"):
        unnamed.validate_target("goldfish")
    named = load(model="timm:test_resnet", weights=weights, labels="imagenet")
    assert named.validate_target("goldfish") == 1


def test_labels_from_a_bundled_set_or_a_label_file(tmp_path):
    cub = parse_guidance_config({"type": "classifier", "model": "timm:test_resnet", "labels": "cub-200",
                                 "weights": str(save_timm(tmp_path / "cub.safetensors", classes=200))})  # fmt: skip
    assert len(cub.static_labels()) == 200 and cub.static_labels()[0] == "Black-footed Albatross"
    assert build_guidance(cub).validate_target("laysan albatross") == 1
    with pytest.raises(InvalidInput, match="200 labels for 10 classes"):
        parse_guidance_config({"type": "classifier", "model": "timm:test_resnet", "labels": "cub-200", "num_classes": 10})
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    listed = parse_guidance_config({"type": "classifier", "model": "x.pt", "labels": str(tmp_path / "labels.txt")})
    assert listed.static_labels() == ["red", "green", "blue"]
    fsspec.filesystem("memory").pipe("/labels/colours.txt", b"red\ngreen\nblue\n")
    remote = parse_guidance_config({"type": "classifier", "model": "x.pt", "labels": "memory://labels/colours.txt"})
    assert remote.static_labels() is None  # remote storage is not read without the model's own loading
    (tmp_path / "gappy.txt").write_text("red\n\nblue\n")
    for bad, match in (("gappy.txt", "line 2 is empty"), ("cub200", "not a bundled label set")):
        config = parse_guidance_config({"type": "classifier", "model": "timm:test_resnet", "labels": str(tmp_path / bad)})
        with pytest.raises(InvalidInput, match=match):
            check_guidance(config)


def test_transformers_checkpoints_load_in_float32_without_placeholder_labels(tmp_path):
    from transformers import ViTForImageClassification

    folder = save_hf_classifier(tmp_path / "vit")
    model = ViTForImageClassification.from_pretrained(folder)
    model.config.id2label, model.config.label2id = {i: f"LABEL_{i}" for i in range(3)}, {f"LABEL_{i}": i for i in range(3)}
    model.half().save_pretrained(folder)  # a half-precision checkpoint saved without class names
    guide = load(model=f"hf:{folder}")
    assert guide.labels is None and all(p.dtype == torch.float32 for p in guide.parameters())
    check_gradient(guide, 2)
