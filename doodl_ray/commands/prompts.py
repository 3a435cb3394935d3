"""`doodl-ray prompts SET --out in.parquet`: a bundled prompt or label set as a job's input Parquet.

A prompt set (drawbench) gives one row per prompt with every column of the set (id, prompt, category), so
results can be reported per category. A label set (cub-200, stanford-dogs, fgvc-aircraft, imagenet) gives
one row per class: id, prompt (the template filled with the class name), target (the class name, what a
classifier with `labels: SET` takes) and class_index. Ids are stable, so two specs reading the same file
(a method and its baseline) run the same items with the same seeds. Sources and terms of the sets:
doodl_ray/data/README.md."""

from __future__ import annotations

import argparse
import io
import sys

DEFAULT_TEMPLATE = "a photo of a {name}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from doodl_ray.data import LABEL_SETS, PROMPT_SETS

    parser = sub.add_parser("prompts", help="write a bundled prompt or label set as input Parquet",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", choices=sorted(PROMPT_SETS) + sorted(LABEL_SETS), help="the bundled set")
    parser.add_argument("--out", required=True, help="Parquet file to write: a local path or an s3:// URI")
    parser.add_argument("--template", help=f"label sets: the prompt, with {{name}} for the class name "
                        f"(default: {DEFAULT_TEMPLATE!r})")
    parser.add_argument("--endpoint-url", help="S3 endpoint for an s3:// --out (default: the AWS chain)")
    parser.set_defaults(func=run)


def prompt_rows(name: str, template: str | None = None) -> dict[str, list]:
    """The set as columns: a prompt set's own columns, or a label set's id/prompt/target/class_index."""
    from doodl_ray.data import LABEL_SETS, label_set, prompt_set
    from doodl_ray.errors import InvalidInput

    if name not in LABEL_SETS:
        if template is not None:
            raise InvalidInput(f"--template applies to label sets ({', '.join(sorted(LABEL_SETS))}), not {name}")
        rows = prompt_set(name)
        return {column: [row[column] for row in rows] for column in rows[0]}
    names = label_set(name)
    width = max(3, len(str(len(names) - 1)))
    return {"id": [f"{name}-{i:0{width}d}" for i in range(len(names))],
            "prompt": [fill(template or DEFAULT_TEMPLATE, n) for n in names],
            "target": list(names), "class_index": list(range(len(names)))}


def fill(template: str, name: str) -> str:
    """The template with {name} replaced; any other field or a malformed one is a one-line error."""
    from doodl_ray.errors import InvalidInput

    if "{name}" not in template:
        raise InvalidInput(f"--template {template!r} has no {{name}} for the class name")
    try:
        return template.format(name=name)
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidInput(f"--template {template!r}: only {{name}} can be filled in ({exc})") from None


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from doodl_ray.jobs.spec import StorageConfig
    from doodl_ray.jobs.storage import Storage

    columns = prompt_rows(args.set, args.template)
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    folder, _, file = args.out.rstrip("/").rpartition("/")
    folder = folder or "."
    storage = Storage(folder, StorageConfig(endpoint_url=args.endpoint_url).fsspec_options(folder))
    written = storage.write_bytes(file, buffer.getvalue())
    print(f"wrote {len(columns['id'])} rows ({', '.join(columns)}) to {written}", file=sys.stderr)
    return 0
