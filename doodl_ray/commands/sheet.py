"""`doodl-ray sheet OUTPUT_URI`: a contact sheet of a job's finished images, one column per value of a
result field (default: target); row k holds each column's k-th image in id order, or, with --rows FIELD,
one row per value of that field."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from doodl_ray.errors import InvalidInput
from doodl_ray.ordering import natural_key
from doodl_ray.jobs.spec import StorageConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sheet", help="contact sheet of a job's images", description=__doc__)
    parser.add_argument("output", help="the job's output URI (local folder or s3:// prefix)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--columns", default="target", help="result field whose values are the columns")
    parser.add_argument("--rows", help="result field whose values are the rows (default: k-th image per column)")
    parser.add_argument("--max-rows", type=int, default=8)
    parser.add_argument("--endpoint-url", help="S3 endpoint (default: the AWS chain, e.g. AWS_ENDPOINT_URL)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from doodl_ray.contact_sheet import contact_sheet
    from doodl_ray.jobs.ledger import Ledger
    from doodl_ray.jobs.storage import Storage

    ledger = Ledger(Storage(args.output, StorageConfig(endpoint_url=args.endpoint_url).fsspec_options(args.output)))
    rows = [r for r in ledger.finished_rows() if r["status"] == "ok"]
    if not rows:
        raise InvalidInput(f"{args.output} has no finished images yet (no done shards with ok rows)")
    for field in (args.columns, args.rows):
        if field is not None and field not in rows[0]:
            raise InvalidInput(f"results have no field {field!r}; fields: {', '.join(sorted(rows[0]))}")
    columns = sorted({r[args.columns] for r in rows}, key=natural_key)
    cells: dict[tuple[object, object], dict] = {}  # (row value, column value) -> result row
    rank: dict[object, int] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        column = r[args.columns]
        if args.rows:
            row = r[args.rows]
        else:
            rank[column] = row = rank.get(column, 0) + 1
        cells[(row, column)] = r
    row_values = sorted({row for row, _ in cells}, key=natural_key)[: args.max_rows]
    pngs = ledger.images([r for (row, _), r in cells.items() if row in row_values])

    def image(result: dict | None) -> np.ndarray | None:
        if result is None:
            return None
        with Image.open(io.BytesIO(pngs[result["key"]]["image"])) as png:
            return np.asarray(png.convert("L" if png.mode == "L" else "RGB"))

    def label(row: object) -> str:
        return f"{args.rows} {row}" if args.rows else f"#{row}"

    grid = [(label(v), [image(cells.get((v, c))) for c in columns]) for v in row_values]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(grid, [str(c) for c in columns]).save(args.out)
    print(f"wrote {args.out}: {len(grid)} rows x {len(columns)} columns")
    return 0
