"""Provenance records: what pins a model's or guide's contents (local files, an S3 folder's listing, the hub
cache's commit, offline) and what tells two setups apart. No Ray; S3 is moto's server over HTTP."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from doodl_ray.guidance.spec import parse_guidance_config
from doodl_ray.jobs.spec import parse_spec
from doodl_ray.provenance import describe, fingerprint, guidance_identity, identity
from tests.s3_server import s3_endpoint  # noqa: F401
from tests.tiny_models import save_tiny_classifier, save_tiny_pixel


@pytest.fixture(scope="module")
def pixel(tmp_path_factory) -> Path:
    return save_tiny_pixel(tmp_path_factory.mktemp("pixel") / "model")


def test_local_folder_is_pinned_by_its_files_contents(pixel: Path, tmp_path: Path):
    copy = Path(shutil.copytree(pixel, tmp_path / "copy"))
    (copy / ".complete").touch()  # a cache marker is not part of the model
    assert identity(str(copy))["sha256"] == identity(str(pixel))["sha256"]
    weights = next(copy.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert identity(str(copy))["sha256"] != identity(str(pixel))["sha256"]
    assert identity(str(weights)) == {"ref": str(weights), "sha256": hashlib.sha256(data).hexdigest()}


def test_s3_folder_is_pinned_by_its_listing(pixel: Path, s3_endpoint):
    fs, bucket = s3_endpoint.fs(), s3_endpoint.bucket()
    fs.put(str(pixel), f"{bucket}/a", recursive=True)
    fs.put(str(pixel), f"{bucket}/b", recursive=True)
    options = {"endpoint_url": s3_endpoint.url}
    a, b = identity(f"s3://{bucket}/a", options), identity(f"s3://{bucket}/b", options)
    assert a["sha256"] == b["sha256"] and a["ref"] == f"s3://{bucket}/a"
    fs.pipe_file(f"{bucket}/b/unet/config.json", b"{}")
    assert identity(f"s3://{bucket}/b", options)["sha256"] != a["sha256"]


def test_hub_id_is_pinned_by_the_cached_commit_offline(tmp_path: Path, monkeypatch):
    """The hub cache's documented layout: refs/main names the snapshot folder of the resolved commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--tiny"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert identity("org/tiny") == {"ref": "org/tiny", "revision": commit}
    assert identity("hf:org/tiny")["revision"] == commit
    assert identity("org/not-cached") == {"ref": "org/not-cached"}
    assert identity("timm:resnet50") == {"ref": "timm:resnet50"}  # a library name: the spec hash covers it


def test_guidance_identity_covers_every_file_its_spec_names(tmp_path: Path):
    guide = save_tiny_classifier(tmp_path / "guide.pt", channels=1, classes=10)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(i) for i in range(10)))
    config = parse_guidance_config({"type": "combination", "terms": [
        {"name": "cls", "guidance": {"type": "classifier", "model": str(guide), "labels": str(labels)}},
        {"name": "zoo", "guidance": {"type": "classifier", "model": "timm:resnet18", "labels": ["a", "b"]}},
    ]})
    found = guidance_identity(config)
    assert found["files"] == [{"ref": str(guide), "sha256": hashlib.sha256(guide.read_bytes()).hexdigest()},
                              {"ref": str(labels), "sha256": hashlib.sha256(labels.read_bytes()).hexdigest()}]
    other = parse_guidance_config({**config.model_dump(), "terms": [config.terms[0].model_dump()]})
    assert guidance_identity(other)["spec_sha256"] != found["spec_sha256"]


def test_setups_that_differ_in_anything_that_decides_results_have_different_fingerprints(pixel: Path):
    base = {"run_id": "p", "model": str(pixel), "input": {"uri": "x"}, "output": {"uri": "y"},
            "method": {"name": "none", "sampler": {"steps": 4}}}
    setup = describe(parse_spec(base), "cpu", "torch.float32")
    assert setup["runtime"]["device"] == "cpu" and setup["runtime"]["dtype"] == "float32"
    assert setup["method"] == {"name": "none", "settings_sha256": setup["method"]["settings_sha256"]}
    moved = describe(parse_spec({**base, "output": {"uri": "elsewhere"}, "seed": 9}), "cpu", "torch.float32")
    assert fingerprint(moved) == fingerprint(setup)  # where results go and item seeds are per row, not setup
    steps = describe(parse_spec({**base, "method": {"name": "none", "sampler": {"steps": 5}}}), "cpu", "torch.float32")
    half = describe(parse_spec(base), "cpu", "torch.bfloat16")
    assert len({fingerprint(setup), fingerprint(steps), fingerprint(half)}) == 3
