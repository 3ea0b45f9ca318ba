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
    from dwscan import schemas
    from dwscan.io.arrays import matrices_to_list_array

    return pa.table({
        "model_id": pa.array(["bench"] * n), "layer": pa.array(["layer"] * n),
        "layer_index": pa.array(np.zeros(n, np.int32)), "depth": pa.array(np.zeros(n, np.float32)),
        "channel": pa.array(np.arange(n, dtype=np.int32)),
        "kernel_size": pa.array(np.full(n, k, np.int32)),
        "weights": matrices_to_list_array([weights])}, schema=schemas.KERNELS)


def write_synthetic_kernels(path: Path, rng: np.random.Generator, templates: np.ndarray, n: int,
                            k: int) -> Path:
    """A KERNELS Parquet file of n synthetic kernels, written CHUNK rows at a time."""
    from dwscan import schemas
    from dwscan.io.storage import write_tables

    write_tables((synthetic_kernels(rng, templates, min(CHUNK, n - start), k)
                  for start in range(0, n, CHUNK)), path, schemas.KERNELS)
    return path


@dataclass(frozen=True)
class ChildRun:
    seconds: float  # of the timed code alone
    peak_rss: int  # bytes: the child's peak RSS over its whole life
    setup_rss: int  # bytes: its peak RSS before the timed code (interpreter and imports)
    printed: list[str]  # what the child printed before its result line


# The child's own peak RSS in KiB. Not getrusage's ru_maxrss: Linux carries the parent's RSS at
# fork over exec into it, so a child of a 2 GiB parent reports >= 2 GiB. VmHWM belongs to the
# memory map that exec made fresh.
_PEAK_RSS_KIB = ("int(next(line.split()[1] for line in open('/proc/self/status') "
                 "if line.startswith('VmHWM:')))")


def timed_in_child(setup: str, timed: str, *args: str | Path) -> ChildRun:
    """Run `setup` then `timed` (Python source; `sys.argv[1:]` holds `args`) in a fresh
    interpreter: the time of `timed`, and the child's peak RSS, which only what it ran can raise.
    What the code prints comes back in `printed`."""
    code = (f"import sys, time\n{setup}\n"
            f"setup_rss = {_PEAK_RSS_KIB}\n"
            f"start = time.perf_counter()\n{timed}\n"
            f"print(time.perf_counter() - start, {_PEAK_RSS_KIB}, setup_rss)\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, check=True)
    *printed, result = done.stdout.strip().splitlines()
    seconds, peak_kib, setup_kib = result.split()
    return ChildRun(float(seconds), int(peak_kib) * 1024, int(setup_kib) * 1024, printed)


def times(call: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out
