"""`run` and `validate` share one preflight: every spec that `run` refuses before any actor starts,
`validate` refuses with the same one-line reason, and a spec `validate` passes, `run` runs. Real CLI calls
on local Ray; the outputs that must refuse a spec hold a real earlier run (no-op workers)."""

from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from doodl_ray.cli import main
from doodl_ray.digits import ASSETS_DIR
from tests.ray_session import ray_session  # noqa: F401
from tests.s3_server import s3_endpoint  # noqa: F401


def cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


def _noop(folder: Path, name: str, **changes) -> dict:
    spec = {"run_id": "preflight", "model": "unused", "processor": {"name": "noop"},
            "input": {"uri": str(folder / "in.parquet"), "columns": {"id": "id", "target": "target"}},
            "output": {"uri": str(folder / name)}, "resources": {"actors": 1, "gpus_per_actor": 1}}
    return _merge(spec, changes)


def _engine(folder: Path, name: str, **changes) -> dict:
    spec = {**_noop(folder, name), "model": str(ASSETS_DIR / "balanced"), "processor": {"name": "engine"},
            "guidance": {"type": "classifier", "model": str(ASSETS_DIR / "guide.pt")}}
    return _merge(spec, changes)


def _merge(spec: dict, changes: dict) -> dict:
    for key, value in changes.items():
        spec[key] = _merge(dict(spec[key]), value) if isinstance(value, dict) and key in spec else value
    return spec


REFUSED = {  # name -> (spec, what the one line says)
    "another spec": (lambda f: _noop(f, "done", seed=1), "holds run 'preflight' of a different spec"),
    "another format": (lambda f: _noop(f, "done", output={"format": "parquet"}), "in the files format, not parquet"),
    "input changed": (lambda f: _noop(f, "moved", input={"uri": str(f / "moved.parquet")}),
                      "shard 0: the input changed since this output was written"),
    "no model": (lambda f: _engine(f, "a", model=str(f / "nowhere")), "no such folder"),
    "no guide": (lambda f: _engine(f, "b", guidance={"model": str(f / "guide.pt")}), "guide.pt"),
    "no column": (lambda f: _noop(f, "c", input={"columns": {"prompt": "caption"}}), "no column 'caption'"),
    "filter type": (lambda f: _noop(f, "d", input={"filter": [{"column": "id", "gt": 3}]}), "input.filter on 'id'"),
    "bad run id": (lambda f: _noop(f, "e", run_id="../up"), "run_id"),
    "ladder budget": (lambda f: _noop(f, "g", method={"ladder": [{"name": "none", "budget": 50}, {"name": "none", "budget": 500}],
                                                      "acceptance": {"guide_loss": 1.0}}, budget={"total_unet_evals": 149}),
                      "budget.total_unet_evals 149 is too small for every item's first rung: 3 items x 50 UNet "
                      "evaluations (none) = 150"),
}


@pytest.fixture(scope="module")
def folder(ray_session, tmp_path_factory) -> Path:  # noqa: F811
    """An input, a finished run of it under `done`, and one under `moved` whose input then changed."""
    folder = tmp_path_factory.mktemp("preflight")
    pq.write_table(pa.table({"id": ["a", "b", "c"], "target": [1, 2, 3]}), folder / "in.parquet")
    shutil.copy(folder / "in.parquet", folder / "moved.parquet")
    for name, uri in (("done", "in.parquet"), ("moved", "moved.parquet")):
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_noop(folder, name, input={"uri": str(folder / uri)})))
        assert cli("run", str(path), "--no-progress")[0] == 0
    pq.write_table(pa.table({"id": ["a", "b", "z"], "target": [1, 2, 3]}), folder / "moved.parquet")
    return folder


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_run_and_validate_refuse_with_the_same_line(folder: Path, case: str):
    make, reason = REFUSED[case]
    spec = make(folder)
    path = folder / f"{case.replace(' ', '-')}.yaml"
    path.write_text(yaml.safe_dump(spec))
    manifest = Path(spec["output"]["uri"]) / "manifest.json"
    before = manifest.read_bytes() if manifest.exists() else None
    verdicts = {}
    for command in ("validate", "run"):
        rc, err = cli(command, str(path), "--no-progress") if command == "run" else cli(command, str(path))
        (line,) = err.splitlines()
        assert rc == 1 and line.startswith(f"doodl-ray {command}: error: "), err
        verdicts[command] = line.removeprefix(f"doodl-ray {command}: error: ")
    assert verdicts["run"] == verdicts["validate"] and reason in verdicts["run"]
    assert (manifest.read_bytes() if manifest.exists() else None) == before  # no run started


def test_what_validate_passes_run_runs(folder: Path):
    path = folder / "fresh.yaml"
    path.write_text(yaml.safe_dump(_noop(folder, "fresh")))
    rc, err = cli("validate", str(path))
    assert rc == 0 and err == ""
    rc, err = cli("run", str(path), "--no-progress")
    assert rc == 0 and "3 rows -> 3 ok" in err
    rc, err = cli("validate", str(path))  # and a finished run of the same spec validates again
    assert rc == 0 and err == ""
