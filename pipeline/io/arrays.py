"""Conversions between Arrow list<float32> columns and dense numpy matrices, without Python loops."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def matrices_to_list_array(blocks: list[np.ndarray]) -> pa.ListArray:
    """Stack row blocks (each n_i x d_i) into one list<float32> array, one list per row."""
    lengths = np.concatenate([np.full(b.shape[0], b.shape[1], dtype=np.int32) for b in blocks])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate([np.ascontiguousarray(b, dtype=np.float32).ravel() for b in blocks])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.float32()))


def list_column_to_matrix(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """A list<float32> column whose lists all have `width` values, as an (n, width) float32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if flat.size != len(column) * width:
        raise ValueError(f"expected {width} values per row, got {flat.size} over {len(column)} rows")
    return flat.reshape(len(column), width)
