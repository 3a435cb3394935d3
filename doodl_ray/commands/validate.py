"""`doodl-ray validate JOB.yaml...`: check specs and their inputs (columns, types, ids, targets) without running.

With --offline (CI without cloud credentials or a model hub), every check that needs no network runs: the
schema, names, column maps, filter types, local files and models, targets against the labels a classifier
spec fixes (a list, a bundled label set, a local file); the checks that need remote storage or a hub are
listed as skipped. Exit status: 0 valid, 1 a spec or its input is invalid, 4 some input rows would be rejected."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from doodl_ray.errors import DoodlError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("validate", help="check job specs and their inputs", description=__doc__)
    parser.add_argument("specs", nargs="+", metavar="spec", help="job spec (YAML); several are checked one by one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field (as for run)")
    parser.add_argument("--offline", action="store_true",
                        help="no network: skip (and list) the checks that need remote storage or a model hub")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if len(args.specs) == 1:
        return validate(args.specs[0], args.overrides, args.offline)
    status = 0
    for path in args.specs:  # every spec gets its verdict; one bad spec does not hide the others
        try:
            status = max(status, validate(path, args.overrides, args.offline))
        except DoodlError as exc:
            print(f"{path}: invalid: {' '.join(str(exc).split())}", file=sys.stderr)
            status = max(status, 1)
    return status


def validate(path: str, overrides: list[str], offline: bool = False) -> int:
    """Check one spec: its verdict goes to stdout when it is valid, to stderr (one line per distinct reason)
    when input rows would be rejected, then the checks skipped offline. DoodlError (one line) when invalid."""
    from doodl_ray.jobs.preflight import preflight
    from doodl_ray.jobs.spec import load_spec

    spec = load_spec(path, overrides)
    checked = preflight(spec, offline=offline)
    plan = checked.plan
    if plan is None:
        print(f"{path}: valid; input not read (remote storage); output {spec.output.uri}")
    elif not plan.rejected:
        print(f"{path}: valid; {plan.rows} rows in {len(plan.files)} file(s) -> {len(plan.items)} items, "
              f"{len(plan.shard_ids)} shard(s); output {spec.output.uri}")
    else:
        reasons = Counter(r.error for r in plan.rejected).most_common()
        print(f"{path}: {len(plan.rejected)} of {plan.rows} rows would be rejected: {reasons[0][0]}"
              + (f" ({reasons[0][1]} rows)" if reasons[0][1] > 1 else ""), file=sys.stderr)
        for reason, n in reasons[1:5]:
            print(f"  and {n}: {reason}", file=sys.stderr)
    for check in checked.skipped:
        print(f"  skipped (offline): {check}")
    return 4 if plan is not None and plan.rejected else 0
