"""Reading finished outputs: `dwscan query` (SQL, printed as a table, CSV or Parquet) and
`dwscan compare` (how far several runs' answers lie apart)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from dwscan.reports.tables import format_text_table


def add_commands(commands: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """SQL over the outputs."""
    query = commands.add_parser(
        "query", help="run SQL (DuckDB) over the outputs",
        description="Run a DuckDB query over views named after every table: "
                    + ", ".join(schemas_names()) + " (columns: schemas/README.md).",
        epilog='example: dwscan query "SELECT model_id, clustered_fraction, top1 FROM '
               'clusterability WHERE kernel_size IS NULL ORDER BY top1"')
    query.add_argument("sql", help="the query")
    query.add_argument("--out", default="dwscan-out", metavar="DIR|URI",
                       help="output folder to query (default: ./dwscan-out)")
    query.add_argument("--format", choices=["table", "csv", "parquet"], default="table",
                       help="print an aligned table (default) or CSV; parquet needs --output")
    query.add_argument("--output", type=Path, default=None,
                       help="write the result to this file instead of printing it")
    query.add_argument("--max-rows", type=int, default=100,
                       help="rows printed with --format table (default: 100)")
    compare = commands.add_parser(
        "compare", help="how far several runs' answers lie apart (another --seed, a re-scan)",
        description="Compare finished runs: each model's clustered fraction per kernel size, its "
                    "family x polarity shares, and the share of each run's clustered kernels "
                    "whose template another run has (METHOD.md 4b).",
        epilog="example: dwscan run --seed 1 --out seed1 && dwscan compare dwscan-out seed1")
    compare.add_argument("outs", nargs="+", metavar="OUT", help="two or more output folders")
    compare.add_argument("--match-cosine", type=float, default=None, metavar="C",
                         help="a template is matched by another run's within this cosine "
                              "(default: 0.95, issue 18's bar)")
    compare.add_argument("--plot", type=Path, default=None, metavar="PNG",
                         help="also draw the measures to this PNG file")
    compare.add_argument("--rows", type=int, default=20, metavar="N",
                         help="at most this many fraction and family x polarity rows each, the "
                              "widest spreads (default: 20)")
    return {"query": command_query, "compare": command_compare}


def command_compare(args: argparse.Namespace) -> int:
    from dwscan.reports.agreement import MATCH_COSINE, compare_runs, format_agreement

    try:
        agreement = compare_runs(args.outs, MATCH_COSINE if args.match_cosine is None
                                 else args.match_cosine)
    except FileNotFoundError as error:
        print(f"dwscan compare: error: {error.filename or error}: not a finished run (run "
              "dwscan run, or dwscan report, on it first)", file=sys.stderr)
        return 2
    except ValueError as error:  # one folder; a table dwscan did not write (templates of the
        # wrong width)
        print(f"dwscan compare: error: {error}", file=sys.stderr)
        return 2
    print(format_agreement(agreement, args.rows))
    if args.plot:
        from dwscan.reports.plots import plot_agreement

        print(f"plot: {plot_agreement(agreement, args.plot)}")
    return 0


def schemas_names() -> list[str]:
    from dwscan import schemas

    return list(schemas.ALL)


def command_query(args: argparse.Namespace) -> int:
    import pyarrow.csv

    from dwscan.io.query import QueryError, query_table, query_to_parquet

    try:
        if args.format == "parquet":
            if args.output is None:
                raise SystemExit("dwscan: error: --format parquet needs --output FILE")
            rows = query_to_parquet(args.out, args.sql, args.output)
            print(f"wrote {rows} rows to {args.output}")
            return 0
        table = query_table(args.out, args.sql)
    except (QueryError, FileNotFoundError) as error:
        print(f"dwscan query: {error}", file=sys.stderr)
        return 2
    if args.format == "csv":
        sink = str(args.output) if args.output else sys.stdout.buffer
        pyarrow.csv.write_csv(table, sink)
        return 0
    text = format_arrow_table(table, args.max_rows)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        print(text)
    return 0


def format_arrow_table(table, max_rows: int) -> str:
    """A query result as aligned text: numbers to the right, at most 4 decimals, nulls as NULL."""
    import pyarrow as pa

    def cell(value) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, float):
            text = f"{value:.4f}".rstrip("0")
            return text + "0" if text.endswith(".") else text
        return str(value)

    numeric = {i for i, f in enumerate(table.schema)
               if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
               or pa.types.is_decimal(f.type)}
    lines = [table.column_names] + [[cell(v) for v in row.values()]
                                    for row in table.slice(0, max_rows).to_pylist()]
    more = f"\n({table.num_rows} rows, {max_rows} shown)" if table.num_rows > max_rows else ""
    left = set(range(len(table.column_names))) - numeric
    return format_text_table(lines, left_aligned=left) + more
