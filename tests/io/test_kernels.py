"""`load_normalised_kernels` streams kernel files: every valid kernel in file order under the
cap, a seeded uniform sample (still in file order) above it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dwscan import schemas
from dwscan.io.arrays import matrices_to_list_array
from dwscan.io.kernels import load_normalised_kernels
from dwscan.io.storage import write_table
from dwscan.method.preprocess import centre_and_normalise


def _kernels_table(weights: list[np.ndarray], sizes: np.ndarray) -> pa.Table:
    """A KERNELS table with one row per weights[i] (k*k values), of kernel size sizes[i]."""
    n = len(sizes)
    return pa.table({
        "model_id": pa.array(["m"] * n), "layer": pa.array(["layer"] * n),
        "layer_index": pa.array(np.zeros(n, np.int32)), "depth": pa.array(np.zeros(n, np.float32)),
        "channel": pa.array(np.arange(n, dtype=np.int32)),
        "kernel_size": pa.array(np.asarray(sizes, np.int32)),
        "weights": matrices_to_list_array(weights)})


def _expected(weights: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """The valid k x k kernels, centred and at unit norm, computed here without the pipeline."""
    rows = weights[sizes == k, : k * k].astype(np.float64)
    keep = (np.abs(rows).max(axis=1) > 1e-4) & (np.ptp(rows, axis=1) > 1e-6)
    centred = rows[keep] - rows[keep].mean(axis=1, keepdims=True)
    return centred / np.linalg.norm(centred, axis=1, keepdims=True)


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[list[Path], list[tuple[np.ndarray, np.ndarray]]]:
    """Two files mixing 3x3 and 5x5 kernels, with zero, tiny and constant kernels among them."""
    rng = np.random.default_rng(1)
    files, contents = [], []
    for name, n in (("a", 40), ("b", 25)):
        weights = rng.normal(size=(n, 49))
        sizes = rng.choice([3, 5], size=n)
        weights[3] = 0.0  # zero
        weights[5] = 5e-5  # every |w| under the zero tolerance
        weights[7] = 0.25  # constant: no direction once centred
        sizes[[3, 5, 7]] = (3, 5, 5)
        table = _kernels_table([weights[i:i + 1, :s * s] for i, s in enumerate(sizes)], sizes)
        files.append(write_table(table, tmp_path / f"{name}.parquet", schemas.KERNELS))
        contents.append((weights, sizes))
    return files, contents


@pytest.mark.parametrize("k", [3, 5])
def test_under_the_cap_every_valid_kernel_in_file_order(two_files, k):
    files, contents = two_files
    expected = np.concatenate([_expected(w, s, k) for w, s in contents])
    got = load_normalised_kernels(files, k, max_rows=1000)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # no cap, and a cap of exactly the valid count, give the same rows
    np.testing.assert_array_equal(load_normalised_kernels(files, k, max_rows=None), got)
    np.testing.assert_array_equal(load_normalised_kernels(files, k, max_rows=len(expected)), got)


def test_no_kernel_of_that_size_gives_an_empty_matrix(two_files):
    files, _ = two_files
    assert load_normalised_kernels(files, 7).shape == (0, 49)
    assert load_normalised_kernels([], 3).shape == (0, 9)


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> tuple[list[Path], np.ndarray]:
    """6,000 + 4,000 distinct valid 3x3 kernels, already centred and at unit norm."""
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(10_000, 9))
    rows -= rows.mean(axis=1, keepdims=True)
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    files = [folder / "first.parquet", folder / "second.parquet"]
    write_table(_kernels_table([rows[:6000]], np.full(6000, 3)), files[0], schemas.KERNELS)
    write_table(_kernels_table([rows[6000:]], np.full(4000, 3)), files[1], schemas.KERNELS)
    return files, rows


def _positions(sample: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Where each sampled row sits among the inputs (-1 when it is none of them)."""
    lookup = {row.tobytes(): i for i, row in enumerate(rows)}
    return np.array([lookup.get(row.tobytes(), -1) for row in sample])


def test_over_the_cap_a_seeded_uniform_sample_in_file_order(big_files):
    files, rows = big_files
    inputs, _ = centre_and_normalise(rows)  # normalising again may move the last bit
    sample = load_normalised_kernels(files, 3, max_rows=2000, seed=7)
    assert sample.shape == (2000, 9) and sample.dtype == np.float32
    where = _positions(sample, inputs)
    assert (where >= 0).all()  # every row is one of the inputs, exactly
    assert len(np.unique(where)) == 2000  # no row twice
    assert (np.diff(where) > 0).all()  # in file order
    np.testing.assert_array_equal(load_normalised_kernels(files, 3, max_rows=2000, seed=7), sample)
    other = _positions(load_normalised_kernels(files, 3, max_rows=2000, seed=8), inputs)
    assert len(np.intersect1d(where, other)) < 1000  # another seed, another sample (~400 shared)
    # uniform: the first file holds 60% of the rows; binomial sd of the share is ~1.1 points
    assert abs(np.mean(where < 6000) - 0.6) < 0.05
    # and within a file, each tenth of the positions gets its share (200 each, sd ~13)
    assert np.all(np.abs(np.bincount(where // 1000, minlength=10) - 200) < 80)


def test_the_sample_does_not_depend_on_the_batch_size(big_files, monkeypatch):
    """Keys come from one seeded stream, a key per valid row: with batches of 300 rows (rows then
    enter the full sample over many batches) the sample is the same as with the default."""
    import dwscan.io.kernels as kernels
    from dwscan.io.storage import iter_tables

    files, _ = big_files
    default = load_normalised_kernels(files, 3, max_rows=2000, seed=3)
    monkeypatch.setattr(kernels, "iter_tables", lambda path: iter_tables(path, batch_size=300))
    np.testing.assert_array_equal(load_normalised_kernels(files, 3, max_rows=2000, seed=3), default)


@pytest.mark.parametrize("chunk", [1, 3, 8192])
def test_the_sample_goes_back_to_file_order_in_place(chunk):
    """rows[order] in the rows' own memory, whatever the cycles: random permutations (one long
    cycle and many short ones), a single cycle through every row, a swap, the identity; chunks
    of 1 and 3 rows cross each cycle's chunk boundaries."""
    from dwscan.io.kernels import _permute_rows_in_place

    rng = np.random.default_rng(5)
    rows = rng.normal(size=(1000, 4)).astype(np.float32)
    one_cycle = np.roll(np.arange(1000), 1)
    swap = np.arange(1000)
    swap[[10, 900]] = [900, 10]
    for order in (rng.permutation(1000), rng.permutation(1000), one_cycle, swap, np.arange(1000)):
        permuted = rows.copy()
        buffer = permuted.__array_interface__["data"][0]
        _permute_rows_in_place(permuted, order, chunk)
        np.testing.assert_array_equal(permuted, rows[order])
        assert permuted.__array_interface__["data"][0] == buffer
