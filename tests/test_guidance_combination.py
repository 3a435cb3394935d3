"""Weighted combinations, per-term reporting and targets, evaluation rows, and spec round-trips."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter

from doodl_ray.errors import InvalidInput
from doodl_ray.guidance.base import evaluate
from doodl_ray.guidance.combination import CombinationGuidance
from doodl_ray.guidance.spec import GuidanceConfig, build_guidance, parse_guidance_config
from tests.tiny_guides import ARCH_A, TAG, register_tiny_clips, save_aesthetic
from tests.tiny_models import save_tiny_classifier

NO_CROPS = {"count": 0}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guides")
    register_tiny_clips(folder)
    return {
        "classifier": str(save_tiny_classifier(folder / "c.pt", classes=3, labels=["cat", "dog", "owl"])),
        "aesthetic": str(save_aesthetic(folder / "a.pth", bias=5.0)),
    }


def combo_spec(files, clip_weight: float = 2.0) -> dict:
    return {
        "type": "combination",
        "terms": [
            {"name": "clip", "weight": clip_weight, "guidance": {"type": "clip-text", "models": [{"model": ARCH_A, "pretrained": TAG}], "crops": NO_CROPS}},
            {"weight": 0.5, "guidance": {"type": "classifier", "model": files["classifier"], "crops": NO_CROPS}},
            {"weight": 1.0, "guidance": {"type": "aesthetic", "weights": files["aesthetic"], "clip": {"model": ARCH_A, "pretrained": TAG}, "crops": NO_CROPS}},
        ],
    }


def test_weighted_sum_and_terms_by_hand(files):
    x = torch.rand(2, 3, 32, 32)
    guides = {w: build_guidance(parse_guidance_config(combo_spec(files, w))) for w in (2.0, 5.0)}
    targets = [guides[2.0].validate_target({"clip": "an owl", "classifier": "owl"}, "a prompt"),
               guides[2.0].validate_target("dog", "a dog")]  # fmt: skip
    assert targets[0] == {"clip": "an owl", "classifier": 2, "aesthetic": None}
    assert targets[1] == {"clip": "dog", "classifier": 1, "aesthetic": None}  # shared, except by aesthetic
    for weight, guide in guides.items():
        terms = guide.terms(x, targets, None)
        assert set(terms) == {"clip", "classifier", "aesthetic"}
        by_hand = weight * terms["clip"] + 0.5 * terms["classifier"] + 1.0 * terms["aesthetic"]
        assert torch.allclose(guide.loss(x, targets, None), by_hand, atol=1e-5)
    assert not torch.allclose(guides[2.0].loss(x, targets, None), guides[5.0].loss(x, targets, None))
    y = x.clone().requires_grad_(True)
    guides[2.0].loss(y, targets, [torch.Generator().manual_seed(i) for i in range(2)]).sum().backward()
    assert y.grad.abs().sum() > 0


def test_combination_targets_and_specs_are_checked(files):
    guide = build_guidance(parse_guidance_config(combo_spec(files)))
    with pytest.raises(InvalidInput, match="unknown combination terms"):
        guide.validate_target({"clap": "x"})
    with pytest.raises(InvalidInput):  # the classifier term has no target
        guide.validate_target({"clip": "x"})
    with pytest.raises(InvalidInput):
        guide.validate_target({"clip": "x", "classifier": 0, "aesthetic": 7})
    duplicate = combo_spec(files)
    duplicate["terms"][1]["name"] = "clip"
    with pytest.raises(InvalidInput, match="unique"):
        parse_guidance_config(duplicate)
    for weight in (0, -2, float("nan")):
        with pytest.raises(InvalidInput):
            parse_guidance_config(combo_spec(files, weight))
    with pytest.raises(InvalidInput):  # no nesting of combinations
        parse_guidance_config({"type": "combination", "terms": [{"guidance": combo_spec(files)}]})
    with pytest.raises(InvalidInput):
        CombinationGuidance([("a", float("inf"), guide)])


def test_evaluate_rows_with_an_independent_judge(files):
    guide = build_guidance(parse_guidance_config(combo_spec(files)))
    judge = build_guidance(parse_guidance_config({"type": "classifier", "model": files["classifier"], "crops": NO_CROPS}))
    x = torch.rand(2, 3, 32, 32)
    targets = [guide.validate_target("owl", "an owl"), guide.validate_target("cat", "a cat")]
    rows = evaluate(guide, x, targets, prefix="guide/")
    assert [sorted(r) for r in rows] == [["guide/aesthetic", "guide/classifier", "guide/clip"]] * 2
    judged = evaluate(judge, x, [judge.validate_target("owl"), judge.validate_target("cat")], prefix="eval/")
    probabilities = judge.probabilities(x)
    assert judged[0]["eval/classifier"] == pytest.approx(float(probabilities[0, 2]))
    assert judged[1]["eval/classifier"] == pytest.approx(float(probabilities[1, 0]))


def test_every_guidance_type_round_trips(files):
    adapter = TypeAdapter(GuidanceConfig)
    specs = [
        {"type": "clip-text", "models": [{"model": "ViT-L-14-quickgelu", "pretrained": "openai", "weight": 2}], "crops": {"reduction": "min"}},
        {"type": "clip-image", "references": ["s3://bucket/ref.png"]},
        {"type": "aesthetic", "weights": "s3://bucket/aesthetic.safetensors", "target_score": 7.5},
        {"type": "classifier", "model": "hf:some/vit", "labels": ["a", "b"]},
        combo_spec(files),
    ]
    for data in specs:
        config = parse_guidance_config(data)
        assert adapter.validate_json(adapter.dump_json(config)) == config
        assert adapter.validate_python(adapter.dump_python(config, mode="json")) == config
