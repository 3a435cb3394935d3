"""`doodl-ray bench NAME`: benchmarks that print ratios measured in one run (doodl_ray.benchmarks.NAME)."""

from __future__ import annotations

import argparse
import importlib

# Each name is a module doodl_ray.benchmarks.<name> with `add_arguments(parser)` and `run(args) -> int`.
BENCHMARKS = ["faults", "frontier", "grad", "jobs", "ladder", "sd"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run a benchmark")
    names = parser.add_subparsers(dest="benchmark", required=True, parser_class=type(parser))
    for name in BENCHMARKS:
        module = importlib.import_module(f"doodl_ray.benchmarks.{name}")
        bench = names.add_parser(name, help=module.__doc__.splitlines()[0])
        module.add_arguments(bench)
        bench.set_defaults(func=module.run)
