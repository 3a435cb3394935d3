"""`doodl-ray review-report VOTES`: what blind A/B votes say: each run's win rate with a Wilson 95%
interval and an exact two-sided sign test (ties apart), overall, per target class and per prompt
category, and the agreement between reviewers who rated the same pairs."""

from __future__ import annotations

import argparse
import json

from doodl_ray.jobs.spec import StorageConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("review-report", help="win rates and agreement of A/B votes", description=__doc__)
    parser.add_argument("votes", help="the votes URI (RUN/reviews by default, or review's --votes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--endpoint-url", help="S3 endpoint (default: the AWS chain, e.g. AWS_ENDPOINT_URL)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from doodl_ray.review.report import build_report, render_text
    from doodl_ray.review.votes import VoteStore

    store = VoteStore(args.votes, StorageConfig(endpoint_url=args.endpoint_url).fsspec_options(args.votes))
    report = build_report(store.votes(), store.uri)
    print(json.dumps(report) if args.json else render_text(report))
    return 0
