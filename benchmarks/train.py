"""Autoencoder training: kernels per second per epoch with 1 worker (one Ray task) and 2 Ray
Train workers (DDP over gloo) on the CPU, timed inside the training loop (start-up and teardown
are reported apart).
200,000 synthetic 7x7 kernels, 10 epochs, the default network and batch size."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

N_KERNELS = 200_000
EPOCHS = 10
WORKER_COUNTS = (1, 2)


def run() -> list[dict]:
    from benchmarks._common import write_synthetic_kernels
    from dwscan.executor import ray_executor
    from dwscan.method.autoencoder import AutoencoderConfig
    from dwscan.method.preprocess import centre_and_normalise
    from dwscan.stages.train import train_on_ray

    rng = np.random.default_rng(0)
    templates, _ = centre_and_normalise(rng.standard_normal((16, 49)))
    rows = []
    ray_executor.init_ray(None, ray_train=True)  # the 2-worker rows
    with tempfile.TemporaryDirectory() as folder:
        kernels = write_synthetic_kernels(Path(folder) / "kernels.parquet", rng, templates,
                                          N_KERNELS, 7)
        for workers in WORKER_COUNTS:
            out = Path(folder) / f"ae{workers}"
            start = time.perf_counter()
            train_on_ray(
                [kernels], out, AutoencoderConfig(epochs=EPOCHS, min_steps=0),
                num_workers=workers)
            wall = time.perf_counter() - start
            meta = json.loads((out / "k7.json").read_text())
            per_epoch = meta["train_seconds"] / meta["epochs"]
            rows.append({"workers": workers, "kernels": meta["n_kernels"],
                         "epochs": meta["epochs"], "train s": meta["train_seconds"],
                         "kernels/s per epoch": meta["n_kernels"] / per_epoch,
                         "start-up and teardown s": wall - meta["train_seconds"],
                         "device": meta["device"]})
    import ray

    ray.shutdown()
    return rows
