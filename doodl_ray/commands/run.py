"""`doodl-ray run JOB.yaml`: run or resume a job on local Ray (loopback only) or an existing cluster.

Exit status: 0 done, 3 done with failed items, 1 a spec or input error, 75 stopped by the cluster (its head
lost, or no actor able to run for timeouts.no_capacity_seconds): run it again, it resumes from the ledger."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

# Read by Ray when it is imported: without it, a local Ray listens on every interface.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run or resume a generation job", description=__doc__)
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field, e.g. --set resources.actors=8 (repeatable)")
    parser.add_argument("--address", help="existing Ray cluster (e.g. ray://head:10001 or auto); default: local Ray")
    parser.add_argument("--force", action="store_true", help="discard earlier results under the output URI and redo all")
    parser.add_argument("--retry-failed", action="store_true", help="also rerun items recorded as failed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def start_ray(address: str | None) -> None:
    """Connect to a cluster, or start a private local one bound to 127.0.0.1 with every local GPU."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=True)


def run(args: argparse.Namespace) -> int:
    from doodl_ray.cluster.metrics import RunMetrics
    from doodl_ray.errors import RunInterrupted, error_line
    from doodl_ray.jobs import load_spec, run_job
    from doodl_ray.jobs.driver import HEAD_LOST

    spec = load_spec(args.spec, args.overrides)
    start_ray(args.address)
    try:
        summary = run_job(spec, force=args.force, retry_failed=args.retry_failed, progress=not args.no_progress,
                          metrics=RunMetrics(spec.run_id, spec.resources.gpu_hourly_price))
    except RunInterrupted as exc:
        if exc.state == HEAD_LOST:
            leave(error_line("run", exc), exc.exit_status)
        raise
    print(summary.text(), file=sys.stderr)
    status = 0 if summary.failed == 0 else 3
    if summary.head_lost:
        leave(None, status)
    return status


def leave(line: str | None, status: int) -> NoReturn:
    """End the process now, after `line`: without its head, Ray's shutdown at exit would wait for the head,
    then end the process with exit status 1 and a message of its own."""
    if line:
        print(line, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
