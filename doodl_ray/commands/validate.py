"""`doodl-ray validate JOB.yaml`: check the spec and its input (columns, types, ids, targets) without running."""

from __future__ import annotations

import argparse
from collections import Counter


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("validate", help="check a job spec and its input", description=__doc__)
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field (as for run)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from doodl_ray.jobs.driver import prepare
    from doodl_ray.jobs.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    plan = prepare(spec)
    print(f"{args.spec}: valid; {plan.rows} rows in {len(plan.files)} file(s) -> {len(plan.items)} items, "
          f"{len(plan.rejected)} rejected, {len(plan.shard_ids)} shard(s); output {spec.output.uri}")
    for reason, n in Counter(r.error for r in plan.rejected).most_common(5):
        print(f"  rejected {n}: {reason}")
    return 0 if not plan.rejected else 4
