"""Stage 3: train the autoencoders of every kernel size from the kernel shards: per size, one
autoencoder per seed, trained together (dwscan.method.autoencoder.train_ensemble)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwscan.executor.ray_executor import run_ray_train, run_tasks_at_once
from dwscan.io.kernels import kernel_sizes_of, load_normalised_kernels
from dwscan.io.storage import as_location, write_bytes_atomic
from dwscan.memory import release_free_memory
from dwscan.method.autoencoder_config import (
    AutoencoderConfig,
    autoencoder_path,
    training_record_path,
)

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from dwscan.method.autoencoder import TrainingLog


def train_autoencoders(kernel_paths: list[Path], out_dir: Path, config: AutoencoderConfig, *,
                       rank: int = 0, world_size: int = 1,
                       wrap_model: Callable[[nn.Module], nn.Module] | None = None,
                       device: str = "cpu",
                       on_check: Callable[[int, int, int, float, float | None], None] | None = None,
                       kernel_sizes: list[int] | None = None,
                       after_size: Callable[[int, np.ndarray], None] | None = None
                       ) -> dict[int, TrainingLog]:
    """Train and (on rank 0) save the `config.seeds` autoencoders of each kernel size
    (`kernel_sizes`, default every size in the shards): `k3.seed0.safetensors`, ... and the
    record of their training, `k3.json`. Returns each size's log.

    `on_check(kernel_size, step, step_budget, loss, template_cosine)` reports progress;
    `after_size(kernel_size, kernels)` runs on rank 0 once a size is saved, on the kernels it
    trained on (the next stage's work on them, without reading them again).
    """
    from dwscan.method.autoencoder import jsonable, save_autoencoder, train_ensemble

    logs: dict[int, TrainingLog] = {}
    for k in kernel_sizes or kernel_sizes_of(kernel_paths):
        data = None  # the last size's kernels go before this size's are read
        data = load_normalised_kernels(kernel_paths, k, seed=config.seed)
        release_free_memory()  # what reading the files left in Arrow's and malloc's pools
        if len(data) == 0:
            continue
        report = (lambda *args, k=k: on_check(k, *args)) if on_check else None
        start = time.perf_counter()
        models, logs[k] = train_ensemble(data, config, rank=rank, world_size=world_size,
                                         wrap_model=wrap_model, device=device, on_check=report)
        if rank == 0:
            log = logs[k]
            for index, (model, seed) in enumerate(zip(models, log.seeds)):
                save_autoencoder(model, autoencoder_path(out_dir, k, index),
                                 extra={"kernel_size": k, "seed": seed})
            record = {"kernel_size": k, "n_kernels": len(data), "world_size": world_size,
                      "device": device, "config": config, **log.as_record(),
                      "final_loss": log.losses[-1],
                      "train_seconds": time.perf_counter() - start}
            write_bytes_atomic(training_record_path(out_dir, k),
                               json.dumps(record, indent=2, default=jsonable).encode())
            if after_size is not None:
                after_size(k, data)
    return logs


TRAIN_PROGRESS_EVERY_S = 15.0  # at most one training progress line per this many seconds
# Threads per training task on the CPU. The network is too small for threads to pay (11.3 vs
# 10.0 ms a step at 1 and 2 threads on our 2-core machine), and a fixed count makes a seed give
# the same templates on every machine (torch's sums follow the thread count): the CPUs go to
# training every size side by side instead.
TRAIN_THREADS = 1


def train_on_ray(kernel_paths: list[Path], out_dir: Path, config: AutoencoderConfig, *,
                 num_workers: int = 1, use_gpu: bool = False,
                 then: Callable[[int, np.ndarray], Any] | None = None) -> dict[int, Any]:
    """Train the autoencoders of every kernel size on the cluster; rank 0 writes the weights to
    `out_dir`. Returns `then(kernel_size, kernels)` of each size, run in the size's task right
    after its training, on the kernels it trained on (None without `then`).

    One worker (the default): each size's seeds train together as one Ray task asking for one
    CPU (or one GPU), all sizes submitted at once, so they train side by side wherever there are
    CPUs; `then` runs there, while other sizes still train. Ray Train's controller and helper
    actors would add five processes and about 0.7 GiB of memory for no parallelism
    (BENCHMARKS.md, "zoo"). Several workers: Ray Train DDP (gloo on CPU, NCCL on GPU),
    `num_workers` ranks of one CPU or one GPU each (train_scaling), which on a cluster is what
    makes the autoscaler start gpu_worker nodes; `then` must be None there.
    """
    if num_workers < 1:
        raise ValueError(f"--train-workers must be at least 1, not {num_workers}")
    loop_config = {"kernel_paths": [str(p) for p in kernel_paths], "out_dir": str(out_dir),
                   "config": asdict(config),
                   "cpus_per_worker": max(1, (os.cpu_count() or 1) // num_workers)}
    if num_workers > 1:
        if then is not None:
            raise ValueError("`then` runs in a size's own task, which Ray Train's ranks are not")
        run_ray_train(_train_rank, loop_config, num_workers, use_gpu, what="autoencoder training")
        return {}
    sizes = kernel_sizes_of(kernel_paths)
    calls = [({**loop_config, "kernel_sizes": [k]}, use_gpu, then) for k in sizes]
    found = run_tasks_at_once(_train_single_worker, calls, num_gpus=1 if use_gpu else 0,
                              what="autoencoder training")
    return {k: result for done in found for k, result in done.items()}


def _train_single_worker(loop_config: dict, use_gpu: bool,
                         then: Callable[[int, np.ndarray], Any] | None) -> dict[int, Any]:
    import torch

    # Ray points CUDA_VISIBLE_DEVICES at the task's one GPU
    device = torch.device("cuda" if use_gpu else "cpu")
    loop_config = {**loop_config, "cpus_per_worker": TRAIN_THREADS}
    results: dict[int, Any] = {k: None for k in loop_config["kernel_sizes"]}
    after_size = None if then is None else (lambda k, kernels: results.update({k: then(k, kernels)}))
    _train_rank(loop_config, rank=0, world_size=1, device=device, wrap_model=None,
                after_size=after_size)
    release_free_memory()  # the worker lingers a few seconds while it exits (max_calls=1)
    return results


def _train_rank(loop_config: dict, rank: int, world_size: int, device,
                wrap_model: Callable | None,
                after_size: Callable[[int, np.ndarray], None] | None = None) -> dict[str, float]:
    """One rank's share of training, with plain progress lines (no redrawn bar) that reach the
    driver's log at most every TRAIN_PROGRESS_EVERY_S seconds and at each size's last step.
    Returns each size's final loss (keys as text: Ray Train reports them as JSON)."""
    import torch

    if device.type == "cpu":
        torch.set_num_threads(loop_config["cpus_per_worker"])
    last_line = {"at": float("-inf")}
    config = AutoencoderConfig.from_dict(loop_config["config"])

    def on_check(k: int, step: int, budget: int, loss: float, cosine: float | None) -> None:
        now = time.monotonic()
        if rank == 0 and (now - last_line["at"] >= TRAIN_PROGRESS_EVERY_S or step >= budget):
            last_line["at"] = now
            moved = "-" if cosine is None else f"{cosine:.4f}"
            print(f"train {k}x{k} ({config.seeds} seeds): step {step} of at most {budget}, "
                  f"mean loss {loss:.4f}, templates vs last check cosine (least settled seed) "
                  f"{moved}", flush=True)

    logs = train_autoencoders(
        [as_location(p) for p in loop_config["kernel_paths"]], as_location(loop_config["out_dir"]),
        config, rank=rank, world_size=world_size, wrap_model=wrap_model, device=str(device),
        on_check=on_check, kernel_sizes=loop_config.get("kernel_sizes"), after_size=after_size)
    return {str(k): log.losses[-1] for k, log in logs.items()}
