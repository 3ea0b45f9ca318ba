"""What several benchmarks share: synthetic kernel files, timing, and peak memory measured in a
child process (the parent's own allocations would hide a stage's)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

CHUNK = 1_000_000  # rows generated and written at a time, so a 10M file needs 1M rows of memory


def synthetic_kernels(rng: np.random.Generator, templates: np.ndarray, n: int, k: int,
                      raw: bool = False) -> pa.Table | np.ndarray:
    """n k x k kernels, noisy scaled copies of random `templates`: a KERNELS table of one model,
    or (raw) the float32 matrix alone."""
    which = rng.integers(0, len(templates), n)
    weights = (templates[which] + rng.normal(0, 0.3 / k, (n, k * k))).astype(np.float32)
    weights = weights * rng.uniform(0.5, 2.0, (n, 1)).astype(np.float32)
    if raw:
        return weights
    import schemas
    from pipeline.arrays import matrices_to_list_array

    return pa.table({
        "model_id": pa.array(["bench"] * n), "layer": pa.array(["layer"] * n),
        "layer_index": pa.array(np.zeros(n, np.int32)), "depth": pa.array(np.zeros(n, np.float32)),
        "channel": pa.array(np.arange(n, dtype=np.int32)),
        "kernel_size": pa.array(np.full(n, k, np.int32)),
        "weights": matrices_to_list_array([weights])}, schema=schemas.KERNELS)


def write_synthetic_kernels(path: Path, rng: np.random.Generator, templates: np.ndarray, n: int,
                            k: int) -> Path:
    """A KERNELS Parquet file of n synthetic kernels, written CHUNK rows at a time."""
    import schemas
    from pipeline.storage import write_tables

    write_tables((synthetic_kernels(rng, templates, min(CHUNK, n - start), k)
                  for start in range(0, n, CHUNK)), path, schemas.KERNELS)
    return path


@dataclass(frozen=True)
class ChildRun:
    seconds: float  # of the timed code alone
    peak_rss: int  # bytes: the child's max RSS over its whole life
    setup_rss: int  # bytes: its max RSS before the timed code (interpreter and imports)


def timed_in_child(setup: str, timed: str, *args: str | Path) -> ChildRun:
    """Run `setup` then `timed` (Python source; `sys.argv[1:]` holds `args`) in a fresh
    interpreter: the time of `timed`, and the child's peak RSS, which only what it ran can raise."""
    code = (f"import resource, sys, time\n{setup}\n"
            "setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"start = time.perf_counter()\n{timed}\n"
            "print(time.perf_counter() - start, "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, setup_rss)\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, check=True)
    seconds, peak_kib, setup_kib = done.stdout.strip().splitlines()[-1].split()
    return ChildRun(float(seconds), int(peak_kib) * 1024, int(setup_kib) * 1024)


def times(call: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out
