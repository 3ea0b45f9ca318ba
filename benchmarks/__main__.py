"""`python -m benchmarks`: run every benchmark, print the rows, and write BENCHMARKS.md.

Speed and memory targets are checked here, never in unit tests. Each module's `run()` returns
rows (dicts); this file only formats them with the machine they ran on.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

from benchmarks import (
    assign,
    end_to_end,
    extract,
    hub,
    hub_latency,
    report,
    scale,
    train,
    train_memory,
    yardstick,
    zoo,
)

BENCHMARKS = {"extract": extract.run, "assign": assign.run, "scale": scale.run, "train": train.run,
              "train_memory": train_memory.run, "hub": hub.run, "hub_latency": hub_latency.run,
              "end_to_end": end_to_end.run, "report": report.run, "yardstick": yardstick.run,
              "zoo": zoo.run}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    versions = ", ".join(f"{p} {version(p)}" for p in
                         ("ray", "torch", "faiss-cpu", "pyarrow", "numpy", "huggingface_hub"))
    return (f"{os.cpu_count()} cores ({cpu}), {platform.machine()}, Python "
            f"{platform.python_version()}; {versions}; {datetime.date.today().isoformat()}")


def as_markdown(rows: list[dict]) -> str:
    """One table per run of rows that share the same columns."""
    tables: dict[tuple, list[dict]] = {}
    for row in rows:
        tables.setdefault(tuple(row), []).append(row)
    out = []
    for columns, group in tables.items():
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in group]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--write", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--models", type=int, nargs="+", default=None, metavar="N",
                        help=f"zoo sizes of the zoo and hub_latency benchmarks (default: "
                             f"{zoo.SIZES}, {hub_latency.SIZES})")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    # a subset keeps the others' rows; every run keeps the sections measured elsewhere (gpu:
    # `python -m benchmarks.gpu` on a GPU machine, pasted by hand)
    sections = {n: text for n, text in read_sections(args.write).items()
                if args.names or n not in BENCHMARKS}
    for name in args.names or list(BENCHMARKS):
        run = BENCHMARKS[name]
        sized = name in ("zoo", "hub_latency") and args.models
        text = as_markdown(run(tuple(args.models)) if sized else run())
        print(f"\n## {name}\n{text}", flush=True)
        sections[name] = section(name, text)
        write_benchmarks(args.write, sections)  # after each: a later failure loses nothing
    return 0


def section(name: str, table: str) -> str:
    about = (sys.modules[BENCHMARKS[name].__module__].__doc__ or "").strip()
    return f"## {name}\n\n{about}\n\nRun on: {machine()}.\n\n{table}\n"


def write_benchmarks(path: Path, sections: dict[str, str]) -> None:
    order = [n for n in BENCHMARKS if n in sections] + [n for n in sections if n not in BENCHMARKS]
    parts = ["# Benchmarks\n\nMeasured by `python -m benchmarks` (each section says where and when).\n"]
    parts += [sections[n] for n in order]
    analysis = Path(__file__).with_name("analysis.md")  # what the numbers mean, by hand
    if analysis.exists():
        parts.append(analysis.read_text())
    path.write_text("\n".join(parts))


def read_sections(path: Path) -> dict[str, str]:
    """The `## name` sections of an earlier BENCHMARKS.md (up to the hand-written analysis)."""
    if not path.exists():
        return {}
    text = path.read_text()
    analysis = Path(__file__).with_name("analysis.md")
    if analysis.exists():
        heading = analysis.read_text().splitlines()[0]
        text = text.split(heading, 1)[0]
    sections = {}
    for chunk in text.split("\n## ")[1:]:
        name = chunk.split("\n", 1)[0].strip()
        sections[name] = f"## {chunk.rstrip()}\n"
    return sections


if __name__ == "__main__":
    sys.exit(main())
