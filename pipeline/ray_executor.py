"""The only place that schedules work on Ray: tasks over models, and the autoencoders' training.

Stages stay plain functions; this module decides where they run. Everything here also works on a
laptop: with no address, a private local Ray is started for the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.autoencoder import AutoencoderConfig
from pipeline.memory import release_free_memory
from pipeline.progress import StageProgress
from pipeline.storage import as_location, is_remote, sees_share_probe, write_share_probe


class ClusterError(RuntimeError):
    """The cluster cannot run this job as asked: joining it failed, or its nodes do not share
    the output folder. The message says what to do."""


JOIN_TIMEOUT_S = 5.0  # a head that takes longer to accept a TCP connection is not there
SHARE_CHECK_TIMEOUT_S = 120.0  # a node's check task (a worker process start) takes seconds
_MIN_WINDOW = 256  # tasks submitted ahead even on a cluster with no worker node up yet
_PENDING_PER_CPU = 4  # beyond that, tasks submitted ahead per CPU the cluster can grow to
_WAIT_S = 1.0  # the wait loop wakes at least this often
TRAIN_PROGRESS_EVERY_S = 15.0  # at most one training progress line per this many seconds


def init_ray(address: str | None = None, out: str | os.PathLike | None = None, *,
             ray_train: bool = False) -> None:
    """Join `address` (or RAY_ADDRESS); with neither, start a fresh local Ray for this process.
    With `out`, check that every node sees that output folder (`check_output_shared`).

    A local Ray lives as long as the command, so it starts without the dashboard's modules
    (about 200 MB in nine processes) unless `ray_train`: Ray Train's placement-group cleaner
    watches its controller through the state API, which the dashboard serves.

    'local' rather than auto-detection: a crashed earlier Ray can leave a marker that makes
    auto-detection try to join a dead cluster. Raises ClusterError when joining fails.
    """
    # Ray's tqdm patches print() to redraw its bars around every line; our summary stays plain.
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        _check_joinable(address)
        ray.init(address=address, log_to_driver=True,
                 **({"include_dashboard": ray_train} if address == "local" else {}))
    if out is not None:
        check_output_shared(out)


def _check_joinable(address: str) -> None:
    """Fail within seconds, saying what to do, where ray.init would print 20 s of GCS warnings
    and a traceback (a cluster with token authentication, a client without the token) or wait
    for a head that is not there."""
    if address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # a form ray.init itself explains
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=JOIN_TIMEOUT_S).close()
    except OSError as error:
        raise ClusterError(
            f"cannot join the Ray cluster at {address}: nothing answers there "
            f"({error.strerror or error}). Check the address (the head's GCS port, 6379 unless "
            f"`ray start --head --port` said otherwise; `ray status` on the head prints it) and "
            f"that the head is running.") from None
    if address.startswith("ray://"):
        return
    import ray._raylet
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray.exceptions import AuthenticationError, RayError

    try:
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
        ray._raylet.GcsClient(address=address)  # one call: the cluster id
    except AuthenticationError:
        mode = os.environ.get("RAY_AUTH_MODE") or "unset"
        raise ClusterError(
            f"cannot join the Ray cluster at {address}: it requires its authentication token, "
            f"and this client has none or another one (RAY_AUTH_MODE is {mode}). Run with "
            f"RAY_AUTH_MODE=token and the cluster's token: `ray get-auth-token` on the head "
            f"prints it; put it in ~/.ray/auth_token or RAY_AUTH_TOKEN (or name its file in "
            f"RAY_AUTH_TOKEN_PATH).") from None
    except RayError as error:
        raise ClusterError(f"cannot join the Ray cluster at {address}: something answers there, "
                           f"but not a Ray head ({str(error).splitlines()[0]}).") from None


def check_output_shared(out: str | os.PathLike) -> None:
    """On a cluster of more than one alive node, refuse a local `out` that some node does not
    see: each task writes on its own node, and the driver would find files missing, or a
    partial zoo. One tiny task per node, pinned to it, reads back a token the driver wrote.

    Nodes that the autoscaler adds later are not checked: mount the folder on every node
    (cluster.yaml's setup_commands) or use a URI such as s3://.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root = as_location(out)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if is_remote(root) or len(nodes) < 2:
        return
    probe, token = write_share_probe(root)
    try:
        check = ray.remote(num_cpus=0, max_retries=0)(sees_share_probe)
        refs = {check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                    n["NodeID"], soft=False)).remote(str(probe), token): n for n in nodes}
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=SHARE_CHECK_TIMEOUT_S)
        blind = []
        for ref, node in refs.items():
            try:
                seen = ref in ready and ray.get(ref)
            except Exception:  # noqa: BLE001 - a node that cannot even run the check
                seen = False
            if not seen:
                blind.append(f"{node['NodeManagerAddress']} (node {node['NodeID'][:12]})")
        for ref in late:
            ray.cancel(ref, force=True)
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise ClusterError(
            f"--out {root} is not one folder for every node: {len(blind)} of {len(nodes)} nodes "
            f"do not see what the driver wrote there: {', '.join(blind)}. Use a folder that every "
            f"node mounts at the same path (NFS, EFS, ...) or a URI such as s3://bucket/prefix.")


