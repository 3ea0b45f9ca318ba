"""The model catalogue (OUT/models.parquet): a model's row as a scan records it, and which
models the later stages take."""

from __future__ import annotations

import pyarrow as pa

from dwscan.io.zoo import ModelSpec
from dwscan.text import one_line


def model_row(spec: ModelSpec, error: str | None = None, status: str | None = None) -> dict:
    """A MODELS row for `spec`: 'failed' with `error` (squashed to one line) when one is given.
    Nothing is read here: the config.json fields are filled in by the task that scans it."""
    return {"model_id": spec.model_id, "revision": spec.revision, "source": spec.source,
            "accuracy_key": spec.accuracy_key, "architecture": None, "pretrained_tag": None,
            "input_size": None, "status": status or ("failed" if error else "ok"),
            "error": one_line(error) if error else None, "warnings": None,
            "n_layers": 0, "n_filters": 0, "bytes_fetched": None, "range_support": None,
            "skipped_layers": [],
            "peak_memory_bytes": None,
            "attempts": None, "scanned_at": None}  # set when merged into models.parquet


def ok_model_ids(models: pa.Table) -> list[str]:
    """Models whose kernels are in OUT: scanned without error, at least one depthwise filter."""
    return [r["model_id"] for r in models.to_pylist() if r["status"] == "ok" and r["n_filters"] > 0]
