"""The example job specs in jobs/guidance-*.yaml: valid job specs, one per guidance type, with model
names and tags that open_clip and timm know; and the CLI's --guidance-spec reader."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm

from doodl_ray.errors import InvalidInput
from doodl_ray.guidance.clip import check_clip_model
from doodl_ray.guidance.spec import ClassifierGuidanceConfig, CombinationGuidanceConfig, load_guidance_spec
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
    from doodl_ray.guidance.spec import needs_model_to_validate, parse_guidance_config

    clip = {"type": "clip-text", "models": [{"model": "ViT-B-32", "pretrained": "openai"}]}
    classifier = {"type": "classifier", "model": "timm:resnet18", "num_classes": 10, "weights": "w.safetensors"}
    assert not needs_model_to_validate(parse_guidance_config(clip))
    assert needs_model_to_validate(parse_guidance_config(classifier))
    mixed = {"type": "combination", "terms": [{"weight": 1, "guidance": clip}, {"weight": 1, "guidance": classifier}]}
    assert needs_model_to_validate(parse_guidance_config(mixed))
