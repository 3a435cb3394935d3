"""A plain TorchScript classifier with no doodl.json (saved the way anyone saves one) guides the shipped digits
model in `generate` and in a job: its input is the model's own 1-channel 16x16 image. One whose input does not
fit fails in one line before any actor starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from doodl_ray.digits import ASSETS_DIR
from doodl_ray.errors import DoodlError
from doodl_ray.jobs import run_job
from doodl_ray.jobs.preflight import preflight
from doodl_ray.jobs.spec import parse_spec
from tests.ray_session import ray_session  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401

MODEL = str(ASSETS_DIR / "balanced")


class Plain(nn.Module):
    """A flatten-and-linear digit classifier: it only runs on exactly the input it was made for."""

    def __init__(self, channels: int, side: int):
        super().__init__()
        self.head = nn.Linear(channels * side * side, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def _save(path: Path, channels: int, side: int) -> str:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(Plain(channels, side)), str(path))  # no extra files, no metadata
    return str(path)


def test_generate_with_a_plain_one_channel_classifier(tmp_path):
    classifier = _save(tmp_path / "plain.pt", 1, 16)
    out = tmp_path / "three.png"
    proc = subprocess.run([sys.executable, "-m", "doodl_ray.cli", "generate", "--model", MODEL, "--guidance",
                           "classifier", "--classifier", classifier, "--target", "3", "--iterations", "1",
                           "--optimizer", "normalized", "--steps", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    history = json.loads(out.with_suffix(".history.json").read_text())
    # two EDICT evaluations (2 per step) around one gradient (a VJP per half-step, and a recomputed evaluation per
    # half-step but the last step's, whose graph the forward pass kept)
    assert history["compute"]["unet_evals"] == 2 * 6 + (4 * 3 - 2)
    misfit = _save(tmp_path / "misfit.pt", 3, 32)
    proc = subprocess.run([sys.executable, "-m", "doodl_ray.cli", "generate", "--model", MODEL, "--guidance",
                           "classifier", "--classifier", misfit, "--target", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 1 and len(errors) == 1 and "1x16x16" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "def forward" not in proc.stderr


def test_a_job_with_a_plain_classifier_and_a_misfit_refused_before_actors(ray_session, tmp_path):
    table = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "target": [3, 5, 8], "note": ["x", "y", "z"]}), table)

    def spec(classifier: str, out: str) -> dict:
        return parse_spec({
            "run_id": "plain", "model": MODEL, "input": {"uri": str(table), "columns": {"id": "id", "target": "target"}},
            "guidance": {"type": "classifier", "model": classifier, "crops": {"count": 2}},
            "method": {"name": "doodl", "sampler": {"steps": 3}, "doodl": {"iterations": 1, "optimizer": "normalized"}},
            "output": {"uri": str(tmp_path / out)}, "resources": {"actors": 1, "gpus_per_actor": 1, "batch_size": 3},
        })

    summary = run_job(spec(_save(tmp_path / "plain.pt", 1, 16), "ok"), progress=False)
    assert (summary.ok, summary.failed, summary.rejected) == (3, 0, 0)
    rows = pq.read_table(tmp_path / "ok" / "results" / "shard-00000.parquet").to_pylist(maps_as_pydicts="strict")
    assert [r["compute"]["unet_evals"] for r in rows] == [22, 22, 22]
    with pytest.raises(DoodlError, match="1x16x16") as refused:
        preflight(spec(_save(tmp_path / "misfit.pt", 3, 32), "misfit"))
    assert "\n" not in str(refused.value)
