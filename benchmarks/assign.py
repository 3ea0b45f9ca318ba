"""Assignment: kernels per second of the whole assign stage (Parquet in, Parquet out, streamed in
batches) against FAISS search alone and a numpy matmul + argmax on the same in-memory vectors, and
the stage's peak memory (a child process's max RSS). Synthetic 5x5 and 7x7 kernels, 16 templates.
Stage timings are the minimum and median of 3 runs; the baselines' rates come from the
minimum of 9."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks._common import (
    CHUNK,
    synthetic_kernels,
    timed_in_child,
    times,
    write_synthetic_kernels,
)

SIZES = (1_000_000, 10_000_000)
KERNEL_SIZES = (5, 7)
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
    from dwscan.io.arrays import matrices_to_list_array
    from dwscan.io.template_index import TemplateIndex
    from dwscan.method.preprocess import centre_and_normalise

    rng = np.random.default_rng(k)
    templates, _ = centre_and_normalise(rng.standard_normal((16, k * k)))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        kernels_path = write_synthetic_kernels(folder / "kernels.parquet", rng, templates, n, k)
        templates_path = folder / "templates.parquet"
        pa.parquet.write_table(pa.table({
            "kernel_size": pa.array([k] * 16, pa.int32()),
            "template_id": pa.array(range(16), pa.int32()),
            "weights": matrices_to_list_array([templates])}), templates_path)
        stage, peak_rss = [], 0
        for _ in range(REPEATS):
            child = timed_in_child(
                "import pyarrow.parquet as pq\nfrom dwscan.stages.assign import assign_model_file\n"
                "t = pq.read_table(sys.argv[2])",
                "assign_model_file(sys.argv[1], t, 0.8, sys.argv[3])",
                kernels_path, templates_path, folder / "out.parquet")
            stage.append(child.seconds)
            peak_rss = max(peak_rss, child.peak_rss)
        # the same vectors in memory, for the baselines (at most 1M: the rate does not change)
        sample = min(n, CHUNK)
        vectors, _ = centre_and_normalise(synthetic_kernels(rng, templates, sample, k, raw=True))
        index = TemplateIndex(templates)
        faiss_alone = times(lambda: index.nearest(vectors), BASELINE_REPEATS)
        numpy_alone = times(lambda: np.argmax(vectors @ templates.T, axis=1), BASELINE_REPEATS)
    stage_rate = n / min(stage)
    faiss_rate = sample / min(faiss_alone)
    return {"case": f"{n / 1e6:g}M {k}x{k}", "stage s (min/median)":
            f"{min(stage):.2f} / {statistics.median(stage):.2f}",
            "stage kernels/s": stage_rate, "faiss alone kernels/s": faiss_rate,
            "numpy matmul+argmax kernels/s": sample / min(numpy_alone),
            "stage / faiss": stage_rate / faiss_rate, "stage peak RSS GiB": peak_rss / 2**30}