class TaskTimeout(Exception):
    """A task that ran past its `timeout` and was cancelled (its worker killed)."""


def run_tasks(fn: Callable[..., Any], calls: Sequence[tuple], *, desc: str,
              max_in_flight: int | None = None,
              summarise: Callable[[list[Any]], str] | None = None,
              timeout: float | None = None) -> list[Any]:
    """Run fn(*args) as one Ray task per call, with progress (`summarise(results so far)` is
    shown beside the count).

    Tasks are submitted ahead of the free CPUs, each asking for one CPU: a pending task is
    demand that an autoscaler sees and answers with nodes. The window (at least _MIN_WINDOW,
    _PENDING_PER_CPU per CPU the cluster can grow to) bounds the driver's memory; arguments
    shared by every call are put in the object store once. `max_in_flight` caps the window;
    above the CPUs the cluster can ever have, tasks ask for a share of a CPU so I/O-bound work
    (hub reads) can have that many running.

    Returns results in call order; a task that raised (or whose worker died) gives its exception
    object in its place (the task's own exception, not Ray's wrapper with the remote traceback),
    so one bad input never stops the others. A task not finished `timeout` seconds after it
    started running is cancelled (its worker killed: a read stuck in the kernel cannot be
    interrupted otherwise) and gives TaskTimeout.
    """
    import ray

    max_cpus = cluster_max_cpus()
    if max_in_flight:
        window, num_cpus = max_in_flight, min(1.0, max(1, max_cpus) / max_in_flight)
    else:
        window, num_cpus = max(_MIN_WINDOW, _PENDING_PER_CPU * max_cpus), 1.0
    remote = ray.remote(max_retries=0, num_cpus=num_cpus)(fn)
    calls = _put_shared_arguments(calls)
    results: list[Any] = [None] * len(calls)
    pending: dict[Any, int] = {}
    queue = deque(enumerate(calls))
    clock = _TaskClock(timeout)
    with StageProgress(len(calls), desc) as progress:
        while queue or pending:
            while queue and len(pending) < window:
                i, args = queue.popleft()
                pending[remote.remote(*args)] = i
            done, _ = ray.wait(list(pending), num_returns=1, timeout=_WAIT_S)
            if done:  # and whatever else finished meanwhile, in one sweep
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            finished: dict[Any, Any] = {}
            for ref in done:
                try:
                    finished[ref] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task raised: keep its own error
                    finished[ref] = exc.cause if isinstance(exc.cause, BaseException) else exc
                except Exception as exc:  # noqa: BLE001 - recorded by the caller, per input
                    finished[ref] = exc
            running_now = ([r for r in pending if r not in finished][:_slots_now(num_cpus)]
                           if timeout else [])
            for ref in clock.overdue(running_now):
                ray.cancel(ref, force=True)
                finished[ref] = TaskTimeout(f"timed out after {timeout:g} s")
            for ref, result in finished.items():
                results[pending.pop(ref)] = result
                clock.forget(ref)
                progress.update(1, summarise([r for r in results if r is not None])
                                if summarise else None)
    return results


class _TaskClock:
    """Each task's time limit. Tasks are submitted ahead of the CPUs, and time spent waiting for
    one is not the model's fault: a task's clock starts when it is among the first tasks (in
    submission order) that the CPUs up now can run."""

    def __init__(self, timeout: float | None):
        self.timeout = timeout
        self.started: dict[Any, float] = {}

    def overdue(self, running: list) -> list:
        """Of the tasks taken to be running, those past their limit."""
        if not self.timeout:
            return []
        now = time.monotonic()
        for ref in running:
            self.started.setdefault(ref, now)
        return [ref for ref in running if now - self.started[ref] > self.timeout]

    def forget(self, ref: Any) -> None:
        self.started.pop(ref, None)


