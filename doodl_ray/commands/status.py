"""`doodl-ray status OUTPUT_URI`: a run's counts, read from its ledger (markers and results parts); for an
escalation ladder also what it bought: accepted and unaccepted items, UNet evaluations per accepted image and
acceptance per rung."""

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
    ledger = Ledger(storage)
    counts = ledger.counts()
    spec = (ledger.run_manifest().get("spec") or {})
    if "ladder" in (spec.get("method") or {}):
        from doodl_ray.jobs.escalation import ladder_report
        from doodl_ray.jobs.ladder import LadderConfig

        total = (spec.get("budget") or {}).get("total_unet_evals")
        counts["ladder"] = ladder_report(ledger, LadderConfig.model_validate(spec["method"]), total)
    if args.json:
        print(json.dumps(counts))
        return 0
    print(f"run {counts['run_id']} ({counts['state']}, started {counts['started_at']}"
          + (f", finished {counts['finished_at']})" if counts["finished_at"] else ")"))
    unaccepted = f"unaccepted {counts['unaccepted']}, " if "ladder" in counts else ""
    print(f"  rows {counts['rows']}: ok {counts['ok']}, {unaccepted}failed {counts['failed']}, "
          f"rejected {counts['rejected']}, pending {counts['pending']}; "
          f"shards done {counts['shards_done']}/{counts['shards']}")
    if "ladder" in counts:
        print(ladder_text(counts["ladder"]))
    if counts["strays"]:
        print(f"  strays {counts['strays']}: parts or staged images written for finished shards by abandoned "
              "attempts; the next run of this spec removes them")
    return 0


def ladder_text(report: dict) -> str:
    """A ladder's report as lines: the totals, then a line per rung."""
    per = report["unet_evals_per_accepted"]
    budget = f" of a budget of {report['budget']}" if report["budget"] else ""
    lines = [f"  ladder: {report['accepted']} accepted, {report['unaccepted']} unaccepted; {report['unet_evals']} UNet "
             f"evaluations{budget}, " + (f"{per:.0f} per accepted image" if per is not None else "none accepted")]
    for rung in report["rungs"]:
        rate = f"{rung['acceptance']:.2f}" if rung["acceptance"] is not None else "-"
        lines.append(f"    rung {rung['rung']} {rung['method']} (budget {rung['budget']}): {rung['items']} items, "
                     f"{rung['accepted']} accepted ({rate}), {rung['unet_evals']} UNet evaluations")
    return "\n".join(lines)
