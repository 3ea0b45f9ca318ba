"""The model catalogue (OUT/models.parquet): a model's row as a scan records it, and which
models the later stages take."""

from __future__ import annotations

import pyarrow as pa

from dwscan.io.zoo import ModelSpec
from dwscan.text import one_line


def model_row(spec: ModelSpec, error: str | None = None, status: str | None = None) -> dict:
    """A MODELS row for `spec`: 'failed' with `error` (squashed to one line) when one is given.
    Nothing is read here: the config.json fields are filled in by the task that scans it."""
    revision = (one_line(spec.revision, 100) or None) if spec.revision else None  # from a server
    return {"model_id": spec.model_id, "revision": revision, "source": spec.source,
            "accuracy_key": spec.accuracy_key, "architecture": None, "pretrained_tag": None,
            "input_size": None, "status": status or ("failed" if error else "ok"),
            "error": one_line(error) if error else None, "warnings": None,
            "n_layers": 0, "n_filters": 0, "bytes_fetched": None, "range_support": None,
            "skipped_layers": [],
            "peak_memory_bytes": None, "attempts": None, "scanned_at": None,  # set when merged
            "last_error": None, "last_attempt_at": None, "failed_revision": None,
            "failed_attempts": None}  # set when a failed re-scan keeps the last good scan


def kept_last_good_scan(row: dict, previous: dict | None) -> bool:
    """Whether a scan's `row` is a failure that must not replace `previous`, the model's row in
    models.parquet: a hub outage or a truncated file must not cost the last good kernels."""
    return row["status"] == "failed" and previous is not None and previous["status"] == "ok"


def scan_failures(rows: list[dict]) -> list[tuple[str, str]]:
    """(model id, reason) of each model whose scan failed, of one run's MODELS rows: 'failed'
    rows, and 'ok' rows that a failed scan left as they were (only a failure sets last_error)."""
    failures = []
    for r in rows:
        if r["status"] == "failed":
            failures.append((r["model_id"], r["error"]))
        elif r["last_error"] is not None:
            failures.append((r["model_id"], f"{r['last_error']} (its data is from its last good "
                                            f"scan, of {r['scanned_at']:%Y-%m-%d %H:%M} UTC)"))
    return failures


def ok_model_ids(models: pa.Table) -> list[str]:
    """Models whose kernels are in OUT: scanned without error, at least one depthwise filter."""
    return [r["model_id"] for r in models.to_pylist() if r["status"] == "ok" and r["n_filters"] > 0]
