"""`doodl-ray review RUN [--against OTHER_RUN]`: browse a run's results in a local web app (paged gallery,
item details) and, with --against, vote blind between the two runs' images of the same items; votes go
to RUN/reviews (or --votes URI) as Parquet, local or S3. Binds 127.0.0.1 unless told otherwise; any
other address needs --token."""

from __future__ import annotations

import argparse
import os
import sys

from doodl_ray.jobs.spec import StorageConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("review", help="gallery and blind A/B votes in the browser", description=__doc__)
    parser.add_argument("run", help="the run's output URI (local folder or s3:// prefix)")
    parser.add_argument("--against", metavar="OTHER_RUN", help="a second run of the same items: blind A/B votes")
    parser.add_argument("--votes", metavar="URI", help="where votes go (default: RUN/reviews)")
    parser.add_argument("--question", help='what reviewers answer (default: "Which image better matches the prompt?")')
    parser.add_argument("--category-column", default="category", help="input column of prompt categories")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    parser.add_argument("--token", default=os.environ.get("DOODL_REVIEW_TOKEN"),
                        help="required on every request; needed for any non-loopback --host (default: $DOODL_REVIEW_TOKEN)")
    parser.add_argument("--endpoint-url", help="S3 endpoint (default: the AWS chain, e.g. AWS_ENDPOINT_URL)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from doodl_ray.review.app import check_bind, create_app, is_loopback, make_review_server
    from doodl_ray.review.results import RunResults
    from doodl_ray.review.votes import VoteStore

    check_bind(args.host, args.token)
    storage = StorageConfig(endpoint_url=args.endpoint_url)

    def open_run(uri: str) -> RunResults:
        return RunResults(uri, storage.fsspec_options(uri), args.category_column)

    results = open_run(args.run)
    against = open_run(args.against) if args.against else None
    votes_uri = args.votes or f"{results.storage.uri}/reviews"
    app = create_app(results, VoteStore(votes_uri, storage.fsspec_options(votes_uri)), against=against,
                     question=args.question, token=args.token, loopback=is_loopback(args.host))
    server = make_review_server(app, args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"reviewing {results.run_id} ({results.table.num_rows} rows)"
          + (f" against {against.run_id}" if against else "") + f"; votes in {votes_uri}")
    print(f"open http://{host}:{server.server_port}/" + ("  (add ?token=... once)" if args.token else "")
          + "  Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
