"""`doodl-ray backfill JOB.yaml --from 2026-11-01 --to 2026-11-26`: one job per day of a spec whose
input.uri holds a {date} template, each writing under its own date partition of the output.

Days whose output already holds a finished run of the same spec are skipped, so the same command can be
rerun after a failure. Without --submit the days run one after another on local Ray (or --address, as
for run); with --submit each is submitted to the cluster (as by submit: a day already submitted is not
run twice) and the command returns without waiting."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from doodl_ray.commands.submit import add_submit_options

if TYPE_CHECKING:
    from doodl_ray.cluster.partitions import Partition


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("backfill", help="run or submit one job per date partition", description=__doc__)
    parser.add_argument("spec", help="job spec (YAML) whose input.uri holds {date}")
    parser.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD", help="first day")
    parser.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="last day (included)")
    parser.add_argument("--submit", action="store_true", help="submit each day to a cluster instead of running here")
    parser.add_argument("--address", help="with --submit: the Jobs API, e.g. http://HEAD:8265 (default: $RAY_ADDRESS); "
                        "without: as for run (ray://HEAD:10001 or auto; default: local Ray)")
    add_submit_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (local runs)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from doodl_ray.cluster.partitions import is_complete, parse_day, partitions

    todo = []
    for part in partitions(args.spec, args.overrides, parse_day(args.start), parse_day(args.end)):
        if is_complete(part.spec):
            print(f"{part.day}: complete, skipped ({part.spec.output.uri})", file=sys.stderr)
        else:
            todo.append(part)
    if not todo:
        return 0
    return _submit(args, todo) if args.submit else _run(args, todo)


def _submit(args: argparse.Namespace, todo: list[Partition]) -> int:
    from doodl_ray.cluster.submission import connect, submit

    client = connect(args.address)
    for part in todo:
        job = submit(client, args.spec, part.overrides, working_dir=args.working_dir, pip=args.pip)
        print(job.id, flush=True)
        print(f"{part.day}: {job.describe()}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace, todo: list[Partition]) -> int:
    from doodl_ray.cluster.metrics import RunMetrics
    from doodl_ray.commands.run import start_ray
    from doodl_ray.jobs import run_job

    start_ray(args.address)
    failed = 0
    for part in todo:
        summary = run_job(part.spec, progress=not args.no_progress,
                          metrics=RunMetrics(part.spec.run_id, part.spec.resources.gpu_hourly_price))
        print(f"{part.day}: {summary.text()}", file=sys.stderr)
        failed += summary.failed
    return 0 if failed == 0 else 3
