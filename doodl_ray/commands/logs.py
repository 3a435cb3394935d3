"""`doodl-ray logs ID`: a submitted job's driver output, followed until the job ends (or --no-follow)."""

from __future__ import annotations

import argparse
import sys

from doodl_ray.commands.submit import ADDRESS_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("logs", help="show (and follow) a submitted job's output", description=__doc__)
    parser.add_argument("id", help="submission id, as printed by submit or listed by jobs")
    parser.add_argument("--address", help=ADDRESS_HELP)
    parser.add_argument("--no-follow", action="store_true", help="print the output so far and return")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from doodl_ray.cluster.submission import connect, follow

    client = connect(args.address)
    if args.no_follow:
        sys.stdout.write(client.get_job_logs(args.id))
    else:
        follow(client, args.id, sys.stdout)
    return 0
