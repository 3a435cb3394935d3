"""LAION aesthetic predictors (v1 linear, v2 MLP) on a tiny CLIP, loaded from weight files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.guidance.aesthetic import AestheticMLP
from doodl_ray.guidance.spec import build_guidance, check_guidance, parse_guidance_config
from tests.tiny_guides import ARCH_A, TAG, register_tiny_clips, save_aesthetic


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return register_tiny_clips(tmp_path_factory.mktemp("clip"))


class Pickled:
    """Stands for any object a malicious pickle could carry."""


def spec(weights, **extra) -> dict:
    return {"type": "aesthetic", "weights": str(weights), "clip": {"model": ARCH_A, "pretrained": TAG}, "crops": {"count": 0}, **extra}


def test_v1_and_v2_load_from_safetensors_and_plain_state_dicts(clips, tmp_path):
    v1 = build_guidance(parse_guidance_config(spec(save_aesthetic(tmp_path / "v1.pth", "v1"))))
    assert isinstance(v1.head, torch.nn.Linear)
    v2 = build_guidance(parse_guidance_config(spec(save_aesthetic(tmp_path / "v2.safetensors", "v2"))))
    assert isinstance(v2.head, AestheticMLP)
    assert [m.out_features for m in v2.head.layers if isinstance(m, torch.nn.Linear)] == [1024, 128, 64, 16, 1]
    x = torch.rand(2, 3, 32, 32)
    embedding = v2.encoder.embed_images(x)  # normalized CLIP embedding
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(2))
    assert torch.allclose(v2.scores(x, [None, None])["aesthetic"], v2.head(embedding).squeeze(-1), atol=1e-6)
    assert all(not p.requires_grad for p in v2.parameters())


@pytest.mark.parametrize("bias", [25.0, -8.0])  # scores far outside the reference's clamp to [1, 10]
def test_gradient_survives_outside_one_to_ten(clips, tmp_path, bias):
    guide = build_guidance(parse_guidance_config(spec(save_aesthetic(tmp_path / "v2.pth", bias=bias))))
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    score = guide.scores(x.detach(), [None])["aesthetic"]
    assert not 1 <= float(score) <= 10
    guide.loss(x, [None], None).sum().backward()
    assert x.grad.abs().sum() > 0
    assert torch.allclose(guide.loss(x.detach(), [None], None), -score, atol=1e-5)


def test_target_score_loss_is_absolute_error(clips, tmp_path):
    guide = build_guidance(parse_guidance_config(spec(save_aesthetic(tmp_path / "v1.pth", "v1"), target_score=6.5)))
    x = torch.rand(2, 3, 32, 32)
    score = guide.scores(x, [None, None])["aesthetic"]
    assert torch.allclose(guide.loss(x, [None, None], None), (score - 6.5).abs(), atol=1e-6)
    assert guide.validate_target(None, "a prompt") is None
    with pytest.raises(InvalidInput):
        guide.validate_target(7)  # the target score belongs to the spec, not the items


def test_bad_aesthetic_specs(clips, tmp_path):
    with pytest.raises(ModelLoadError):
        check_guidance(parse_guidance_config(spec(tmp_path / "missing.pth")))
    save_file({"other.weight": torch.zeros(1, 32)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ModelLoadError):
        build_guidance(parse_guidance_config(spec(tmp_path / "odd.safetensors")))
    torch.save({"weight": Pickled(), "bias": torch.zeros(1)}, tmp_path / "code.pth")
    with pytest.raises(ModelLoadError):  # weights_only: arbitrary pickled objects are refused, never run
        build_guidance(parse_guidance_config(spec(tmp_path / "code.pth")))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelLoadError):
        build_guidance(parse_guidance_config(spec(tmp_path / "junk.pth")))
    with pytest.raises(ModelLoadError):  # a 768-d predictor on a 32-d CLIP
        build_guidance(parse_guidance_config(spec(save_aesthetic(tmp_path / "wide.pth", dim=768))))
