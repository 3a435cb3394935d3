"""The example job specs in jobs/guidance-*.yaml: valid job specs, one per guidance type, with model
names and tags that open_clip and timm know; and the CLI's --guidance-spec reader."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm

from doodl_ray.errors import InvalidInput, ModelLoadError
from doodl_ray.guidance.clip import check_clip_model
from doodl_ray.guidance.spec import (
    ClassifierGuidanceConfig,
    CombinationGuidanceConfig,
    check_guidance,
    load_guidance_spec,
    parse_guidance_config,
)
from doodl_ray.jobs.spec import load_spec

EXAMPLES = sorted((Path(__file__).parent.parent / "jobs").glob("guidance-*.yaml"))


def leaves(config):
    return [t.guidance for t in config.terms] if isinstance(config, CombinationGuidanceConfig) else [config]


def test_one_example_per_guidance_type():
    types = {load_spec(path).guidance.type for path in EXAMPLES}
    assert types == {"clip-text", "clip-image", "aesthetic", "classifier", "combination"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_names_resolve_offline(path):
    guidance = load_spec(path).guidance
    assert load_guidance_spec(path) == guidance  # the same file serves --guidance-spec
    for leaf in leaves(guidance):
        for clip in list(getattr(leaf, "models", [])) + [getattr(leaf, "clip", None)]:
            if clip is not None:
                check_clip_model(clip)  # known architecture, known tag, matching QuickGELU
        if isinstance(leaf, ClassifierGuidanceConfig) and leaf.model.startswith("timm:"):
            assert timm.is_model(leaf.model.removeprefix("timm:"))


def test_guidance_spec_file_errors(tmp_path):
    bare = tmp_path / "g.yaml"
    bare.write_text("type: classifier\nmodel: timm:test_resnet\n")
    assert load_guidance_spec(bare).model == "timm:test_resnet"
    bare.write_text("type: clip-text\nmodels: [{model: ViT-B-32, pretrained: openai, weight: 0}]\n")
    with pytest.raises(InvalidInput, match="weight"):
        load_guidance_spec(bare)
    with pytest.raises(InvalidInput):
        load_guidance_spec(tmp_path / "missing.yaml")


def test_only_classifier_targets_need_the_model_to_validate():
    from doodl_ray.guidance.spec import parse_guidance_config

    clip = {"type": "clip-text", "models": [{"model": "ViT-B-32", "pretrained": "openai"}]}
    classifier = {"type": "classifier", "model": "timm:resnet18", "num_classes": 10, "weights": "w.safetensors"}
    assert not parse_guidance_config(clip).needs_model_to_validate()
    assert parse_guidance_config(classifier).needs_model_to_validate()
    mixed = {"type": "combination", "terms": [{"weight": 1, "guidance": clip}, {"weight": 1, "guidance": classifier}]}
    assert parse_guidance_config(mixed).needs_model_to_validate()


HUB_CLIP = "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


def remote_everything() -> dict:
    """One spec that names every kind of remote reference: hub repos and ids, s3:// files and folders."""
    clip_file = {"model": "ViT-B-32", "pretrained": "s3://b/vit-b-32.safetensors", "tag": "laion2b_s34b_b79k"}
    return {"type": "combination", "terms": [
        {"name": "clip", "guidance": {"type": "clip-text", "models": [{"model": HUB_CLIP}, clip_file]}},
        {"name": "ref", "guidance": {"type": "clip-image", "models": [{"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}],
                                     "references": ["s3://b/style.png"]}},
        {"name": "birds", "guidance": {"type": "classifier", "model": "hf:org/vit-cub", "labels": "s3://b/cub.txt"}},
        {"name": "timm", "guidance": {"type": "classifier", "model": "timm:hf-hub:timm/resnet50.a1_in1k"}},
        {"name": "scripted", "guidance": {"type": "classifier", "model": "s3://b/digits.pt2"}},
        {"name": "folder", "guidance": {"type": "classifier", "model": "hf:s3://b/vit/"}},
        {"name": "aesthetic", "guidance": {"type": "aesthetic", "weights": "s3://b/aesthetic.safetensors"}},
    ]}  # fmt: skip


def test_offline_checks_run_everything_local_and_list_what_they_skip():
    skipped = check_guidance(parse_guidance_config(remote_everything()), image_shape=(3, 64, 64), offline=True)
    assert len(skipped) == 9 and all("\n" not in line for line in skipped)
    assert sum("(model hub)" in line for line in skipped) == 3 and sum("(remote storage)" in line for line in skipped) == 6
    assert any(HUB_CLIP in line for line in skipped) and any("s3://b/digits.pt2" in line for line in skipped)
    local_problems = [
        ({"type": "clip-text", "models": [{"model": "ViT-B-32", "pretrained": "s3://b/ckpt.safetensors"}]}, InvalidInput),  # no tag
        ({"type": "clip-text", "models": [{"model": "ViT-B-32", "pretrained": "openai"}]}, InvalidInput),  # QuickGELU
        ({"type": "classifier", "model": "/no/such/classifier.pt"}, ModelLoadError),
        ({"type": "classifier", "model": "timm:no_such_net", "labels": "s3://b/labels.txt"}, ModelLoadError),
        ({"type": "clip-text", "models": [{"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}]}, None),
    ]
    for data, error in local_problems:
        if error is None:
            assert check_guidance(parse_guidance_config(data), offline=True) == []
            continue
        with pytest.raises(error):
            check_guidance(parse_guidance_config(data), offline=True)


@pytest.mark.parametrize("data", [
    {"type": "clip-text", "models": [{"model": HUB_CLIP}]},
    {"type": "classifier", "model": "timm:hf-hub:timm/resnet50.a1_in1k"},
    {"type": "classifier", "model": "hf:google/vit-base-patch16-224"},
], ids=["open_clip", "timm", "transformers"])  # fmt: skip
def test_hub_lookups_without_a_hub_fail_in_one_line(data):
    """HF_HUB_OFFLINE=1 here: a hub config lookup is one ModelLoadError line, not an uncaught FileNotFoundError."""
    with pytest.raises(ModelLoadError, match="on the model hub") as exc:
        check_guidance(parse_guidance_config(data))
    assert "\n" not in str(exc.value) and not isinstance(exc.value, FileNotFoundError)


def test_image_shapes_guides_cannot_take_are_rejected():
    clip = parse_guidance_config({"type": "clip-text", "models": [{"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}]})
    assert check_guidance(clip, image_shape=(1, 28, 28)) == []  # grayscale is repeated to RGB, as PIL does
    for shape in [(4, 64, 64), (3, 64)]:
        with pytest.raises(InvalidInput):
            check_guidance(clip, image_shape=shape)
