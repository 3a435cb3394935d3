"""Submitting a job spec to a Ray cluster through the Job Submission API, at most one run at a time per
spec and partition.

The submission id is derived from what the job computes and where it writes it (the spec's result hash,
its output URI and endpoint), so submitting the same spec (and partition) again finds the existing job
instead of starting a second driver on the same output. Resources, retries and timeouts are not part of
it: changing them while a job runs must not start a rival driver on the same ledger. A job that FAILED
or was STOPPED is submitted again as the next attempt (`<id>-r2`, `-r3`, ...; Ray does not support
reusing a deleted job's id); the new driver resumes from the output ledger. When two submitters race for
the same attempt id, Ray refuses the second, which then reports the first one's job instead of failing.

The job runs `python -m doodl_ray.cli run SPEC --set ...` in a runtime environment whose working
directory is the project checkout (so local edits run without rebuilding images) or, for an installed
doodl-ray, the spec's own folder (the cluster's installed doodl-ray runs)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, TextIO

import doodl_ray
from doodl_ray.errors import DoodlError, InvalidInput
from doodl_ray.jobs.spec import JobSpec, load_spec

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

EXCLUDES = [".git/", ".venv/", "__pycache__/", "/out/"]
"""Never uploaded with the working dir (Ray also honors the .gitignore files in it)."""
RETRYABLE = {"FAILED", "STOPPED"}
"""Ended without finishing: a new submission is a new attempt. Any other status means no second run."""
_ATTEMPT = re.compile(r"-r(\d+)$")


@dataclass(frozen=True)
class Submission:
    """The job that now stands for a spec on the cluster; `created` is False when it already existed."""

    id: str
    status: str
    created: bool

    def describe(self) -> str:
        """One line for the user: was it submitted now, or found (and so not run again)?"""
        return f"{'submitted' if self.created else 'already submitted, not run again:'} {self.id} ({self.status})"


def submission_id(spec: JobSpec) -> str:
    """`doodl-<run id slug>-<12 hex>`: the same for the same results at the same place, in [a-z0-9-]."""
    key = {"result": spec.result_hash(), "output": spec.output.uri.rstrip("/"), "endpoint": spec.storage.endpoint_url}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "-", spec.run_id.lower()).strip("-")[:48].strip("-")
    return f"doodl-{slug}-{digest}"


def connect(address: Optional[str]) -> "JobSubmissionClient":
    """A Jobs API client for the dashboard at `address` (e.g. http://HEAD:8265) or $RAY_ADDRESS. The client
    checks the connection (and the token of a token-protected cluster) as it is made."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise InvalidInput("no cluster given: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        raise DoodlError(token_problem(address, exc.message)) from None


def token_problem(address: str, message: str) -> str:
    """What to set when a cluster with Ray's token authentication refuses us, in one line. Ray sends a token
    only when RAY_AUTH_MODE=token, reading it from $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH names, or
    ~/.ray/auth_token (in that order); its own message is several lines and does not say which is missing."""
    where = "$RAY_AUTH_TOKEN, a file named by $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (f"the Ray cluster at {address} uses token authentication: export RAY_AUTH_MODE=token, with the "
                f"cluster's token in {where} (cluster/README.md)")
    if "Forbidden" in message:  # HTTP 403: a token was sent and refused
        return (f"the Ray cluster at {address} refused the token found in {where} (first found wins): it is not "
                "this cluster's token (`ray get-auth-token` on the head prints it)")
    return (f"the Ray cluster at {address} needs its token, and RAY_AUTH_MODE=token is set but no token was "
            f"found: put it in {where}")


