"""Plugins from outside the package, each defined in this file and registered here, nothing else edited: a
guidance type (how bright an image is), a generation method (the lowest loss of a few plain samples, with a
settings block of its own) and an output format (a zip per shard), run end to end through a small job on local
Ray; the run's images read back through the ledger as any format's do."""

from __future__ import annotations

import io
import zipfile
from typing import IO, Any, Literal, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import Field
from torch import Tensor

from doodl_ray.config import StrictModel
from doodl_ray.digits import ASSETS_DIR
from doodl_ray.errors import InvalidInput
from doodl_ray.guidance.base import Guidance
from doodl_ray.guidance.checks import Checks, ImageShape
from doodl_ray.guidance.registry import GuidanceSpec, register_guidance
from doodl_ray.jobs import run_job
from doodl_ray.jobs.formats import KINDS, Matched, PackedFormat, Samples, register_format
from doodl_ray.jobs.ledger import Ledger
from doodl_ray.jobs.spec import parse_spec
from doodl_ray.jobs.storage import Storage
from doodl_ray.methods import MethodPlugin, register_method
from doodl_ray.methods.base import MethodResult, Problem, candidate_seed, images01
from doodl_ray.review.results import RunResults
from tests.ray_session import ray_session  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401


class Brightness(Guidance):
    """Squared distance of an image's mean brightness to a level."""

    name = "brightness"
    takes_target = False

    def __init__(self, level: float):
        super().__init__()
        self.level = level

    def validate_target(self, target: Any, prompt: Optional[str] = None) -> Any:
        return None

    def loss(self, images: Tensor, targets: Sequence[Any], generators: Any) -> Tensor:
        return (images.mean(dim=(1, 2, 3)) - self.level) ** 2


@register_guidance
class BrightnessSettings(GuidanceSpec):
    type: Literal["brightness"] = "brightness"
    level: float = 0.5

    def check(self, checks: Checks, image_shape: Optional[ImageShape]) -> None:
        if not 0 <= self.level <= 1:
            raise InvalidInput("brightness level must be in [0, 1]")

    def build(self, device: Any, storage_options: dict[str, Any], image_shape: Optional[ImageShape]) -> Guidance:
        return Brightness(self.level).to(device).freeze()


class LowestOfSettings(StrictModel):
    samples: int = Field(2, ge=1)


@torch.no_grad()
def lowest_of(problem: Problem, config: Any) -> MethodResult:
    """`lowest_of.samples` plain samples per item from its candidate seeds; the one of lowest guidance loss."""
    from doodl_ray.sampling.chain import chain_sample

    batch, best = problem.view(), None
    for j in range(config.lowest_of.samples):
        noise = problem.draw([candidate_seed(seed, j) for seed in problem.seeds])
        image = images01(batch.decode(chain_sample(noise, problem.schedule, batch.eps)))
        loss = batch.score(image)
        if best is None:
            best = MethodResult(image, noise, [[float(v)] for v in loss], [0] * len(loss))
            continue
        for i, value in enumerate(loss.tolist()):
            best.history[i].append(value)
            if value < min(best.history[i][:-1]):
                best.image[i], best.noise[i], best.best_iteration[i] = image[i], noise[i], j
    return best


register_method(MethodPlugin("lowest-of", "the lowest loss of a few plain samples", lowest_of, LowestOfSettings))


@register_format
class ZipFormat(PackedFormat):
    """A zip of a shard's PNGs, named by key and kind."""

    name = "zip"
    suffix = "zip"

    def write_container(self, f: IO[bytes], samples: Matched) -> None:
        with zipfile.ZipFile(f, "w") as archive:
            for row, images in samples:
                for kind, png in images.items():
                    archive.writestr(f"{row['key']}.{KINDS[kind]}", png)

    def samples(self, storage: Storage, shard: int, rows: list[dict[str, Any]]) -> Samples:
        with zipfile.ZipFile(io.BytesIO(storage.read_bytes(self.location(shard)))) as archive:
            found: dict[str, dict[str, bytes]] = {}
            for name in archive.namelist():
                key, _, suffix = name.partition(".")
                kind = next(k for k, s in KINDS.items() if s == suffix)
                found.setdefault(key, {})[kind] = archive.read(name)
        yield from found.items()


def test_a_guidance_type_a_method_and_an_output_format_from_a_test_file(ray_session, tmp_path):  # noqa: F811
    pq.write_table(pa.table({"id": ["dim", "bright", "mid"]}), tmp_path / "in.parquet")
    spec = parse_spec({
        "run_id": "plugins", "model": str(ASSETS_DIR / "balanced"),
        "input": {"uri": str(tmp_path / "in.parquet"), "columns": {"id": "id"}},
        "guidance": {"type": "brightness", "level": 0.9},
        "method": {"name": "tests.test_plugins:lowest-of", "sampler": {"steps": 4}, "lowest_of": {"samples": 3}},
        "output": {"uri": str(tmp_path / "out"), "format": "tests.test_plugins:zip"},
        "resources": {"actors": 1, "gpus_per_actor": 1, "batch_size": 3},
    })
    assert isinstance(spec.guidance, BrightnessSettings) and spec.method.lowest_of.samples == 3
    summary = run_job(spec, progress=False)
    assert (summary.ok, summary.failed, summary.rejected) == (3, 0, 0)
    ledger = Ledger(Storage(str(tmp_path / "out")))
    rows = ledger.finished_rows()
    for row in rows:  # the guide's own score of the returned image is its loss there
        assert row["scores"]["guide/brightness"] == pytest.approx(row["final_loss"], abs=1e-6)
        assert row["final_loss"] == pytest.approx(min(row["history"]), abs=1e-6) and len(row["history"]) == 3
        assert row["compute"]["unet_forward"] == 3 * 4  # three plain 4-step samples
    with zipfile.ZipFile(tmp_path / "out" / "data" / "00000.zip") as archive:
        assert sorted(archive.namelist()) == sorted(f"{r['key']}.{s}" for r in rows for s in KINDS.values())
    images = ledger.images(rows)
    assert all(images[r["key"]]["image"].startswith(b"\x89PNG") for r in rows)
    review = RunResults(str(tmp_path / "out"))
    assert review.image("mid").data == images["mid"]["image"]
    assert rows[0]["provenance"]["guidance"]["spec_sha256"]
