"""The digits model set: toy-size training writes loadable files, and the shipped assets reproduce
their recorded metrics on the fixed test split."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DModel

from doodl_ray.digits import ASSETS_DIR, diffusion
from doodl_ray.digits.data import RARE_CLASSES, RARE_KEEP, load_split, nearest_train_distance, rare_subset
from doodl_ray.digits.train import main
from doodl_ray.guidance.classifier import load_torchscript_classifier


@pytest.fixture(scope="module")
def split():
    return load_split()


def test_split_is_fixed_16x16_unit_range(split):
    train_x, train_y, test_x, test_y = split
    assert train_x.shape == (1437, 1, 16, 16) and test_x.shape == (360, 1, 16, 16)
    assert 0.0 <= float(train_x.min()) and float(train_x.max()) <= 1.0
    assert torch.bincount(test_y).min() >= 35  # stratified
    assert torch.equal(load_split()[3], test_y)


def test_rare_subset_keeps_a_handful_of_each_rare_class(split):
    train_x, train_y, _, _ = split
    x, y = rare_subset(train_x, train_y)
    counts = torch.bincount(y, minlength=10)
    for c in range(10):
        expected = RARE_KEEP if c in RARE_CLASSES else int((train_y == c).sum())
        assert counts[c] == expected
    assert torch.equal(rare_subset(train_x, train_y)[0], x)


def test_nearest_train_distance_is_zero_on_training_images(split):
    train_x = split[0]
    d = nearest_train_distance(train_x[:5], train_x)
    assert d.shape == (5,) and float(d.max()) < 1e-3
    assert float(nearest_train_distance(1.0 - train_x[:5], train_x).min()) > 1.0


def test_toy_training_writes_loadable_models(tmp_path):
    main(["--out", str(tmp_path), "--toy", "--seed", "0"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("balanced", "rare"):
        pipe = DiffusionPipeline.from_pretrained(str(tmp_path / name), use_safetensors=True)
        assert isinstance(pipe.unet, UNet2DModel) and pipe.unet.config.sample_size == 16
        assert pipe.unet.dtype == torch.float32
        assert pipe.scheduler.config.prediction_type == "epsilon" and not pipe.scheduler.config.clip_sample
        assert {"train_loss", "test_eps_mse", "seconds", "samples"} <= set(metrics[name])
        assert sum(metrics[name]["samples"]["judge_histogram"]) == metrics["settings"]["check_samples"]
    assert metrics["rare"]["train_images"] < metrics["balanced"]["train_images"]
    for name in ("guide", "judge"):
        guide = load_torchscript_classifier(str(tmp_path / f"{name}.pt"))
        assert guide.num_classes == 10 and guide.input_size == (16, 16) and guide.labels[3] == "3"
        assert 0.0 <= metrics[name]["test_accuracy"] <= 1.0
    assert metrics["total_seconds"] > 0 and metrics["data"]["rare_classes"] == list(RARE_CLASSES)


def test_shipped_classifiers_reproduce_recorded_accuracy(split):
    _, _, test_x, test_y = split
    metrics = json.loads((ASSETS_DIR / "metrics.json").read_text())
    for name in ("guide", "judge"):
        classifier = load_torchscript_classifier(str(ASSETS_DIR / f"{name}.pt"))
        accuracy = (classifier.probabilities(test_x).argmax(1) == test_y).float().mean().item()
        assert accuracy == pytest.approx(metrics[name]["test_accuracy"], abs=1.5 / len(test_y))
        assert accuracy >= 0.95


def test_shipped_diffusion_models_reproduce_recorded_fit(split):
    test_x = split[2]
    metrics = json.loads((ASSETS_DIR / "metrics.json").read_text())
    for name in ("balanced", "rare"):
        pipe = DiffusionPipeline.from_pretrained(str(ASSETS_DIR / name), use_safetensors=True)
        mse = diffusion.eps_mse(pipe.unet, test_x, metrics["seed"])
        assert mse == pytest.approx(metrics[name]["test_eps_mse"], abs=1e-4)
