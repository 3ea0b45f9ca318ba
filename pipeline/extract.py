"""Stage 1: pull every depthwise convolution kernel out of a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

import schemas
from pipeline.arrays import matrices_to_list_array
from pipeline.checkpoints import FLOAT_DTYPES, CheckpointError, TensorInfo, open_checkpoint
from pipeline.storage import OutputLayout, write_table
from pipeline.zoo import HUB_PREFIX, ModelSpec, config_beside, timm_metadata


@dataclass
class Extraction:
    """What one checkpoint gave: its kernels and the depthwise-like layers that were not kept."""

    kernels: pa.Table
    n_layers: int
    skipped_layers: list[dict] = field(default_factory=list)

    @property
    def n_filters(self) -> int:
        return self.kernels.num_rows


def depthwise_verdict(info: TensorInfo) -> str | None:
    """'keep', a skip reason, or None when the tensor is not a depthwise conv weight at all.

    A depthwise weight has shape (C*m, 1, kh, kw): one input channel per group. Shape alone cannot
    tell it from an ordinary conv on a 1-channel input, which is rare in DS-CNNs.
    """
    shape = info.shape
    if len(shape) != 4 or shape[1] != 1 or max(shape[2], shape[3]) < 2:
        return None
    if shape[2] != shape[3]:
        return f"non-square kernel {shape[2]}x{shape[3]}"
    if info.dtype not in FLOAT_DTYPES:
        return f"dtype {info.dtype} not supported"
    return "keep"


def extract_depthwise_kernels(checkpoint: str | Path, model_id: str) -> Extraction:
    """Read the depthwise kernels of one local checkpoint, in network order, as a KERNELS table."""
    with open_checkpoint(checkpoint) as ckpt:
        return extract_from_reader(ckpt, model_id)


def extract_from_reader(ckpt, model_id: str) -> Extraction:
    """Depthwise kernels from any reader with `tensor_infos()` and `read(name)` (and, if it has
    one, `prefetch(names)`, called once with every tensor it will be asked for)."""
    kept: list[TensorInfo] = []
    skipped: list[dict] = []
    for info in ckpt.tensor_infos():
        verdict = depthwise_verdict(info)
        if verdict == "keep":
            kept.append(info)
        elif verdict is not None:
            skipped.append({"layer": info.name, "shape": "x".join(map(str, info.shape)),
                            "reason": verdict})
    if hasattr(ckpt, "prefetch"):
        ckpt.prefetch([info.name for info in kept])
    columns: dict[str, list] = {name: [] for name in schemas.KERNELS.names}
    n_layers = len(kept)
    for index, info in enumerate(kept):
        channels, _, k, _ = info.shape
        values = ckpt.read(info.name).reshape(channels, k * k).astype(np.float32, copy=False)
        columns["model_id"].append(np.full(channels, model_id, dtype=object))
        columns["layer"].append(np.full(channels, info.name, dtype=object))
        columns["layer_index"].append(np.full(channels, index, dtype=np.int32))
        columns["depth"].append(np.full(channels, index / max(n_layers - 1, 1), np.float32))
        columns["channel"].append(np.arange(channels, dtype=np.int32))
        columns["kernel_size"].append(np.full(channels, k, dtype=np.int32))
        columns["weights"].append(values)
    return Extraction(kernels=_kernels_table(columns), n_layers=n_layers, skipped_layers=skipped)


def _kernels_table(columns: dict[str, list]) -> pa.Table:
    if not columns["weights"]:
        return schemas.KERNELS.empty_table()
    arrays = {}
    for name, parts in columns.items():
        if name == "weights":
            arrays[name] = matrices_to_list_array(parts)
        else:
            arrays[name] = pa.array(np.concatenate(parts), type=schemas.KERNELS.field(name).type)
    return pa.table(arrays, schema=schemas.KERNELS)


def model_row(spec: ModelSpec, error: str | None = None, status: str | None = None) -> dict:
    """A MODELS row for `spec`: 'failed' with `error` (squashed to one line) when one is given."""
    local = not spec.source.startswith(HUB_PREFIX)
    metadata = timm_metadata(config_beside(spec.source) if local else {})
    return {"model_id": spec.model_id, "revision": spec.revision, "source": spec.source,
            "accuracy_key": spec.accuracy_key, "architecture": metadata["architecture"],
            "pretrained_tag": metadata["pretrained_tag"], "input_size": metadata["input_size"],
            "status": status or ("failed" if error else "ok"),
            "error": " ".join(error.split())[:500] if error else None,
            "n_layers": 0, "n_filters": 0, "bytes_fetched": None, "skipped_layers": [],
            "attempts": None, "scanned_at": None}  # set when merged into models.parquet


def extract_model_to_parquet(spec: ModelSpec, out: str | Path) -> dict:
    """Extract one model into OUT/kernels/<model>.parquet; its MODELS row, failed or not.

    Any failure is this model's alone: it is recorded with a one-line reason and its stale
    kernel file (from an earlier run) is removed, so no table mixes old and new weights. A model
    with no depthwise convolution is 'skipped'.
    """
    layout = OutputLayout(out)
    row = model_row(spec)
    try:
        if spec.source.startswith(HUB_PREFIX):
            from pipeline._hub import open_hub_checkpoint

            with open_hub_checkpoint(spec.source.removeprefix(HUB_PREFIX), spec.revision) as hub:
                extraction = extract_from_reader(hub.reader, spec.model_id)
                metadata = timm_metadata(hub.config)
                row.update(revision=hub.revision, bytes_fetched=hub.bytes_fetched,
                           architecture=metadata["architecture"],
                           pretrained_tag=metadata["pretrained_tag"],
                           input_size=metadata["input_size"],
                           accuracy_key=spec.accuracy_key or metadata["accuracy_key"])
        else:
            extraction = extract_depthwise_kernels(spec.source, spec.model_id)
        if extraction.n_layers:
            write_table(extraction.kernels, layout.kernels_path(spec.model_id), schemas.KERNELS)
        else:
            layout.kernels_path(spec.model_id).unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - one model's failure must not end the run
        layout.kernels_path(spec.model_id).unlink(missing_ok=True)
        reason = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
        return {**row, "status": "failed", "error": " ".join(reason.split())[:500]}
    row.update(n_layers=extraction.n_layers, n_filters=extraction.n_filters,
               skipped_layers=extraction.skipped_layers)
    if not extraction.n_layers:
        row.update(status="skipped", error="no depthwise convs")
    return row
