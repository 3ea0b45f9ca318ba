"""Stage 3 over files: train one autoencoder per kernel size from the kernel shards."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from torch import nn

import schemas
from pipeline.arrays import list_column_to_matrix
from pipeline.autoencoder import AutoencoderConfig, save_autoencoder, train_autoencoder
from pipeline.preprocess import VALID, centre_and_normalise
from pipeline.storage import read_tables

# Above this many kernels of one size, train (and pick templates) on a seeded uniform sample.
MAX_KERNELS_PER_SIZE = 2_000_000


def kernel_sizes_of(kernel_paths: list[Path]) -> list[int]:
    sizes = read_tables(kernel_paths, schemas.KERNELS, columns=["kernel_size"])
    return sorted(int(k) for k in pc.unique(sizes.column("kernel_size")).to_pylist())


def load_normalised_kernels(kernel_paths: list[Path], kernel_size: int,
                            max_rows: int | None = MAX_KERNELS_PER_SIZE,
                            seed: int = 0) -> np.ndarray:
    """Valid kernels of one size, centred and at unit norm, in file order (or a seeded sample)."""
    table = read_tables(kernel_paths, schemas.KERNELS, columns=["weights"],
                        filters=[("kernel_size", "=", kernel_size)])
    normalised, why = centre_and_normalise(
        list_column_to_matrix(table.column("weights"), kernel_size * kernel_size))
    normalised = normalised[why == VALID]
    if max_rows and len(normalised) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(normalised), max_rows, replace=False))
        normalised = normalised[keep]
    return normalised


def autoencoder_path(out_dir: Path, kernel_size: int) -> Path:
    return Path(out_dir) / f"k{kernel_size}.safetensors"


def train_autoencoders(kernel_paths: list[Path], out_dir: Path, config: AutoencoderConfig, *,
                       rank: int = 0, world_size: int = 1,
                       wrap_model: Callable[[nn.Module], nn.Module] | None = None,
                       device: str = "cpu",
                       on_epoch: Callable[[int, int, int, float], None] | None = None,
                       ) -> dict[int, list[float]]:
    """Train and (on rank 0) save one autoencoder per kernel size; returns the losses per size.

    `on_epoch(kernel_size, epoch, epochs, loss)` reports progress.
    """
    losses: dict[int, list[float]] = {}
    for k in kernel_sizes_of(kernel_paths):
        data = load_normalised_kernels(kernel_paths, k, seed=config.seed)
        if len(data) == 0:
            continue
        report = (lambda e, n, loss, k=k: on_epoch(k, e, n, loss)) if on_epoch else None
        start = time.perf_counter()
        model, losses[k] = train_autoencoder(data, config, rank=rank, world_size=world_size,
                                             wrap_model=wrap_model, device=device, on_epoch=report)
        if rank == 0:
            save_autoencoder(model, autoencoder_path(out_dir, k), extra={
                "kernel_size": k, "n_kernels": len(data), "world_size": world_size,
                "device": device, "config": config, "epochs": len(losses[k]),
                "final_loss": losses[k][-1], "train_seconds": time.perf_counter() - start})
    return losses
