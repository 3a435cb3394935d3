"""Shared fixtures: tiny real diffusers pipelines and classifiers, saved once per session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.tiny_models import save_tiny_classifier, save_tiny_pixel, save_tiny_sd  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> str:
    return str(save_tiny_sd(tmp_path_factory.mktemp("tiny_sd")))


@pytest.fixture(scope="session")
def tiny_pixel(tmp_path_factory) -> str:
    return str(save_tiny_pixel(tmp_path_factory.mktemp("tiny_pixel")))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> str:
    return str(save_tiny_classifier(tmp_path_factory.mktemp("cls") / "classifier.pt"))
