"""`doodl-ray export RUN --format F --to URI`: a finished run rewritten in another output format (files,
webdataset, parquet), locally or on S3, with the same rows; an interrupted export resumes."""

from __future__ import annotations

import argparse

from doodl_ray.jobs.spec import StorageConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="convert a finished run to another output format", description=__doc__)
    parser.add_argument("run", help="the run's output URI (local folder or s3:// prefix)")
    from doodl_ray.jobs.formats import FORMATS

    parser.add_argument("--format", required=True, help=f"{', '.join(sorted(FORMATS))}, or package.module:name of "
                        "a format that module registers")
    parser.add_argument("--to", required=True, help="the new output URI (local folder or s3:// prefix)")
    parser.add_argument("--endpoint-url", help="S3 endpoint for both URIs (default: the AWS chain)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from doodl_ray.jobs.export import export_run
    from doodl_ray.jobs.storage import Storage

    storage = StorageConfig(endpoint_url=args.endpoint_url)
    source = Storage(args.run, storage.fsspec_options(args.run))
    dest = Storage(args.to, storage.fsspec_options(args.to))
    counts = export_run(source, dest, args.format)
    print(f"exported {counts['rows']} rows ({counts['ok']} with images) in {counts['shards']} shard(s) "
          f"to {dest.uri} as {args.format}")
    return 0
