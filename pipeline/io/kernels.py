"""Kernel loading shared by the train and templates stages: the valid kernels of one size,
centred and at unit norm, streamed from the kernel shards with a bounded uniform sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from dwscan import schemas
from dwscan.io.arrays import list_column_to_matrix
from dwscan.io.storage import iter_tables, read_tables
from dwscan.method.preprocess import VALID, centre_and_normalise

# Above this many kernels of one size, train (and pick templates) on a seeded uniform sample.
# Convergence-stopped training draws about 0.8 to 1.25M kernels per seed (3,000 to 5,000 steps
# of 256: 1.5 to 2.5 passes over this sample), and a template's share of 2% (min_share) is
# known to within 0.04 points (two standard errors) from 500k uniform draws, so more rows
# change no template; they would only hold memory in the training worker and the driver
# (500k 7x7 kernels are 98 MB). BENCHMARKS.md, "zoo".
MAX_KERNELS_PER_SIZE = 500_000


def kernel_sizes_of(kernel_paths: list[Path]) -> list[int]:
    sizes = read_tables(kernel_paths, schemas.KERNELS, columns=["kernel_size"])
    return sorted(int(k) for k in pc.unique(sizes.column("kernel_size")).to_pylist())


def load_normalised_kernels(kernel_paths: list[Path], kernel_size: int,
                            max_rows: int | None = MAX_KERNELS_PER_SIZE,
                            seed: int = 0) -> np.ndarray:
    """Valid kernels of one size, centred and at unit norm, in file order; above `max_rows` of
    them, a seeded uniform sample of `max_rows`, still in file order.

    The files are streamed batch by batch, so memory stays at about `max_rows` kernels plus one
    batch whatever the total (the sample goes back to file order in place).
    """
    width = kernel_size * kernel_size
    sample = _UniformSample(max_rows, width, seed)
    for path in kernel_paths:
        for batch in iter_tables(path):
            batch = batch.select(["weights", "kernel_size"])
            batch = batch.filter(pc.equal(batch.column("kernel_size"), kernel_size))
            if batch.num_rows:
                normalised, why = centre_and_normalise(
                    list_column_to_matrix(batch.column("weights"), width))
                sample.add(normalised[why == VALID])
    return sample.rows()


class _UniformSample:
    """At most `size` rows of a stream of row blocks, drawn uniformly, in stream order.

    Every row gets a seeded uniform random key and the sample is the `size` rows with the
    smallest keys: exactly uniform whatever the block sizes, and deterministic for a seed.
    Rows that enter once the sample is full overwrite evicted ones in place, so memory is the
    sample plus the block being added, never the stream.
    """

    def __init__(self, size: int | None, width: int, seed: int):
        self.size, self.width = size or None, width
        self._rng = np.random.default_rng(seed)
        self._blocks: list[np.ndarray] = []  # the rows so far, while there are at most `size`
        self._block_keys: list[np.ndarray] = []
        self._count = 0  # rows seen
        self._rows: np.ndarray | None = None  # once full: the sample, its keys and positions
        self._keys = np.zeros(0)
        self._positions = np.zeros(0, np.int64)

    def add(self, rows: np.ndarray) -> None:
        keys = self._rng.random(len(rows)) if self.size else np.zeros(0)
        start, self._count = self._count, self._count + len(rows)
        if self._rows is None:
            if self.size is None or self._count <= self.size:
                self._blocks.append(rows)
                self._block_keys.append(keys)
                return
            fill = self.size - start  # rows of this block that complete the sample
            self._blocks.append(rows[:fill])
            self._block_keys.append(keys[:fill])
            self._rows = _stack_consuming(self._blocks, self.width)
            self._keys = np.concatenate(self._block_keys)
            self._positions = np.arange(self.size, dtype=np.int64)
            self._block_keys = []
            rows, keys, start = rows[fill:], keys[fill:], self.size
        # a row enters when its key is below the largest kept key; the largest keys leave
        entering = np.flatnonzero(keys < self._keys.max())
        if not len(entering):
            return
        merged = np.concatenate([self._keys, keys[entering]])
        out = np.argpartition(merged, self.size)[self.size:]  # the len(entering) largest keys
        evicted = np.sort(out[out < self.size])  # sample slots freed
        kept_new = np.setdiff1d(np.arange(len(entering)), out[out >= self.size] - self.size,
                                assume_unique=True)  # entering rows that stay
        chosen = entering[kept_new]
        self._rows[evicted] = rows[chosen]
        self._keys[evicted] = keys[chosen]
        self._positions[evicted] = start + chosen

    def rows(self) -> np.ndarray:
        if self._rows is None:
            return _stack_consuming(self._blocks, self.width)
        order = np.argsort(self._positions)
        _permute_rows_in_place(self._rows, order)
        self._keys, self._positions = self._keys[order], self._positions[order]
        return self._rows


def _permute_rows_in_place(rows: np.ndarray, order: np.ndarray, chunk: int = 8192) -> None:
    """rows[:] = rows[order] without a second copy of `rows` (500k 7x7 kernels are 98 MB, in
    a training worker at its peak): each cycle of the permutation is shifted along itself, a
    chunk of rows at a time, its first row held aside."""
    order = order.tolist()
    done = bytearray(len(order))
    for start in range(len(order)):
        if done[start] or order[start] == start:
            continue
        cycle, at = [], start
        while not done[at]:  # start, order[start], order[order[start]], ... back to start
            done[at] = 1
            cycle.append(at)
            at = order[at]
        first = rows[start].copy()
        cycle = np.asarray(cycle, np.int64)
        # rows[cycle[i]] = rows[cycle[i + 1]]: each chunk reads rows no earlier chunk wrote
        for low in range(0, len(cycle) - 1, chunk):
            high = min(low + chunk, len(cycle) - 1)
            rows[cycle[low:high]] = rows[cycle[low + 1:high + 1]]
        rows[cycle[-1]] = first


def _stack_consuming(blocks: list[np.ndarray], width: int) -> np.ndarray:
    """Stack row blocks into one matrix, emptying the list as it goes, so the copy never holds
    the blocks twice (np.concatenate would)."""
    out = np.empty((sum(len(b) for b in blocks), width), np.float32)
    filled = 0
    while blocks:
        block = blocks.pop(0)
        out[filled:filled + len(block)] = block
        filled += len(block)
    return out
