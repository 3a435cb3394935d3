"""`doodl-ray submit / jobs / logs / backfill --submit` against a real Ray head with token authentication on
(tests/ray_head.py): a tiny no-op job is submitted through the Jobs API and fails (no input yet), is
resubmitted as the next attempt and runs, writing its outputs, with plain progress lines in its log; an
identical submission finds it and does not run it again; a backfill day is submitted. A client without
the token (a new user's shell: no RAY_AUTH_MODE) or with a wrong one gets one line saying what to set.
Plus the pure parts: ids, runtime env, entrypoint."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from doodl_ray.cli import main
from doodl_ray.cluster.submission import (
    entrypoint,
    pinned_requirements,
    runtime_env,
    Submission,
    submission_id,
    submit,
    token_problem,
    working_dir_for,
)
from doodl_ray.errors import InvalidInput
from doodl_ray.jobs.spec import load_spec
from tests.ray_head import AUTH_VARIABLES, TOKEN, FakeJobsClient, auth_header, ray_head  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")  # inside Ray's SDK


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def noop_spec(tmp_path: Path, rows: int = 5, **changes) -> Path:
    """A no-op job reading local Parquet and writing under tmp_path/out; the spec alone in its folder."""
    (tmp_path / "in").mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": [f"item-{i}" for i in range(rows)]}), tmp_path / "in" / "part-0.parquet")
    spec = {"run_id": "submit-test", "model": "unused", "processor": {"name": "noop"},
            "input": {"uri": str(tmp_path / "in"), "columns": {"id": "id"}},
            "output": {"uri": str(tmp_path / "out"), "shard_size": 3},
            "resources": {"actors": 1, "gpus_per_actor": 1, "cpus_per_actor": 1, "batch_size": 2},
            "retries": {"attempts": 2, "base_delay": 0.05, "max_delay": 0.1}, **changes}
    (tmp_path / "spec").mkdir(exist_ok=True)
    path = tmp_path / "spec" / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ------------------------------------------------------------------------------------------ pure parts


def test_submission_id_follows_results_and_output_not_resources(tmp_path: Path):
    path = noop_spec(tmp_path)
    base = load_spec(path)
    same = submission_id(base)
    assert same == submission_id(load_spec(path)) and len(same) <= 64
    assert same.startswith("doodl-submit-test-") and all(c.isalnum() or c == "-" for c in same) and same.islower()
    assert submission_id(load_spec(path, ["resources.actors=4", "timeouts.item_seconds=5"])) == same
    assert submission_id(load_spec(path, ["output.uri=/elsewhere"])) != same
    assert submission_id(load_spec(path, ["seed=1"])) != same
    assert submission_id(load_spec(path, ["storage.endpoint_url=http://127.0.0.1:1"])) != same


def test_runtime_env_ships_the_checkout_for_a_spec_inside_it():
    assert working_dir_for(ROOT / "jobs" / "tiny-s3.yaml") == ROOT
    env = runtime_env(ROOT)
    assert env["working_dir"] == str(ROOT) and ".venv/" in env["excludes"] and "pip" not in env
    command = entrypoint("jobs/tiny-s3.yaml", ['input.uri="s3://b/date=2026-11-01/"', "resources.actors=2"])
    assert shlex.split(command) == ["python", "-m", "doodl_ray.cli", "run", "jobs/tiny-s3.yaml", "--address", "auto",
                                    "--set", 'input.uri="s3://b/date=2026-11-01/"', "--set", "resources.actors=2"]


def test_working_dir_must_hold_the_spec(tmp_path: Path):
    path = noop_spec(tmp_path)
    assert working_dir_for(path) == path.parent  # outside the checkout: its own folder
    with pytest.raises(InvalidInput, match="not inside the working dir"):
        working_dir_for(path, ROOT)


def test_pip_pins_the_projects_dependencies_but_not_ray():
    pins = pinned_requirements()
    names = {p.split("==")[0].lower() for p in pins}
    assert {"torch", "pyarrow", "pydantic", "s3fs"} <= names and "ray" not in names
    assert all("==" in p for p in pins)
    assert runtime_env(ROOT, pip=True)["pip"]["packages"] == pins


def test_submit_needs_an_address_and_a_template_for_date(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc, _, err = cli("submit", str(noop_spec(tmp_path)))
    assert rc == 1 and "pass --address" in err
    rc, _, err = cli("submit", str(noop_spec(tmp_path)), "--date", "2026-11-01")
    assert rc == 1 and "no {date} template" in err


def test_one_live_job_per_spec_and_a_new_attempt_after_failure(tmp_path: Path):
    client, path = FakeJobsClient(), noop_spec(tmp_path)
    base = submission_id(load_spec(path))
    first = submit(client, path, [])
    assert (first.id, first.created) == (base, True)
    assert shlex.split(client.jobs[base].entrypoint)[4] == "job.yaml"  # relative to the uploaded spec folder
    for status in ("PENDING", "RUNNING", "SUCCEEDED"):
        client.set_status(base, status)
        assert submit(client, path, ["resources.actors=3"]) == Submission(base, status, False)
    client.set_status(base, "FAILED")
    assert submit(client, path, []).id == f"{base}-r2"
    client.set_status(f"{base}-r2", "STOPPED")
    assert submit(client, path, []).id == f"{base}-r3"
    assert submit(client, path, []) == Submission(f"{base}-r3", "PENDING", False)
    client.stale_list = True  # a racing submitter saw no job and tries the first id: Ray refuses, no new run
    assert submit(client, path, []) == Submission(base, "FAILED", False)
    assert len(client.jobs) == 3


# ------------------------------------------------------------------------------------------ real head


def read_rows(out: Path) -> list[dict]:
    return [r for f in sorted(out.glob("results/shard-*.parquet")) for r in pq.read_table(f).to_pylist()]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_submit_runs_once_retries_failures_lists_and_logs(ray_head, tmp_path: Path):
    """One flow, to keep the number of (slow) driver starts at two: a failed attempt, a resubmission that
    runs, then an identical submission that finds it and runs nothing."""
    from ray.job_submission import JobSubmissionClient

    path, address = noop_spec(tmp_path), ray_head.dashboard_url
    base = submission_id(load_spec(path))
    (tmp_path / "in" / "part-0.parquet").rename(tmp_path / "part-0.parquet")  # no input yet: the driver fails
    rc, out, err = cli("submit", str(path), "--address", address)
    assert (rc, out.strip()) == (1, base) and f"job {base} FAILED" in err

    (tmp_path / "part-0.parquet").rename(tmp_path / "in" / "part-0.parquet")
    rc, out, err = cli("submit", str(path), "--address", address)
    job_id = out.strip()
    assert (rc, job_id) == (0, f"{base}-r2"), err  # the next attempt, not a reuse of the failed id
    assert "run submit-test: 5 rows -> 5 ok" in err and "SUCCEEDED" in err  # the driver's output, followed
    rows = read_rows(tmp_path / "out")
    assert sorted(r["id"] for r in rows) == [f"item-{i}" for i in range(5)]
    assert all(r["status"] == "ok" and Path(r["image_uri"]).is_file() for r in rows)
    session = manifest(tmp_path / "out")["session"]

    rc, out, err = cli("submit", str(path), "--address", address)
    assert (rc, out.strip()) == (0, job_id) and "not run again" in err
    assert manifest(tmp_path / "out")["session"] == session  # no second driver touched the output
    ids = [j.submission_id for j in JobSubmissionClient(address).list_jobs()]
    assert sorted(i for i in ids if i and i.startswith(base)) == [base, job_id]

    rc, out, _ = cli("jobs", "--address", address)
    assert rc == 0 and any(line.split()[:2] == [job_id, "SUCCEEDED"] for line in out.splitlines())
    rc, out, _ = cli("logs", job_id, "--address", address)
    assert rc == 0 and "run submit-test: 5 rows" in out
    # a job's stderr is no terminal: plain progress lines, the last one at 5 of 5, and no bar redraws
    assert re.search(r"submit-test: 5/5 items \(100%\), ok=5, failed=0, rejected=0, left=0, actors=\d/1 \[", out)
    assert "\r" not in out


def test_backfill_submits_a_day_to_the_token_protected_head(ray_head, tmp_path: Path):
    from ray.job_submission import JobSubmissionClient

    (tmp_path / "in" / "date=2026-11-01").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b", "c"]}), tmp_path / "in" / "date=2026-11-01" / "part-0.parquet")
    path = noop_spec(tmp_path, run_id="nightly", input={"uri": str(tmp_path / "in" / "date={date}"),
                                                        "columns": {"id": "id"}})
    rc, out, err = cli("backfill", str(path), "--from", "2026-11-01", "--to", "2026-11-01", "--submit",
                       "--address", ray_head.dashboard_url)
    job_id = out.strip()
    try:
        assert rc == 0 and "2026-11-01: submitted" in err, err
        rc, out, _ = cli("jobs", "--address", ray_head.dashboard_url, "--json")
        rows = {r["id"]: r for r in map(json.loads, out.splitlines())}
        assert rc == 0 and rows[job_id]["run_id"] == "nightly-2026-11-01"
    finally:  # the submission is what is tested here: spare the 2 cores its driver
        JobSubmissionClient(ray_head.dashboard_url).stop_job(job_id)


def _cli_process(*argv: str, **env: str) -> subprocess.CompletedProcess:
    """doodl-ray in a fresh process with the test's environment minus Ray's token settings, plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES}
    return subprocess.run([sys.executable, "-m", "doodl_ray.cli", *argv], env={**base, **env},
                          capture_output=True, text=True, timeout=120)


