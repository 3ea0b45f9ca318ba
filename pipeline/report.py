"""Stage 6: clusterability per (model, kernel size) and per model, joined to ImageNet top-1."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas


def clusterability_table(assignments: pa.Table, threshold: float,
                         chance: dict[int, float] | None = None,
                         accuracy_keys: dict[str, str | None] | None = None,
                         top1: dict[str, float] | None = None,
                         sign_invariant: bool = False) -> pa.Table:
    """CLUSTERABILITY rows from ASSIGNMENTS rows: one per (model, size), one per model (size null).

    `clustered_fraction` is over valid kernels only; `chance_fraction` is the same measure for
    random Gaussian kernels against the same templates (a per-size figure, averaged with the
    model's valid counts as weights on the all-sizes row).
    """
    chance, accuracy_keys, top1 = chance or {}, accuracy_keys or {}, top1 or {}
    flags = pa.table({
        "model_id": assignments.column("model_id"),
        "kernel_size": assignments.column("kernel_size"),
        "invalid": pc.is_valid(assignments.column("invalid_reason")),
        "clustered": pc.is_valid(assignments.column("template_id")),
    })
    grouped = flags.group_by(["model_id", "kernel_size"]).aggregate(
        [("invalid", "count"), ("invalid", "sum"), ("clustered", "sum")])
    rows = []
    per_model: dict[str, list[dict]] = {}
    for g in grouped.sort_by([("model_id", "ascending"), ("kernel_size", "ascending")]).to_pylist():
        row = _row(g["model_id"], g["kernel_size"], g["invalid_count"], g["invalid_sum"],
                   g["clustered_sum"], chance.get(g["kernel_size"]))
        per_model.setdefault(g["model_id"], []).append(row)
    for model_id, size_rows in per_model.items():
        total = _row(model_id, None, sum(r["n_filters"] for r in size_rows),
                     sum(r["n_invalid"] for r in size_rows),
                     sum(r["n_clustered"] for r in size_rows), None)
        weights = [r["n_filters"] - r["n_invalid"] for r in size_rows]
        if all(r["chance_fraction"] is not None for r in size_rows) and sum(weights):
            total["chance_fraction"] = float(np.average(
                [r["chance_fraction"] for r in size_rows], weights=weights))
        for row in (total, *size_rows):
            key = accuracy_keys.get(model_id, model_id)
            row.update(threshold=threshold, sign_invariant=sign_invariant, accuracy_key=key,
                       top1=top1.get(key) if key else None)
            rows.append(row)
    return pa.Table.from_pylist(rows, schema=schemas.CLUSTERABILITY)


# Cosine thresholds of the sweep: 0.50, 0.55, ..., 0.95.
SWEEP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def threshold_sweep_table(assignments: pa.Table,
                          thresholds: tuple[float, ...] = SWEEP_THRESHOLDS) -> pa.Table:
    """THRESHOLD_SWEEP rows: how a model's clustered fraction moves with the threshold."""
    encoded = pc.dictionary_encode(assignments.column("model_id")).combine_chunks()
    names = encoded.dictionary.to_pylist()
    model_index = encoded.indices.to_numpy()  # one int per row: no Python strings per kernel
    sizes = assignments.column("kernel_size").to_numpy()
    valid = pc.is_null(assignments.column("invalid_reason")).to_numpy(zero_copy_only=False)
    cosine = pc.fill_null(assignments.column("cosine"), -2.0).to_numpy()
    rows = []
    for index in np.argsort(names, kind="stable"):
        mine = model_index == index
        for k in [None, *sorted(set(np.unique(sizes[mine]).tolist()))]:
            rows_of = mine & valid & (True if k is None else sizes == k)
            cos = np.sort(cosine[rows_of])
            n_valid = len(cos)
            for t in thresholds:
                n = int(n_valid - np.searchsorted(cos, np.float32(t), side="left"))
                rows.append({"model_id": names[index], "kernel_size": k, "threshold": t,
                             "n_valid": n_valid, "n_clustered": n,
                             "clustered_fraction": n / n_valid if n_valid else None})
    return pa.Table.from_pylist(rows, schema=schemas.THRESHOLD_SWEEP)


def _row(model_id: str, kernel_size: int | None, n_filters: int, n_invalid: int,
         n_clustered: int, chance: float | None) -> dict:
    n_valid = n_filters - n_invalid
    return {"model_id": model_id, "kernel_size": kernel_size, "n_filters": n_filters,
            "n_invalid": n_invalid, "n_clustered": n_clustered,
            "clustered_fraction": n_clustered / n_valid if n_valid else None,
            "chance_fraction": chance}


def format_clusterability(table: pa.Table) -> str:
    """The table as text, models in rows; the all-sizes row first for each model."""
    header = ["model", "k", "filters", "invalid", "clustered", "chance", "top1"]
    lines = [header]
    for r in table.to_pylist():
        lines.append([
            r["model_id"], "all" if r["kernel_size"] is None else f"{r['kernel_size']}x"
            f"{r['kernel_size']}", str(r["n_filters"]), str(r["n_invalid"]),
            _pct(r["clustered_fraction"]), _pct(r["chance_fraction"]),
            "-" if r["top1"] is None else f"{r['top1']:.3f}"])
    return format_text_table(lines)


def format_text_table(lines: list[list[str]], left_aligned: int = 1) -> str:
    """Rows of cells as aligned text: the first `left_aligned` columns to the left, the rest right."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < left_aligned else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths))) for line in lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
