"""BENCHMARKS.md is generated: its tables by `python -m benchmarks`, its analysis from
benchmarks/analysis.md. Text written into BENCHMARKS.md by hand is lost at the next run."""

from pathlib import Path

from benchmarks.__main__ import read_sections, write_benchmarks

ROOT = Path(__file__).resolve().parents[2]


def test_benchmarks_md_is_what_a_regeneration_writes(tmp_path):
    """Rewriting BENCHMARKS.md from its own sections and analysis.md changes nothing: the
    hand-written analysis lives in benchmarks/analysis.md (edit it there)."""
    out = tmp_path / "BENCHMARKS.md"
    write_benchmarks(out, read_sections(ROOT / "BENCHMARKS.md"))
    assert out.read_text() == (ROOT / "BENCHMARKS.md").read_text()
