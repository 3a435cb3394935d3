"""`doodl-ray jobs`: the jobs on a Ray cluster, newest first, with their status and doodl-ray run."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Optional

from doodl_ray.commands.submit import ADDRESS_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("jobs", help="list the jobs on a Ray cluster", description=__doc__)
    parser.add_argument("--address", help=ADDRESS_HELP)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=run)


def _time(ms: Optional[int]) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def run(args: argparse.Namespace) -> int:
    from doodl_ray.cluster.submission import connect

    jobs = [j for j in connect(args.address).list_jobs() if j.submission_id]  # not drivers started by hand
    jobs.sort(key=lambda j: j.start_time or 0, reverse=True)
    for job in jobs:
        meta = job.metadata or {}
        row = {"id": job.submission_id, "status": str(job.status), "started": _time(job.start_time),
               "ended": _time(job.end_time), "run_id": meta.get("doodl_run_id", "-"),
               "output": meta.get("doodl_output", "-")}
        print(json.dumps(row) if args.json else "  ".join(
            [f"{row['id']:<48}", f"{row['status']:<9}", row["started"], row["ended"], row["run_id"], row["output"]]))
    return 0
