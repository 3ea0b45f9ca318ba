"""Assignment: kernels per second of the whole assign stage (Parquet in, Parquet out, streamed in
batches) against FAISS search alone and a numpy matmul + argmax on the same in-memory vectors, and
the stage's peak memory (a child process's max RSS). Synthetic 5x5 and 7x7 kernels, 16 templates.
Stage timings are the minimum and median of 3 runs; the baselines' rates come from the
minimum of 9."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

SIZES = (1_000_000, 10_000_000)
KERNEL_SIZES = (5, 7)
CHUNK = 1_000_000
REPEATS = 3
BASELINE_REPEATS = 9  # the baselines take ~0.1 s: more runs, so their minimum is a clean one


def run() -> list[dict]:
    rows = []
    for k in KERNEL_SIZES:
        for n in SIZES:
            rows.append(_case(k, n))
            print(rows[-1], flush=True)
    return rows


def _case(k: int, n: int) -> dict:
    import schemas
    from pipeline.arrays import matrices_to_list_array
    from pipeline.assign import TemplateIndex
    from pipeline.preprocess import centre_and_normalise
    from pipeline.storage import write_tables

    rng = np.random.default_rng(k)
    templates, _ = centre_and_normalise(rng.standard_normal((16, k * k)))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        kernels_path = folder / "kernels.parquet"
        write_tables((_chunk(rng, templates, min(CHUNK, n - start), k)
                      for start in range(0, n, CHUNK)), kernels_path, schemas.KERNELS)
        templates_path = folder / "templates.parquet"
        pa.parquet.write_table(pa.table({
            "kernel_size": pa.array([k] * 16, pa.int32()),
            "template_id": pa.array(range(16), pa.int32()),
            "weights": matrices_to_list_array([templates])}), templates_path)
        stage, peak_rss = [], 0
        for _ in range(REPEATS):
            seconds, rss = _stage_in_child(kernels_path, templates_path, folder / "out.parquet")
            stage.append(seconds)
            peak_rss = max(peak_rss, rss)
        # the same vectors in memory, for the baselines (at most 1M: the rate does not change)
        sample = min(n, CHUNK)
        vectors, _ = centre_and_normalise(_chunk(rng, templates, sample, k, raw=True))
        index = TemplateIndex(templates)
        faiss_alone = _times(lambda: index.nearest(vectors), BASELINE_REPEATS)
        numpy_alone = _times(lambda: np.argmax(vectors @ templates.T, axis=1), BASELINE_REPEATS)
    stage_rate = n / min(stage)
    faiss_rate = sample / min(faiss_alone)
    return {"case": f"{n / 1e6:g}M {k}x{k}", "stage s (min/median)":
            f"{min(stage):.2f} / {statistics.median(stage):.2f}",
            "stage kernels/s": stage_rate, "faiss alone kernels/s": faiss_rate,
            "numpy matmul+argmax kernels/s": sample / min(numpy_alone),
            "stage / faiss": stage_rate / faiss_rate, "stage peak RSS GiB": peak_rss / 2**30}


def _chunk(rng, templates, n, k, raw=False):
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


def _stage_in_child(kernels: Path, templates: Path, out: Path) -> tuple[float, int]:
    """Seconds of `assign_model_file` alone, and the child's peak RSS in bytes."""
    code = (
        "import sys, time, pyarrow.parquet as pq\n"
        "from pipeline.assign import assign_model_file\n"
        "t = pq.read_table(sys.argv[2])\n"
        "start = time.perf_counter()\n"
        "assign_model_file(sys.argv[1], t, 0.8, sys.argv[3])\n"
        "import resource\n"
        "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    done = subprocess.run([sys.executable, "-c", code, str(kernels), str(templates), str(out)],
                          capture_output=True, text=True, check=True)
    seconds, max_rss_kib = done.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(max_rss_kib) * 1024


def _times(call, repeats: int = REPEATS) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out
