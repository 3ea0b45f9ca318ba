"""How far the answers of several runs lie apart, from their output folders alone: the three
measures of issue 18 (METHOD.md 4b), so that an analyst who runs again with another `--seed`, or
scans the same zoo twice, sees what moved and what held.

- each model's headline clustered fraction per kernel size, and its spread over the runs;
- each family x polarity share of a model's valid kernels (the kinds table), and its spread;
- per kernel size and ordered pair of runs (A, B): the share of A's clustered kernels whose
  consensus template B has a template within MATCH_COSINE of.

Figures are compared only where every run has them (models scanned in all, sizes in all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dwscan import schemas
from dwscan.io.arrays import list_column_to_matrix
from dwscan.io.storage import Location, OutputLayout, read_table_as
from dwscan.io.template_set import read_template_set_record

# Issue 18's bar: a template is the same pattern in another run at this cosine or above.
MATCH_COSINE = 0.95


@dataclass
class RunAgreement:
    """The runs compared (their folders, in order) and the three measures, as Arrow tables."""

    runs: list[str]
    match_cosine: float
    settings: list[str]  # where the runs' threshold or sign handling differ: what differs
    fractions: pa.Table  # model_id, kernel_size, values (one per run), spread_points
    pattern_shares: pa.Table  # model_id, kernel_size, family, polarity, values, spread_points
    matched_templates: pa.Table  # kernel_size, run, other_run, matched_share


def compare_runs(roots: list[str | Location], match_cosine: float = MATCH_COSINE
                 ) -> RunAgreement:
    """The three measures over the reports and templates of finished runs (`dwscan run`, or
    its stages up to `dwscan report`) in the folders `roots`."""
    if len(roots) < 2:
        raise ValueError("give two or more output folders")
    layouts = [OutputLayout(root) for root in roots]
    fractions = [read_table_as(layout.clusterability_path, schemas.CLUSTERABILITY)
                 for layout in layouts]
    shares = [read_table_as(layout.table_path(schemas.PATTERN_SHARES), schemas.PATTERN_SHARES)
              for layout in layouts]
    templates = [read_table_as(layout.templates_path, schemas.TEMPLATES) for layout in layouts]
    records = [read_template_set_record(layout.template_set_path) for layout in layouts]
    settings = [f"{name} differs: " + " / ".join(str(getattr(r, name)) for r in records)
                for name in ("threshold", "sign_invariant")
                if len({getattr(r, name) for r in records}) > 1]
    return RunAgreement(runs=[str(layout.root) for layout in layouts], match_cosine=match_cosine,
                        settings=settings,
                        fractions=fraction_spread(fractions),
                        pattern_shares=pattern_share_spread(shares),
                        matched_templates=matched_template_shares(
                            templates, match_cosine, any(r.sign_invariant for r in records)))


def _spread_table(keys: list[str], values: dict[tuple, list[float]]) -> pa.Table:
    """One row per key with each run's value and their spread (highest - lowest) in points."""
    ordered = sorted(values, key=lambda key: tuple((v is None, v) for v in key))
    columns: dict[str, list] = {name: [key[i] for key in ordered] for i, name in enumerate(keys)}
    columns["values"] = [values[key] for key in ordered]
    columns["spread_points"] = [100 * (max(values[key]) - min(values[key])) for key in ordered]
    return pa.table(columns)


def fraction_spread(clusterabilities: list[pa.Table]) -> pa.Table:
    """Per model and kernel size that every run has: each run's headline clustered fraction
    (`values`) and their spread in points."""
    per_run = [{(r["model_id"], r["kernel_size"]): r["clustered_fraction"]
                for r in table.select(["model_id", "kernel_size", "clustered_fraction"]).to_pylist()
                if r["kernel_size"] is not None and r["clustered_fraction"] is not None}
               for table in clusterabilities]
    common = set.intersection(*(set(run) for run in per_run))
    return _spread_table(["model_id", "kernel_size"],
                         {key: [run[key] for run in per_run] for key in common})


def pattern_share_spread(pattern_shares: list[pa.Table]) -> pa.Table:
    """Per model, kernel size, family and polarity: each run's headline share of the model's
    valid kernels (0 where a run has no template of that kind for the model) and their spread
    in points; only models and sizes every run has."""
    per_run = [{(r["model_id"], r["kernel_size"], r["family"], r["polarity"]): r["share"]
                for r in table.select(["model_id", "kernel_size", "family", "polarity",
                                       "share"]).to_pylist() if r["model_id"] is not None}
               for table in pattern_shares]
    common = set.intersection(*({key[:2] for key in run} for run in per_run))
    kinds = {key for run in per_run for key in run if key[:2] in common}
    return _spread_table(["model_id", "kernel_size", "family", "polarity"],
                         {key: [run.get(key) or 0.0 for run in per_run] for key in kinds})


