"""Scale curve: wall time of assign + report (clusterability and threshold-sweep tables) at 10^5,
10^6 and 10^7 synthetic 7x7 kernels in one model's file, against 16 templates. Linear growth
shows as a constant seconds-per-million column."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks._common import write_synthetic_kernels

SIZES = (100_000, 1_000_000, 10_000_000)


def run() -> list[dict]:
    from dwscan.io.arrays import matrices_to_list_array
    from dwscan.io.storage import read_table
    from dwscan.method.preprocess import centre_and_normalise
    from dwscan.reports.tables import clusterability_table, threshold_sweep_table
    from dwscan.stages.assign import assign_model_file

    rng = np.random.default_rng(0)
    templates, _ = centre_and_normalise(rng.standard_normal((16, 49)))
    template_table = pa.table({"kernel_size": pa.array([7] * 16, pa.int32()),
                               "template_id": pa.array(range(16), pa.int32()),
                               "weights": matrices_to_list_array([templates])})
    rows = []
    for n in SIZES:
        with tempfile.TemporaryDirectory() as folder:
            kernels, out = Path(folder) / "kernels.parquet", Path(folder) / "assigned.parquet"
            write_synthetic_kernels(kernels, rng, templates, n, 7)
            start = time.perf_counter()
            assign_model_file(kernels, template_table, 0.8, out)
            assigned = time.perf_counter()
            assignments = read_table(out)
            clusterability_table(assignments, 0.8)
            threshold_sweep_table(assignments)
            done = time.perf_counter()
        rows.append({"kernels": n, "assign s": assigned - start, "report s": done - assigned,
                     "total s": done - start, "s per million": (done - start) / (n / 1e6)})
        print(rows[-1], flush=True)
    return rows
