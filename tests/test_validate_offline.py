"""`doodl-ray validate --offline`: the checks a CI job can run with no cloud credentials and no model hub.

Every spec under jobs/ validates in a fresh process whose environment has no AWS credentials (and no AWS
config files), the hub off, and a dead proxy for any HTTP(S) it would still try, so a check that reached for
the network fails instead of passing by luck. Then the static checks on specs made to fail: a target class
name the classifier's bundled labels lack, a column map, a filter, a local model folder; each one line."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from doodl_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "jobs").glob("*.yaml"))


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def offline_environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens there
    return {**env, "HOME": str(home), "AWS_CONFIG_FILE": str(home / "none"), "AWS_SHARED_CREDENTIALS_FILE":
            str(home / "none"), "AWS_EC2_METADATA_DISABLED": "true", "HF_HUB_OFFLINE": "1", "HTTP_PROXY": dead,
            "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead, "NO_PROXY": "", "no_proxy": ""}


def test_every_example_spec_validates_offline_without_credentials(tmp_path: Path):
    assert len(SPECS) >= 20
    done = subprocess.run([sys.executable, "-m", "doodl_ray.cli", "validate", "--offline", *map(str, SPECS)],
                          cwd=ROOT, env=offline_environment(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    verdicts = {line.split(":", 1)[0]: line for line in done.stdout.splitlines() if not line.startswith(" ")}
    assert sorted(verdicts) == [str(p) for p in SPECS]
    assert all(": valid;" in line for line in verdicts.values())
    skipped = _skipped_by_spec(done.stdout)
    assert skipped[str(ROOT / "jobs" / "digits-demo.yaml")] == []  # all local: nothing skipped
    birds = str(ROOT / "jobs" / "paper-finegrained-birds.yaml")
    assert "200 rows in 1 file(s) -> 200 items" in verdicts[birds]  # local input, targets checked by name
    assert any("stable-diffusion-v1-5/stable-diffusion-v1-5" in s and "hub" in s for s in skipped[birds])
    assert any("cub200-inception_v3.safetensors (remote storage)" in s for s in skipped[birds])
    tiny = str(ROOT / "jobs" / "tiny-s3.yaml")
    assert {"input s3://doodl-jobs/inputs/tiny/ (remote storage)",
            "output s3://doodl-jobs/outputs/tiny-s3 (remote storage)"} <= set(skipped[tiny])


def _skipped_by_spec(stdout: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if not line.startswith(" "):
            found[current := line.split(":", 1)[0]] = []
        elif line.startswith("  skipped (offline): "):
            found[current].append(line.removeprefix("  skipped (offline): "))
    return found


def _birds_spec(tmp_path: Path, targets: list[str], **changes) -> Path:
    """The paper's birds spec on an input of our own (extra column included), with `changes` applied."""
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(len(targets))], "prompt": ["a photo"] * len(targets),
                             "target": targets, "note": ["x"] * len(targets)}), tmp_path / "birds.parquet")
    spec = yaml.safe_load((ROOT / "jobs" / "paper-finegrained-birds.yaml").read_text())
    spec["input"]["uri"] = str(tmp_path / "birds.parquet")
    for key, value in changes.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "birds.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def offline(monkeypatch, tmp_path: Path):
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_class_name_outside_the_bundled_labels_fails_in_one_line(offline, tmp_path: Path):
    path = _birds_spec(tmp_path, ["Black-footed Albatross", "Black-footed Albatros", "Laysan Albatross", "17"])
    rc, out, err = cli("validate", "--offline", str(path))
    assert rc == 4
    (line,) = err.splitlines()
    assert line.startswith(f"{path}: 1 of 4 rows would be rejected: class name 'Black-footed Albatros' is not "
                           "among the classifier's labels")
    assert "Black-footed Albatross" in line.split("close:")[1]  # the near miss is named
    assert ": valid" not in out and "skipped (offline): classifier weights s3://" in out


@pytest.mark.parametrize("changes,message", [
    ({"input": {"columns": {"id": "id", "prompt": "caption"}}}, r"no column 'caption' \(input.columns.prompt\)"),
    ({"input": {"filter": [{"column": "note", "gt": 3}]}}, r"input.filter on 'note'"),
    ({"input": {"filter": [{"column": "split", "eq": "eval"}]}}, r"no column 'split' \(input.filter\)"),
    ({"model": "/nonexistent/stable-diffusion"}, r"model /nonexistent/stable-diffusion: no such folder"),
])
def test_static_problems_are_one_line_offline(offline, tmp_path: Path, changes: dict, message: str):
    rc, out, err = cli("validate", "--offline", str(_birds_spec(tmp_path, ["Laysan Albatross"], **changes)))
    assert rc == 1 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("doodl-ray validate: error: ") and re.search(message, line), line


def test_several_specs_each_get_a_verdict(offline, tmp_path: Path):
    bad = _birds_spec(tmp_path, ["Laysan Albatross"], model="/nonexistent/stable-diffusion")
    good = ROOT / "jobs" / "paper-finegrained-dogs.yaml"
    rc, out, err = cli("validate", "--offline", str(bad), str(good))
    assert rc == 1
    assert err.splitlines() == [f"{bad}: invalid: model /nonexistent/stable-diffusion: no such folder (and not a hub "
                                "id such as org/name)"]
    assert f"{good}: valid; 120 rows" in out
