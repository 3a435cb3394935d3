"""The robust guide: PGD stays in its ball and finds worse inputs, training writes a loadable classifier, and the
shipped file is robust where the standard guide is not (same attack, same test digits)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from doodl_ray.digits import ASSETS_DIR
from doodl_ray.digits.classifiers import normalize
from doodl_ray.digits.data import load_split
from doodl_ray.digits.robust import attacked_accuracy, l2_pgd, main
from doodl_ray.guidance.classifier import load_torchscript_classifier


@pytest.fixture(scope="module")
def test_split():
    _, _, test_x, test_y = load_split()
    return test_x, test_y


def _load(name):
    return torch.jit.load(str(ASSETS_DIR / name)).eval()


def test_pgd_stays_in_the_ball_and_the_box_and_raises_the_loss(test_split):
    images, labels = test_split[0][:64], test_split[1][:64]
    model = _load("guide.pt")
    attacked = l2_pgd(model, images, labels, 0.5, 10, torch.Generator().manual_seed(0))
    assert (attacked - images).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert attacked.min() >= 0 and attacked.max() <= 1
    with torch.no_grad():
        clean = F.cross_entropy(model(normalize(images)), labels, reduction="none")
        worse = F.cross_entropy(model(normalize(attacked)), labels, reduction="none")
    assert (worse >= clean - 1e-5).all() and worse.mean() > 10 * clean.mean()


def test_one_epoch_writes_a_loadable_guide(tmp_path, capsys):
    main(["--out", str(tmp_path / "g.pt"), "--eps", "0.5", "--epochs", "1"])
    metrics = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "metrics.json").read_text())["guide_robust"] == {"file": "g.pt", **metrics}
    guide = load_torchscript_classifier(str(tmp_path / "g.pt"))
    assert guide.num_classes == 10 and guide.input_size == (16, 16)
    assert metrics["pgd"] == {"norm": "l2", "eps": 0.5, "steps": 5} and 0 <= metrics["test_accuracy_pgd10"] <= 1


def test_shipped_robust_guide_reproduces_its_accuracy_and_is_robust(test_split):
    images, labels = test_split
    recorded = json.loads((ASSETS_DIR / "metrics.json").read_text())["guide_robust"]
    eps = recorded["pgd"]["eps"]
    clean = load_torchscript_classifier(str(ASSETS_DIR / "guide-robust.pt")).probabilities(images).argmax(1)
    assert (clean == labels).float().mean().item() == pytest.approx(recorded["test_accuracy"], abs=1.5 / len(labels))
    robust = attacked_accuracy(_load("guide-robust.pt"), images, labels, eps)
    standard = attacked_accuracy(_load("guide.pt"), images, labels, eps)
    assert robust == pytest.approx(recorded["test_accuracy_pgd10"], abs=1.5 / len(labels))
    assert robust > standard + 0.3
