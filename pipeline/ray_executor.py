"""The only place that schedules work on Ray: tasks over models, and Ray Train for autoencoders.

Stages stay plain functions; this module decides where they run. Everything here also works on a
laptop: with no address, a private local Ray is started for the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.autoencoder import AutoencoderConfig


def init_ray(address: str | None = None) -> None:
    """Join `address` (or RAY_ADDRESS); with neither, start a fresh local Ray for this process.

    'local' rather than auto-detection: a crashed earlier Ray can leave a marker that makes
    auto-detection try to join a dead cluster.
    """
    # Ray's tqdm patches print() to redraw its bars around every line; our summary stays plain.
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, log_to_driver=True)


def run_tasks(fn: Callable[..., Any], calls: Sequence[tuple], *, desc: str,
              max_in_flight: int | None = None,
              summarise: Callable[[list[Any]], str] | None = None) -> list[Any]:
    """Run fn(*args) as one Ray task per call, at most `max_in_flight` at once, with a progress bar
    (its postfix is `summarise(results so far)`).

    Returns results in call order; a task that raised (or whose worker died) gives its exception
    object in its place, so one bad input never stops the others. Above the CPU count, tasks ask
    for a fraction of a CPU each, so I/O-bound work (hub reads) can have more in flight.
    """
    import ray

    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    limit = max_in_flight or cpus
    remote = ray.remote(max_retries=0, num_cpus=min(1.0, cpus / limit))(fn)
    results: list[Any] = [None] * len(calls)
    pending: dict[Any, int] = {}
    queue = list(enumerate(calls))
    with tqdm(total=len(calls), desc=desc, unit="model") as bar:
        while queue or pending:
            while queue and len(pending) < limit:
                i, args = queue.pop(0)
                pending[remote.remote(*args)] = i
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                results[i] = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - recorded by the caller, per input
                results[i] = exc
            bar.update(1)
            if summarise:
                bar.set_postfix_str(summarise([r for r in results if r is not None]))
    return results


def train_with_ray_train(kernel_paths: list[Path], out_dir: Path, config: AutoencoderConfig, *,
                         num_workers: int = 2, use_gpu: bool = False) -> dict[int, float]:
    """Train one autoencoder per kernel size with Ray Train (DDP: gloo on CPU, NCCL on GPU).

    Returns the final training loss per kernel size; rank 0 writes the weights to `out_dir`.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = tempfile.mkdtemp(prefix="dwscan-train-")
    try:
        trainer = TorchTrainer(
            _train_loop_per_worker,
            train_loop_config={"kernel_paths": [str(p) for p in kernel_paths],
                               "out_dir": str(out_dir), "config": asdict(config),
                               "cpus_per_worker": max(1, (os.cpu_count() or 1) // num_workers)},
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            run_config=RunConfig(name="autoencoders", storage_path=storage),
        )
        result = trainer.fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    if result.error:
        raise RuntimeError(f"autoencoder training failed: {result.error}")
    return {int(k): v for k, v in (result.metrics or {}).get("final_loss", {}).items()}


def _train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from pipeline.storage import as_location
    from pipeline.train import train_autoencoders

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no per-report INFO lines
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(loop_config["cpus_per_worker"])

    def on_check(k: int, step: int, budget: int, loss: float, cosine: float | None) -> None:
        # one plain line per check reaches the driver's log (no redrawn bar)
        if rank == 0:
            moved = "-" if cosine is None else f"{cosine:.4f}"
            print(f"train {k}x{k}: step {step} of at most {budget}, loss {loss:.4f}, "
                  f"templates vs last check cosine {moved}", flush=True)

    logs = train_autoencoders(
        [as_location(p) for p in loop_config["kernel_paths"]], as_location(loop_config["out_dir"]),
        AutoencoderConfig.from_dict(loop_config["config"]), rank=rank, world_size=world_size,
        wrap_model=ray.train.torch.prepare_model, device=str(device), on_check=on_check)
    ray.train.report({"final_loss": {str(k): log.losses[-1] for k, log in logs.items()}})
