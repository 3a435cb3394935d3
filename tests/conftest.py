"""Shared fixtures: tiny real diffusers pipelines and classifiers, saved once per session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.tiny_models import (  # noqa: E402
    save_tiny_classifier,
    save_tiny_family,
    save_tiny_pixel,
    save_tiny_pixel_flow,
    save_tiny_sd,
)

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> str:
    return str(save_tiny_sd(tmp_path_factory.mktemp("tiny_sd")))


@pytest.fixture(scope="session")
def tiny_pixel(tmp_path_factory) -> str:
    return str(save_tiny_pixel(tmp_path_factory.mktemp("tiny_pixel")))


@pytest.fixture(scope="session")
def tiny_pixel_flow(tmp_path_factory) -> str:
    return str(save_tiny_pixel_flow(tmp_path_factory.mktemp("tiny_pixel_flow"), shift=3.0))


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """A function: family ("sdxl", "sd3", "flux") -> the folder of its tiny pipeline, saved once per session."""
    folders: dict[str, str] = {}

    def folder(family: str) -> str:
        if family not in folders:
            folders[family] = str(save_tiny_family(tmp_path_factory.mktemp(f"tiny_{family}"), family))
        return folders[family]

    return folder


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> str:
    return str(save_tiny_classifier(tmp_path_factory.mktemp("cls") / "classifier.pt"))
