"""`doodl-ray submit JOB.yaml --address http://HEAD:8265`: run a job on a cluster through Ray's Jobs API.

Submitting the same spec (and --date) again reports the job already there instead of running it twice;
a job that failed or was stopped is submitted again and resumes from its ledger. The submission id goes
to stdout and the driver's output to stderr, so `ID=$(doodl-ray submit ...)` still shows progress."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from doodl_ray.errors import DoodlError

ADDRESS_HELP = "Ray dashboard / Jobs API, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("submit", help="submit a job to a Ray cluster (once)", description=__doc__)
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("--address", help=ADDRESS_HELP)
    add_submit_options(parser)
    parser.add_argument("--date", help="run one day of a spec whose input.uri holds a {date} template (YYYY-MM-DD)")
    parser.add_argument("--no-wait", action="store_true", help="print the submission id and return at once")
    parser.set_defaults(func=run)


def add_submit_options(parser: argparse.ArgumentParser) -> None:
    """Options shared with `backfill`: spec overrides, and what a submitted job uploads."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field (repeatable; travels in the job's command line, so no secrets)")
    parser.add_argument("--working-dir", type=Path, help="submitted jobs: folder to upload, holding the spec "
                        "(default: the doodl-ray checkout, else the spec's folder)")
    parser.add_argument("--pip", action="store_true", help="submitted jobs: install doodl-ray's dependencies, "
                        "pinned by constraints.txt, in the job's environment")


def run(args: argparse.Namespace) -> int:
    from doodl_ray.cluster.partitions import parse_day, partition
    from doodl_ray.cluster.submission import connect, follow, submit

    overrides = partition(args.spec, args.overrides, parse_day(args.date)).overrides if args.date else args.overrides
    client = connect(args.address)
    job = submit(client, args.spec, overrides, working_dir=args.working_dir, pip=args.pip)
    print(job.id, flush=True)
    print(job.describe(), file=sys.stderr)
    if args.no_wait or job.status == "SUCCEEDED":
        return 0
    status = follow(client, job.id, sys.stderr)
    if status != "SUCCEEDED":
        raise DoodlError(f"job {job.id} {status}: {client.get_job_info(job.id).message}")
    print(f"job {job.id} {status}", file=sys.stderr)
    return 0
