"""Classifier files made the way users make them: a plain `torch.jit.save` with no metadata (its input from the
diffusion model's image shape), torch.export `.pt2` programs, and one-line errors for inputs that do not fit."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from torch import nn

from doodl_ray.errors import ModelLoadError
from doodl_ray.guidance.classifier import load_torchscript_classifier
from doodl_ray.guidance.spec import build_guidance, check_guidance, parse_guidance_config
from tests.tiny_models import TinyClassifier


class FlatDigits(nn.Module):
    """A 1-channel 16x16 classifier whose linear layer fixes its input size (no pooling to hide a misfit)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> str:
    """A half-precision TorchScript file saved with plain torch.jit.save: no doodl.json, no extra files."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("plain") / "digits.pt"
    torch.jit.save(torch.jit.script(FlatDigits().half().eval()), str(path))
    return str(path)


def spec(model: str, **fields):
    return parse_guidance_config({"type": "classifier", "model": model, "crops": {"count": 2}, **fields})


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "code/__torch__" not in message and "Traceback" not in message, message
    return message


def test_plain_torchscript_takes_the_image_shape(plain):
    guide = build_guidance(spec(plain), image_shape=(1, 16, 16))
    assert guide.num_classes == 10 and guide.input_size == (16, 16) and guide.preprocess.channels == 1
    assert all(p.dtype == torch.float32 for p in guide.parameters())  # a half-precision file guides in fp32
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    loss = guide.loss(x, [3, 7], [torch.Generator().manual_seed(i) for i in range(2)])
    loss.sum().backward()
    assert loss.shape == (2,) and torch.isfinite(loss).all() and x.grad.abs().sum() > 0
    check_guidance(spec(plain), image_shape=(1, 16, 16))


def test_without_metadata_or_image_shape_the_probe_fails_in_one_line(plain):
    with pytest.raises(ModelLoadError) as exc:
        build_guidance(spec(plain))
    message = one_line(exc)
    assert "3x32x32" in message and "no doodl.json and no image shape" in message
    assert "expected input[1, 3, 32, 32] to have 1 channels" in message  # the error itself, not the program


@pytest.mark.parametrize("shape, error", [((1, 32, 32), "mat1 and mat2"), ((3, 16, 16), "to have 1 channels")])
def test_a_classifier_that_does_not_fit_the_image_shape_fails_in_one_line(plain, shape, error):
    for attempt in (lambda: check_guidance(spec(plain), image_shape=shape), lambda: build_guidance(spec(plain), image_shape=shape)):
        with pytest.raises(ModelLoadError) as exc:
            attempt()
        message = one_line(exc)
        assert "x".join(map(str, shape)) in message and error in message


def test_metadata_wins_over_the_image_shape_field_by_field(tmp_path):
    """doodl.json's input_size is kept; the channel count it does not state comes from the image shape."""
    path = tmp_path / "gray.pt"
    torch.jit.save(torch.jit.script(TinyClassifier(1, 4)), str(path), _extra_files={"doodl.json": json.dumps({"input_size": [8, 8]})})
    guide = load_torchscript_classifier(str(path), image_shape=(1, 16, 16))
    assert guide.input_size == (8, 8) and guide.preprocess.channels == 1
    assert guide.logits(torch.rand(3, 1, 16, 16)).shape == (3, 4)


def export(module: nn.Module, path, batch: int | None, meta: dict | None = None) -> str:
    example = (torch.zeros(2 if batch is None else batch, 1, 16, 16),)
    dynamic = ({0: torch.export.Dim("batch")},) if batch is None else None
    program = torch.export.export(module.eval(), example, dynamic_shapes=dynamic)
    torch.export.save(program, str(path), extra_files={"doodl.json": json.dumps(meta)} if meta else None)
    return str(path)


def test_torch_export_program_matches_its_eager_module(tmp_path):
    torch.manual_seed(1)
    eager = FlatDigits().eval()
    meta = {"mean": [0.5], "std": [0.25], "labels": [str(i) for i in range(10)]}
    guide = build_guidance(spec(export(eager, tmp_path / "digits.pt2", None, meta)), image_shape=(1, 16, 16))
    assert guide.num_classes == 10 and guide.labels[3] == "3" and guide.preprocess.mean == (0.5,)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(guide.logits(x), eager((x - 0.5) / 0.25), atol=1e-5)
    y = x.clone().requires_grad_(True)
    guide.loss(y, [1, 2, 3], [torch.Generator().manual_seed(i) for i in range(3)]).sum().backward()
    assert y.grad.abs().sum() > 0


def test_a_fixed_batch_program_gives_its_own_input_shape_and_runs_any_batch(tmp_path):
    """Exported with batch 1 and no metadata: channels and size come from the program; batches run in chunks."""
    torch.manual_seed(2)
    eager = FlatDigits().eval()
    guide = load_torchscript_classifier(export(eager, tmp_path / "fixed.pt2", 1))
    assert guide.input_size == (16, 16) and guide.preprocess.channels == 1
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(guide.logits(x), eager(x), atol=1e-5)
    assert guide.logits(x, [torch.Generator().manual_seed(i) for i in range(5)]).shape == (5 * guide.crops.count, 10)


def test_a_pt2_archive_with_pickled_or_compiled_parts_is_refused(tmp_path):
    path = export(FlatDigits(), tmp_path / "evil.pt2", None)
    with zipfile.ZipFile(path, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/data/constants/opaque_obj_0", b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(ModelLoadError, match="refusing") as exc:
        load_torchscript_classifier(path)
    one_line(exc)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="not a torch.export program"):
        load_torchscript_classifier(str(tmp_path / "junk.pt2"))


def test_a_remote_classifier_file_is_probed_by_the_check(plain, tmp_path, monkeypatch):
    import fsspec

    import doodl_ray.fetch

    monkeypatch.setattr(doodl_ray.fetch, "DEFAULT_CACHE", tmp_path / "cache")
    fsspec.filesystem("memory").pipe("/models/digits.pt", open(plain, "rb").read())
    remote = spec("memory://models/digits.pt")
    assert check_guidance(remote, image_shape=(1, 16, 16)) == []
    with pytest.raises(ModelLoadError, match="1x32x32"):
        check_guidance(remote, image_shape=(1, 32, 32))
    assert check_guidance(remote, image_shape=(1, 32, 32), offline=True) == ["classifier file memory://models/digits.pt (remote storage)"]