def test_missing_token_settings_are_one_line_saying_what_to_set(ray_head, tmp_path: Path):
    """A new user's shell after `ray start --head`: the token lies in ~/.ray/auth_token, RAY_AUTH_MODE unset."""
    spec = noop_spec(tmp_path)
    new_user = _cli_process("submit", str(spec), "--address", ray_head.dashboard_url, "--no-wait",
                            HOME=str(ray_head.home))
    assert new_user.returncode == 1 and new_user.stdout == ""
    (line,) = new_user.stderr.splitlines()
    assert line.startswith("doodl-ray submit: error: the Ray cluster at http://127.0.0.1:")
    assert "export RAY_AUTH_MODE=token" in line and "~/.ray/auth_token" in line and TOKEN not in line


def test_token_mode_without_a_token_says_where_to_put_it(monkeypatch):
    from ray._private.authentication.authentication_constants import (
        TOKEN_AUTH_ENABLED_BUT_NO_TOKEN_FOUND_ERROR_MESSAGE as ray_message,
    )

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    line = token_problem("http://head:8265", ray_message)
    assert "RAY_AUTH_MODE=token is set but no token was found: put it in $RAY_AUTH_TOKEN" in line


def test_a_wrong_token_is_named_as_not_the_clusters(ray_head):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    with pytest.raises(AuthenticationError) as refused:  # Ray sends a caller's own Authorization header as is
        JobSubmissionClient(ray_head.dashboard_url, headers=auth_header("0" * 64))
    line = token_problem(ray_head.dashboard_url, refused.value.message)
    assert "refused the token" in line and "`ray get-auth-token` on the head" in line and "\n" not in line
