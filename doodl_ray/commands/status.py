"""`doodl-ray status OUTPUT_URI`: a run's counts, read from its ledger (markers and results parts)."""

from __future__ import annotations

import argparse
import json

from doodl_ray.jobs.spec import StorageConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("status", help="counts of a job's output", description=__doc__)
    parser.add_argument("output", help="the job's output URI (local folder or s3:// prefix)")
    parser.add_argument("--endpoint-url", help="S3 endpoint (default: the AWS chain, e.g. AWS_ENDPOINT_URL)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from doodl_ray.jobs.ledger import Ledger
    from doodl_ray.jobs.storage import Storage

    storage = Storage(args.output, StorageConfig(endpoint_url=args.endpoint_url).fsspec_options(args.output))
    counts = Ledger(storage).counts()
    if args.json:
        print(json.dumps(counts))
    else:
        print(f"run {counts['run_id']} ({counts['state']}, started {counts['started_at']}"
              + (f", finished {counts['finished_at']})" if counts["finished_at"] else ")"))
        print(f"  rows {counts['rows']}: ok {counts['ok']}, failed {counts['failed']}, rejected {counts['rejected']}, "
              f"pending {counts['pending']}; shards done {counts['shards_done']}/{counts['shards']}")
    return 0
