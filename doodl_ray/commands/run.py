"""`doodl-ray run JOB.yaml`: run or resume a job on local Ray (loopback only) or an existing cluster."""

from __future__ import annotations

import argparse
import os
import sys

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
    from doodl_ray.jobs import load_spec, run_job

    spec = load_spec(args.spec, args.overrides)
    start_ray(args.address)
    summary = run_job(spec, force=args.force, retry_failed=args.retry_failed, progress=not args.no_progress,
                      metrics=RunMetrics(spec.run_id, spec.resources.gpu_hourly_price))
    print(summary.text(), file=sys.stderr)
    return 0 if summary.failed == 0 else 3
