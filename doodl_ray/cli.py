"""`doodl-ray` command line: one subcommand per module in doodl_ray.commands.

User errors print one line and exit non-zero (1, or an error's own `exit_status`: 75 for a run its cluster
stopped, which a rerun resumes); `--debug` shows the traceback instead."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from doodl_ray.errors import error_line

# Each name is a module doodl_ray.commands.<name> with `add_parser(subparsers)`; the parser it adds
# sets `func(args) -> int` as its default. Only the command being run builds its parser (`bench` imports
# every benchmark, and with them torch); the others are listed by their module's first docstring line.
COMMANDS = ["generate", "bench", "run", "status", "validate", "submit", "jobs", "logs", "backfill", "sheet",
            "prompts", "export", "review", "review-report"]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: the named command's in full, every command listed (all in full when argv is None)."""
    parser = OneLineParser(prog="doodl-ray", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    wanted = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name in COMMANDS:
        module = importlib.import_module(f"doodl_ray.commands.{name.replace('-', '_')}")
        if wanted is None or name == wanted:
            module.add_parser(sub)
        else:
            paragraph = " ".join(module.__doc__.strip().split("\n\n")[0].split())
            summary = paragraph.split(": ", 1)[-1].split(". ")[0].rstrip(".")
            sub.add_parser(name, help=summary.replace("%", "%%"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("doodl-ray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(error_line(args.command, exc), file=sys.stderr)
        return getattr(exc, "exit_status", 1)


if __name__ == "__main__":
    sys.exit(main())
