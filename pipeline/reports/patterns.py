"""Kinds of pattern: a template's family x polarity ("centre-surround on", "first-derivative
+", "other"). They are the report's first grouping, on the page, in the printed summary and in
the label plots, because a zoo's dozens of single templates only read well sorted into a few
kinds; each single template is the detail beneath its kind."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from dwscan.reports.tables import (
    MEDIAN_MIN_SEEDS,
    UNCLUSTERED,
    format_text_table,
    pct_text,
    range_text,
)

OTHER = "other"  # the family of a template no parametric family fits (method.families)


def kind_name(family: str | None, polarity: str | None) -> str:
    """One name per family x polarity: 'centre-surround on', 'first-derivative +', 'other'."""
    return f"{family or OTHER} {polarity}" if polarity else (family or OTHER)


def kind_order(kind: str) -> tuple[bool, bool, str]:
    """Kinds in a fixed order: by name, then 'other', then 'unclustered'."""
    return kind == UNCLUSTERED, kind == OTHER, kind


def label_kinds(templates: pa.Table) -> dict[str, str]:
    """Template label -> its kind (the first template with the label names it; a label names
    its family and polarity, so templates sharing a label share a kind)."""
    kinds: dict[str, str] = {}
    for label, family, polarity in zip(templates.column("label").to_pylist(),
                                       templates.column("family").to_pylist(),
                                       templates.column("polarity").to_pylist()):
        kinds.setdefault(label, kind_name(family, polarity))
    return kinds


def kind_of_label(kinds: dict[str, str], label: str) -> str:
    """A label's kind; 'unclustered' stays itself, a label of no template is 'other'."""
    return UNCLUSTERED if label == UNCLUSTERED else kinds.get(label, OTHER)


def with_kind(table: pa.Table, kinds: list[str], sort_keys: list[str]) -> pa.Table:
    """`table` with a `kind` column (one per row), its rows sorted by `sort_keys` with the kind
    in kind_order where `sort_keys` names it."""
    rows = [{**r, "kind": k} for r, k in zip(table.to_pylist(), kinds)]
    rows.sort(key=lambda r: tuple(
        kind_order(r["kind"]) if key == "kind" else (r[key] is not None, r[key] or 0)
        for key in sort_keys))
    return pa.Table.from_pylist(rows, schema=table.schema.append(pa.field("kind", pa.string())))


def pattern_kinds(pattern_shares: pa.Table) -> list[str]:
    """The kind of each PATTERN_SHARES row."""
    return [kind_name(f, p) for f, p in zip(pattern_shares.column("family").to_pylist(),
                                            pattern_shares.column("polarity").to_pylist())]


def labels_with_kind(table: pa.Table, kinds: dict[str, str], sort_keys: list[str]) -> pa.Table:
    """Rows with a template `label` (LABEL_SHARES and its family means) with the label's kind
    (label_kinds), sorted as with_kind."""
    return with_kind(table, [kind_of_label(kinds, label)
                             for label in table.column("label").to_pylist()], sort_keys)


SUMMARY_WIDTH = 96  # characters a line of the printed summary keeps under


def format_kinds(pattern_shares: pa.Table, templates: pa.Table) -> str:
    """The printed summary's patterns: first the zoo's share of each kind per kernel size (with
    its range over the seeds' own template sets), then each size's single templates, a line
    per kind, wrapped under SUMMARY_WIDTH."""
    zoo = pattern_shares.filter(pc.is_null(pattern_shares.column("model_id")))
    sizes = sorted(set(zoo.column("kernel_size").to_pylist()))
    cells: dict[str, dict[int, str]] = {}
    for row, kind in zip(zoo.to_pylist(), pattern_kinds(zoo)):
        cells.setdefault(kind, {})[row["kernel_size"]] = (
            f"{pct_text(row['share'])} ({range_text(row['share_seed_min'], row['share_seed_max'])})"
            if row["share_seed_min"] is not None else pct_text(row["share"]))
    # per size: a size can keep fewer seeds than another (untrained_members)
    medians = {n >= MEDIAN_MIN_SEEDS for n in templates.column("n_seeds").to_pylist() or [1]}
    whose = ("the median of the seeds'" if medians == {True}
             else "the consensus templates'" if medians == {False}
             else f"the median of the seeds', the consensus templates' for a size of fewer "
                  f"than {MEDIAN_MIN_SEEDS} seeds")
    lines = [f"Kinds of pattern over the zoo (share of valid kernels, {whose}; seed range):"]
    if cells:
        lines.append(format_text_table(
            [["kind", *(f"{k}x{k}" for k in sizes)]]
            + [[kind, *(cells[kind].get(k, "-") for k in sizes)]
               for kind in sorted(cells, key=kind_order)]))
    for k in sorted(set(templates.column("kernel_size").to_pylist())):
        rows = sorted((r for r in templates.to_pylist() if r["kernel_size"] == k),
                      key=lambda r: -r["share"])
        lines += ["", f"Templates {k}x{k} by kind (share of clustered kernels; seeds of "
                      f"{rows[0]['n_seeds']} that found it):"]
        by_kind: dict[str, list[str]] = {}
        for r in rows:
            by_kind.setdefault(kind_name(r["family"], r["polarity"]), []).append(
                f"#{r['template_id']} {r['label']} {100 * r['share']:.0f}% "
                f"({r['support']}/{r['n_seeds']})")
        for kind in sorted(by_kind, key=kind_order):
            lines += _packed(f"  {kind}: ", by_kind[kind], "      ")
    return "\n".join(lines)


def _packed(first: str, entries: list[str], indent: str) -> list[str]:
    """`entries` joined by commas into lines under SUMMARY_WIDTH, an entry never split."""
    lines, line = [], first
    for i, entry in enumerate(entries):
        text = entry + ("," if i < len(entries) - 1 else "")
        if line != first and len(line) + 1 + len(text) > SUMMARY_WIDTH:
            lines.append(line)
            line = indent + text
        else:
            line += ("" if line == first else " ") + text
    return [*lines, line]
