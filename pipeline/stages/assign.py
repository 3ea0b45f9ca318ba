"""Stage 5: nearest template of every kernel by cosine, through the template index
(`dwscan.io.template_index`, FAISS exact inner-product search)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from dwscan import schemas
from dwscan.io.arrays import list_column_to_matrix
from dwscan.io.storage import iter_tables, write_tables
from dwscan.io.template_index import DEFAULT_THRESHOLD, TemplateIndex, template_indexes
from dwscan.io.template_set import TEMPLATE_SET_KEY, template_set_of
from dwscan.method.preprocess import INVALID_REASONS, VALID, centre_and_normalise


def assign_kernels(kernels: pa.Table, indexes: dict[int, TemplateIndex],
                   threshold: float = DEFAULT_THRESHOLD, template_set: str | None = None
                   ) -> pa.Table:
    """ASSIGNMENTS rows for a KERNELS table (any mix of kernel sizes). A size with no index (no
    kernel of it reached the threshold when the templates were made) has its valid kernels
    unclustered, with no nearest template."""
    n = kernels.num_rows
    nearest = np.full(n, -1, dtype=np.int64)
    cosine = np.zeros(n, dtype=np.float32)
    sign = np.ones(n, dtype=np.int8)
    codes = np.zeros(n, dtype=np.uint8)
    sizes = kernels.column("kernel_size").to_numpy()
    no_template = np.zeros(n, dtype=bool)  # a size where no kernel reached the threshold
    for k in np.unique(sizes):
        rows = np.flatnonzero(sizes == k)
        weights = kernels.column("weights")
        matrix = list_column_to_matrix(weights if len(rows) == n else weights.take(rows),
                                       int(k) * int(k))
        normalised, why = centre_and_normalise(matrix)
        codes[rows] = why
        valid = why == VALID
        if int(k) not in indexes:
            no_template[rows[valid]] = True
            continue
        ids, cos, signs = indexes[int(k)].nearest_with_sign(normalised[valid])
        nearest[rows[valid]] = ids
        cosine[rows[valid]] = cos
        sign[rows[valid]] = signs
    invalid = codes != VALID
    unmatched = invalid | no_template
    clustered = ~unmatched & (cosine >= threshold)
    return pa.table({
        "model_id": kernels.column("model_id"),
        "layer": kernels.column("layer"),
        "layer_index": kernels.column("layer_index"),
        "depth": kernels.column("depth"),
        "channel": kernels.column("channel"),
        "kernel_size": kernels.column("kernel_size"),
        "template_id": pa.array(np.where(clustered, nearest, 0), pa.int32(), mask=~clustered),
        "nearest_template_id": pa.array(np.where(unmatched, 0, nearest), pa.int32(),
                                        mask=unmatched),
        "cosine": pa.array(cosine, pa.float32(), mask=unmatched),
        "sign": pa.array(sign, pa.int8(), mask=unmatched),
        "invalid_reason": pa.array(INVALID_REASONS, pa.string()).take(pa.array(codes)),
        # one string for every row, without a Python object per row
        "template_set": pa.array([template_set], pa.string()).take(
            pa.array(np.zeros(len(codes), np.int32))),
    }, schema=schemas.ASSIGNMENTS)


def assign_model_file(kernels_path: Path, templates: pa.Table, threshold: float,
                      out_path: Path, sign_invariant: bool = False,
                      batch_size: int = 262_144) -> int:
    """Assign one model's kernel file, streaming it in batches so memory stays bounded; writes
    its assignment file whole (atomically) and returns its row count."""
    indexes = template_indexes(templates, sign_invariant)
    template_set = template_set_of(templates)

    return write_tables((assign_kernels(batch, indexes, threshold, template_set)
                         for batch in iter_tables(kernels_path, batch_size)),
                        out_path, schemas.ASSIGNMENTS,
                        metadata={TEMPLATE_SET_KEY: template_set or ""})


