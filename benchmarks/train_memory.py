"""Training memory: peak RSS of the train stage's data loading (`load_normalised_kernels`, which
streams the kernel files and keeps a uniform sample of at most 500k kernels per size,
MAX_KERNELS_PER_SIZE) plus a short training run (300 steps, 1 process, no Ray) over 1M and 10M
synthetic 7x7 kernels in one Parquet file; the peak is the max RSS of a child process that
does only this (target: <= 2 GiB whatever the total). The RSS after imports (Python, torch,
pyarrow) is part of the peak and is shown apart."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import timed_in_child, write_synthetic_kernels

SIZES = (1_000_000, 10_000_000)
KERNEL_SIZE = 7
TRAIN_STEPS = 300
TARGET_GIB = 2.0

_SETUP = """\
from pathlib import Path
from dwscan.method.autoencoder import AutoencoderConfig, train_autoencoder
from dwscan.stages.train import kernel_sizes_of, load_normalised_kernels"""

# as train_autoencoders does, minus saving: sizes, then the sample, then training on its head
# (a view: the whole sample stays in memory, as in a full run)
_TIMED = """\
paths = [Path(sys.argv[1])]
for k in kernel_sizes_of(paths):
    data = load_normalised_kernels(paths, k)
    loaded = time.perf_counter()
    config = AutoencoderConfig(epochs=1, min_steps=0)
    train_autoencoder(data[: int(sys.argv[2]) * config.batch_size], config)
    print(loaded - start, len(data))"""


def run() -> list[dict]:
    from dwscan.method.preprocess import centre_and_normalise

    rng = np.random.default_rng(0)
    templates, _ = centre_and_normalise(rng.standard_normal((16, KERNEL_SIZE ** 2)))
    rows = []
    for n in SIZES:
        with tempfile.TemporaryDirectory() as folder:
            path = write_synthetic_kernels(Path(folder) / "kernels.parquet", rng, templates, n,
                                           KERNEL_SIZE)
            file_mb = path.stat().st_size / 1e6
            child = timed_in_child(_SETUP, _TIMED, path, TRAIN_STEPS)
        load_seconds, loaded = child.printed[-1].split()
        peak = child.peak_rss / 2**30
        rows.append({"kernels in file": n, "file MB": file_mb, "kernels loaded": int(loaded),
                     "load s": float(load_seconds), "train steps": TRAIN_STEPS,
                     "train s": child.seconds - float(load_seconds),
                     "peak RSS GiB": peak, "RSS after imports GiB": child.setup_rss / 2**30,
                     f"<= {TARGET_GIB:g} GiB": "yes" if peak <= TARGET_GIB else "no"})
        print(rows[-1], flush=True)
    return rows
