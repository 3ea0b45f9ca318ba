"""`dwscan`: the command line, one module per command group. Commands parse, call the library,
and print; the flag groups they share are in `flags`."""

from __future__ import annotations

import argparse
import sys

from dwscan.cli import query, scan, stages
from dwscan.io.storage import ModelIdError, OutputWriteError, UnreadableTableError


def build_parser() -> argparse.ArgumentParser:
    """Every command group's commands, in data order; each parses to its own `handler`."""
    parser = argparse.ArgumentParser(
        prog="dwscan", description="Find the recurring clusters in trained depthwise kernels.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for group in (scan, stages, query):
        for name, handler in group.add_commands(subparsers).items():
            subparsers.choices[name].set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dwscan.io.accuracy import SourceError
    from dwscan.io.lock import OutputLocked
    from dwscan.io.storage import as_location, check_writable
    from dwscan.io.zoo import HubListingError

    args = build_parser().parse_args(argv)
    try:
        if args.command in _WRITERS:
            check_writable(as_location(args.out))
        return args.handler(args)
    except (SourceError, ModelIdError, OutputWriteError, HubListingError,
            UnreadableTableError) as error:
        print(f"dwscan {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OutputLocked as error:
        print(f"dwscan {args.command}: refused: {error}", file=sys.stderr)
        return 3


# Commands that write under --out: refused at once, with one line, when it cannot be written.
_WRITERS = {"run", "scan", "rescan", "train", "assign", "report", "substitute"}