def project_root() -> Optional[Path]:
    """The checkout doodl_ray is imported from, or None for an installed package."""
    root = Path(doodl_ray.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def working_dir_for(spec_path: Path, working_dir: Optional[Path] = None) -> Path:
    """The folder to upload: the given one, else the checkout holding the spec, else the spec's folder."""
    spec_path = spec_path.resolve()
    if working_dir is None:
        root = project_root()
        working_dir = root if root is not None and spec_path.is_relative_to(root) else spec_path.parent
    working_dir = working_dir.resolve()
    if not spec_path.is_relative_to(working_dir):
        raise InvalidInput(f"{spec_path} is not inside the working dir {working_dir}, so it would not be uploaded")
    return working_dir


def pinned_requirements() -> list[str]:
    """doodl-ray's own dependencies at the versions constraints.txt pins (Ray excluded: the cluster's wins)."""
    root = project_root()
    constraints = root / "constraints.txt" if root else None
    if constraints is None or not constraints.is_file():
        raise InvalidInput("--pip needs a doodl-ray checkout with constraints.txt")
    pins = {}
    for line in constraints.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[_canonical(name)] = f"{name.strip()}=={version.strip()}"
    names = {_canonical(re.split(r"[\s\[<>=!~;]", req, 1)[0])
             for req in importlib.metadata.requires("doodl-ray") or [] if "extra ==" not in req}
    missing = sorted(n for n in names if n not in pins)
    if missing:
        raise InvalidInput(f"constraints.txt pins no version of {', '.join(missing)}")
    return sorted(pins[n] for n in names if n != "ray")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def runtime_env(working_dir: Path, pip: bool = False) -> dict:
    """The job's runtime environment: the working dir, plus pinned requirements with `pip`."""
    env: dict = {"working_dir": str(working_dir), "excludes": EXCLUDES}
    if pip:
        env["pip"] = {"packages": pinned_requirements(), "pip_check": False}
    return env


def entrypoint(spec_relpath: str, overrides: list[str]) -> str:
    """The driver command, run in the working dir on the cluster, connected to that cluster; its progress
    reaches the job's log (`doodl-ray logs`) as a plain line every few seconds."""
    args = ["python", "-m", "doodl_ray.cli", "run", spec_relpath, "--address", "auto"]
    for override in overrides:
        args += ["--set", override]
    return shlex.join(args)


def _attempts(jobs: list["JobDetails"], base: str) -> dict[int, "JobDetails"]:
    """Submissions of one spec by attempt number: `base` is attempt 1, `base-rN` attempt N."""
    found = {}
    for job in jobs:
        sid = job.submission_id or ""
        if sid == base:
            found[1] = job
        elif sid.startswith(base) and (match := _ATTEMPT.fullmatch(sid[len(base):])):
            found[int(match.group(1))] = job
    return found


def submit(client: "JobSubmissionClient", spec_path: str | Path, overrides: list[str], *,
           working_dir: Optional[Path] = None, pip: bool = False) -> Submission:
    """Submit the spec unless a job for it is pending, running or has succeeded; returns that job."""
    spec_path = Path(spec_path)
    spec = load_spec(spec_path, overrides)
    base = submission_id(spec)
    attempts = _attempts(client.list_jobs(), base)
    if attempts:
        latest = attempts[max(attempts)]
        if str(latest.status) not in RETRYABLE:
            return Submission(latest.submission_id, str(latest.status), created=False)
    job_id = base if not attempts else f"{base}-r{max(attempts) + 1}"
    folder = working_dir_for(spec_path, working_dir)
    try:
        client.submit_job(
            submission_id=job_id,
            entrypoint=entrypoint(spec_path.resolve().relative_to(folder).as_posix(), overrides),
            runtime_env=runtime_env(folder, pip),
            metadata={"doodl_run_id": spec.run_id, "doodl_output": spec.output.uri,
                      "doodl_spec_hash": spec.result_hash()},
        )
    except RuntimeError as exc:
        if "already exists" not in str(exc):
            raise
        return Submission(job_id, str(client.get_job_status(job_id)), created=False)  # lost a race: same job
    return Submission(job_id, "PENDING", created=True)


def follow(client: "JobSubmissionClient", job_id: str, out: TextIO, poll_s: float = 0.5) -> str:
    """Stream the job's driver output to `out` until it ends; returns its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    while not (status := client.get_job_status(job_id)).is_terminal():  # the log stream may close first
        time.sleep(poll_s)
    return str(status)