def _slots_now(num_cpus: float) -> int:
    """Tasks of `num_cpus` each that the nodes up now can run at once."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 0) / num_cpus))


def cluster_max_cpus() -> int:
    """The CPUs the cluster can grow to: its autoscaler's configured maximum where it reports
    one, else the CPUs of the nodes up now."""
    import ray

    try:
        from ray._private.state import state

        configured = (state.get_max_resources_from_cluster_config() or {}).get("CPU")
    except Exception:  # noqa: BLE001 - private API; the fallback is always right for a fixed cluster
        configured = None
    if configured and configured < 1 << 20:
        return int(configured)
    return int(ray.cluster_resources().get("CPU", 0))


def _put_shared_arguments(calls: Sequence[tuple]) -> list[tuple]:
    """Arguments that every call passes as the same object (a template table, say) go to the
    object store once, not once per pending task."""
    import ray

    if len(calls) < 2:
        return list(calls)
    first = calls[0]
    shared = {j for j, arg in enumerate(first) if not isinstance(arg, str | int | float | Path)
              and all(len(c) == len(first) and c[j] is arg for c in calls)}
    refs = {j: ray.put(first[j]) for j in shared}
    return [tuple(refs.get(j, arg) for j, arg in enumerate(c)) for c in calls]


def train_scaling(num_workers: int, use_gpu: bool):
    """Ray Train's workers: `num_workers` DDP ranks of one CPU each, or of one GPU (and one
    CPU) each with `use_gpu`, so a rank never shares a GPU and NCCL gets one device per rank."""
    from ray.train import ScalingConfig

    if num_workers < 1:
        raise ValueError(f"--train-workers must be at least 1, not {num_workers}")
    return ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                         resources_per_worker={"CPU": 1, "GPU": 1} if use_gpu else None)


def train_on_ray(kernel_paths: list[Path], out_dir: Path, config: AutoencoderConfig, *,
                 num_workers: int = 1, use_gpu: bool = False) -> dict[int, float]:
    """Train one autoencoder per kernel size on the cluster; rank 0 writes the weights to
    `out_dir`. Returns the final training loss per kernel size.

    One worker (the default): one Ray task, asking for one CPU (or one GPU), using every CPU of
    its node. Ray Train's controller and helper actors would add five processes and about 0.7
    GiB of memory for no parallelism (BENCHMARKS.md, "zoo"). Several workers: Ray Train DDP (gloo
    on CPU, NCCL on GPU), `num_workers` ranks of one CPU or one GPU each (train_scaling), which
    on a cluster is what makes the autoscaler start gpu_worker nodes.
    """
    if num_workers < 1:
        raise ValueError(f"--train-workers must be at least 1, not {num_workers}")
    loop_config = {"kernel_paths": [str(p) for p in kernel_paths], "out_dir": str(out_dir),
                   "config": asdict(config),
                   "cpus_per_worker": max(1, (os.cpu_count() or 1) // num_workers)}
    if num_workers == 1:
        return _train_in_one_task(loop_config, use_gpu)
    return _train_with_ray_train(loop_config, num_workers, use_gpu)


def _train_in_one_task(loop_config: dict, use_gpu: bool) -> dict[int, float]:
    import ray

    # max_calls=1: the worker exits after training, so the memory it held (the kernels, torch's
    # and malloc's caches: 670 MB at 300 models) is not kept by an idle worker for the run's rest
    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0, max_retries=0, max_calls=1)(
        _train_single_worker)
    try:
        return ray.get(task.remote(loop_config, use_gpu))
    except ray.exceptions.RayTaskError as error:
        raise RuntimeError(f"autoencoder training failed: {error.cause or error}") from None


def _train_single_worker(loop_config: dict, use_gpu: bool) -> dict[int, float]:
    import torch

    # Ray points CUDA_VISIBLE_DEVICES at the task's one GPU; the threads are this node's CPUs
    device = torch.device("cuda" if use_gpu else "cpu")
    loop_config = {**loop_config, "cpus_per_worker": os.cpu_count() or 1}
    logs = _train_this_worker(loop_config, rank=0, world_size=1, device=device, wrap_model=None)
    release_free_memory()  # the worker lingers a few seconds while it exits (max_calls=1)
    return {k: log.losses[-1] for k, log in logs.items()}


def _train_with_ray_train(loop_config: dict, num_workers: int, use_gpu: bool) -> dict[int, float]:
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    storage = tempfile.mkdtemp(prefix="dwscan-train-")
    try:
        trainer = TorchTrainer(
            _train_loop_per_worker, train_loop_config=loop_config,
            scaling_config=train_scaling(num_workers, use_gpu),
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

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no per-report INFO lines
    context = ray.train.get_context()
    logs = _train_this_worker(loop_config, rank=context.get_world_rank(),
                              world_size=context.get_world_size(),
                              device=ray.train.torch.get_device(),
                              wrap_model=ray.train.torch.prepare_model)
    ray.train.report({"final_loss": {str(k): log.losses[-1] for k, log in logs.items()}})


def _train_this_worker(loop_config: dict, rank: int, world_size: int, device,
                       wrap_model: Callable | None) -> dict:
    """One rank's share of training, with plain progress lines (no redrawn bar) that reach the
    driver's log at most every TRAIN_PROGRESS_EVERY_S seconds and at each size's last step."""
    import torch

    from pipeline.storage import as_location
    from pipeline.train import train_autoencoders

    if device.type == "cpu":
        torch.set_num_threads(loop_config["cpus_per_worker"])
    last_line = {"at": float("-inf")}

    def on_check(k: int, step: int, budget: int, loss: float, cosine: float | None) -> None:
        now = time.monotonic()
        if rank == 0 and (now - last_line["at"] >= TRAIN_PROGRESS_EVERY_S or step >= budget):
            last_line["at"] = now
            moved = "-" if cosine is None else f"{cosine:.4f}"
            print(f"train {k}x{k}: step {step} of at most {budget}, loss {loss:.4f}, "
                  f"templates vs last check cosine {moved}", flush=True)

    return train_autoencoders(
        [as_location(p) for p in loop_config["kernel_paths"]], as_location(loop_config["out_dir"]),
        AutoencoderConfig.from_dict(loop_config["config"]), rank=rank, world_size=world_size,
        wrap_model=wrap_model, device=str(device), on_check=on_check)