def matched_template_shares(templates: list[pa.Table], match_cosine: float = MATCH_COSINE,
                            sign_invariant: bool = False) -> pa.Table:
    """Per kernel size every run has, and ordered pair of runs (`run`, `other_run`: positions
    in the list): the share of `run`'s clustered kernels (by its templates' `share`) whose
    template `other_run` has a template within `match_cosine` of."""
    by_size = [_templates_by_size(table) for table in templates]
    sizes = sorted(set.intersection(*(set(run) for run in by_size)))
    rows: dict[str, list] = {"kernel_size": [], "run": [], "other_run": [], "matched_share": []}
    for k in sizes:
        for a, (weights, share) in enumerate(run[k] for run in by_size):
            for b, run in enumerate(by_size):
                if a == b:
                    continue
                similarity = weights @ run[k][0].T
                if sign_invariant:
                    similarity = np.abs(similarity)
                matched = similarity.max(axis=1) >= match_cosine
                rows["kernel_size"].append(k)
                rows["run"].append(a)
                rows["other_run"].append(b)
                rows["matched_share"].append(float(share[matched].sum() / share.sum()))
    return pa.table(rows, schema=pa.schema([("kernel_size", pa.int32()), ("run", pa.int32()),
                                            ("other_run", pa.int32()),
                                            ("matched_share", pa.float64())]))


def _templates_by_size(templates: pa.Table) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per kernel size: (templates' weights, their share of the clustered kernels)."""
    found = {}
    sizes = templates.column("kernel_size").to_numpy()
    for k in np.unique(sizes):
        rows = templates.filter(pa.array(sizes == k))
        try:
            weights = list_column_to_matrix(rows.column("weights"), int(k) * int(k))
        except ValueError as error:
            raise ValueError(f"templates of kernel size {k}: {error}") from error
        found[int(k)] = (weights, rows.column("share").to_numpy())
    return found


def format_agreement(agreement: RunAgreement, rows: int = 20) -> str:
    """The measures as text: the fractions and the family x polarity shares (all of them, or
    the `rows` widest spreads, with the spreads' median and largest), and each size's matched
    shares (the smallest first)."""
    lines = ["Runs: " + "; ".join(f"{i}: {run}" for i, run in enumerate(agreement.runs))]
    lines += [f"WARNING: {what}: the runs do not measure the same thing"
              for what in agreement.settings]
    lines += ["", *_spread_lines("Clustered fraction (the headline) per model and kernel size",
                                 agreement.fractions.to_pylist(), rows)]
    lines += ["", *_spread_lines("Family x polarity shares of the valid kernels",
                                 agreement.pattern_shares.to_pylist(), rows)]
    lines += ["", "Clustered kernels whose template another run has (cosine >= "
              f"{agreement.match_cosine}), per kernel size, run -> other run:"]
    matched = agreement.matched_templates.to_pylist()
    for k in sorted({row["kernel_size"] for row in matched}):
        pairs = sorted((row for row in matched if row["kernel_size"] == k),
                       key=lambda r: r["matched_share"])
        lines.append(f"  {k}x{k}: " + ", ".join(
            f"{r['run']}->{r['other_run']} {100 * r['matched_share']:.1f}%" for r in pairs))
    return "\n".join(lines)


def _spread_lines(title: str, rows: list[dict], limit: int) -> list[str]:
    """A title with the spreads' median and largest, then each row (model, size, kind where
    there is one: each run's value and the spread), the widest `limit` where there are more."""
    spreads = [row["spread_points"] for row in rows]
    head = f"{title}: {len(rows)} rows"
    if rows:
        head += f", spread median {np.median(spreads):.1f}, largest {max(spreads):.1f} points"
    if len(rows) > limit:
        rows = sorted(rows, key=lambda r: -r["spread_points"])[:limit]
        head += f", the {limit} widest"
    lines = [head + ":"]
    for row in rows:
        kind = " ".join(row[part] for part in ("family", "polarity") if row.get(part))
        values = " / ".join(f"{100 * v:.1f}" for v in row["values"])
        name = f"{row['model_id']} {row['kernel_size']}x{row['kernel_size']} {kind}".rstrip()
        lines.append(f"  {name}: {values}%, spread {row['spread_points']:.1f} points")
    return lines
