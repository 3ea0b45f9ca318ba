"""The only place that schedules work on Ray: tasks over models, one-off tasks and Ray Train.

Stages stay plain functions; this module decides where they run. Everything here also works on a
laptop: with no address, a private local Ray is started for the run.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dwscan.executor.progress import StageProgress
from dwscan.io.storage import as_location, is_remote, sees_share_probe, write_share_probe
from dwscan.text import without_control_sequences


class ClusterError(RuntimeError):
    """The cluster cannot run this job as asked: joining it failed, or its nodes do not share
    the output folder. The message says what to do."""


class OutNotSeen(Exception):
    """Raised by a task, before it does anything, on a node that does not see the driver's
    `--out` (a node that joined after the start check); its argument names the node."""


JOIN_TIMEOUT_S = 5.0  # a head that takes longer to accept a TCP connection is not there
SHARE_CHECK_TIMEOUT_S = 120.0  # a node's check task (a worker process start) takes seconds
_MIN_WINDOW = 256  # tasks submitted ahead even on a cluster with no worker node up yet
_PENDING_PER_CPU = 4  # beyond that, tasks submitted ahead per CPU the cluster can grow to
_WAIT_S = 1.0  # the wait loop wakes at least this often
# Times a task is run again after a system failure (its worker or node lost: a node removed or
# reclaimed, a raylet gone, a worker killed), never after an exception the task raised itself
SYSTEM_FAILURE_RETRIES = 3
_system_failure_retries = 0  # this process's count, for the run log (system_failure_retries)
# On a cluster with a local --out: the probe (path, token) the driver keeps in OUT while it
# runs, which every task reads back before it starts (_on_shared_out); None: no check
_share_guard: tuple[str, str] | None = None
_joined = False  # init_ray joined a cluster (nodes can join later), not a private local Ray


def system_failure_retries() -> int:
    """Tasks this process has run again after a system failure, all runs so far; a run's own
    count is the difference across it."""
    return _system_failure_retries


def _is_system_failure(error: BaseException) -> bool:
    """Ray lost the task's worker or node, as opposed to the task raising (a bad file: not
    retried), being cancelled, or running past its time (TaskTimeout)."""
    import ray

    return (isinstance(error, ray.exceptions.RayError)
            and not isinstance(error, ray.exceptions.RayTaskError | ray.exceptions.TaskCancelledError))


def _retrying(error: BaseException, attempts: int, what: str) -> bool:
    """Whether a task that ended in `error` after `attempts` tries is run again; counts it."""
    global _system_failure_retries
    if not _is_system_failure(error) or attempts > SYSTEM_FAILURE_RETRIES:
        return False
    _system_failure_retries += 1
    print(f"WARNING: {what}: its worker or node was lost ({type(error).__name__}); running it "
          f"again (retry {attempts} of {SYSTEM_FAILURE_RETRIES})", file=sys.stderr, flush=True)
    return True


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
    # Our worker lines are few (rate-limited progress) and differ only in their numbers, which
    # Ray's de-duplication folds into one "[repeated 2x across cluster]" (in colour, even in a
    # log file): the runs training side by side would hide each other's steps.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    plain = not (sys.stdout.isatty() and sys.stderr.isatty())
    if plain:
        # a log file, `ray job logs` or cron mail: worker lines without colour codes around
        # their `(task pid=...)` prefix
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    import ray

    if plain:
        _plain_ray_log_lines()
    if not ray.is_initialized():
        global _joined
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        _check_joinable(address)
        ray.init(address=address, log_to_driver=True,
                 **({"include_dashboard": ray_train} if address == "local" else {}))
        _joined = address != "local"
    if out is not None:
        check_output_shared(out)


class _WithoutControlSequences(logging.Filter):
    """Ray's own lines with their colour codes taken out: it colours the dashboard's address
    ("View the dashboard at ...") with colorama whatever its output is."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\x1b" in message:
            record.msg, record.args = without_control_sequences(message), None
        return True


def _plain_ray_log_lines() -> None:
    """Install _WithoutControlSequences on the handlers of Ray's logger (`import ray` made
    them; a filter on the logger itself would miss its children's records)."""
    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, _WithoutControlSequences) for f in handler.filters):
            handler.addFilter(_WithoutControlSequences())


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
    """On a cluster, refuse a local `out` that some node does not see: each task writes on its
    own node, and the driver would find files missing, or a partial zoo.

    The driver writes a token into `out` and keeps it there while it runs. With more than one
    alive node, one tiny task per node, pinned to it, reads it back now; nodes that join later
    (the autoscaler's) are checked by every task, which reads it before it starts
    (_on_shared_out) and stops the run (ClusterError) on a node that does not see it.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    global _share_guard
    _drop_share_probe()
    root = as_location(out)
    if is_remote(root) or not _joined:
        return  # a URI is one place for every node; no node joins a private local Ray
    nodes = [n for n in ray.nodes() if n["Alive"]]  # before the probe: a node after it is late
    probe, token = write_share_probe(root)
    _share_guard = (str(probe), token)
    if len(nodes) < 2:
        return
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
    if blind:
        _drop_share_probe()
        raise ClusterError(
            f"--out {root} is not one folder for every node: {len(blind)} of {len(nodes)} nodes "
            f"do not see what the driver wrote there: {', '.join(blind)}. {_USE_A_SHARED_OUT}")


_USE_A_SHARED_OUT = ("Use a folder that every node mounts at the same path (NFS, EFS, ...) or "
                     "a URI such as s3://bucket/prefix.")


def _drop_share_probe() -> None:
    """Remove the probe this process keeps in OUT (at exit, or when a new run writes its own);
    one that a killed driver leaves is a temp file, cleared by the next run."""
    global _share_guard
    if _share_guard is not None:
        Path(_share_guard[0]).unlink(missing_ok=True)
        _share_guard = None


atexit.register(_drop_share_probe)


def _this_node() -> str:
    """This node as the out-folder messages name it: address (node id, first 12)."""
    import ray

    return (f"{ray.util.get_node_ip_address()} "
            f"(node {ray.get_runtime_context().get_node_id()[:12]})")


def _on_shared_out(guard: tuple[str, str] | None, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a task, once this node has read back the driver's token (`guard`): on a
    node that does not see `--out` it raises OutNotSeen before fn writes anything."""
    if guard is not None and not sees_share_probe(*guard):
        raise OutNotSeen(_this_node())
    return fn(*args)


def _late_node_error(error: OutNotSeen) -> ClusterError:
    """The run's end when a task met a node that does not see `--out`."""
    root = Path(_share_guard[0]).parent if _share_guard else "(the output folder)"
    return ClusterError(
        f"--out {root} is not one folder for every node: node {error.args[0]} joined after the "
        f"start and does not see what the driver wrote there; the run stops before that node "
        f"writes anything (what earlier stages committed stays). {_USE_A_SHARED_OUT}")


class TaskTimeout(Exception):
    """A task that ran past its `timeout` and was cancelled (its worker killed)."""


def run_tasks(fn: Callable[..., Any], calls: Sequence[tuple], *, desc: str,
              max_in_flight: int | None = None,
              summarise: Callable[[list[Any]], str] | None = None,
              timeout: float | None = None, num_gpus: float = 0, unit: str = "model"
              ) -> list[Any]:
    """Run fn(*args) as one Ray task per call, with progress (`summarise(results so far)` is
    shown beside the count of calls done, each call a `unit`: a model, or a batch of them).

    Tasks are submitted ahead of the free CPUs, each asking for one CPU: a pending task is
    demand that an autoscaler sees and answers with nodes. The window (at least _MIN_WINDOW,
    _PENDING_PER_CPU per CPU the cluster can grow to) bounds the driver's memory; arguments
    shared by every call are put in the object store once. `max_in_flight` caps the window;
    above the CPUs the cluster can ever have, tasks ask for a share of a CPU so I/O-bound work
    (hub reads) can have that many running.

    Returns results in call order; a task that raised gives its exception object in its place
    (the task's own exception, not Ray's wrapper with the remote traceback), so one bad input
    never stops the others. A task whose worker or node was lost is run again, up to
    SYSTEM_FAILURE_RETRIES times (counted: system_failure_retries). A task not finished
    `timeout` seconds after it started running is cancelled (its worker killed: a read stuck in
    the kernel cannot be interrupted otherwise) and gives TaskTimeout. `num_gpus`: GPUs each
    task asks for besides its CPU share (a task that needs a GPU to be fast; 0: none).
    """
    import ray

    max_cpus = cluster_max_cpus()
    if max_in_flight:
        window, num_cpus = max_in_flight, min(1.0, max(1, max_cpus) / max_in_flight)
    else:
        window, num_cpus = max(_MIN_WINDOW, _PENDING_PER_CPU * max_cpus), 1.0
    remote = ray.remote(max_retries=0, num_cpus=num_cpus, num_gpus=num_gpus)(
        _on_shared_out).options(name=getattr(fn, "__name__", "task"))
    calls = _put_shared_arguments(calls)
    results: list[Any] = [None] * len(calls)
    attempts = [0] * len(calls)
    pending: dict[Any, int] = {}
    queue = deque(enumerate(calls))
    clock = _TaskClock(timeout)
    with StageProgress(len(calls), desc, unit) as progress:
        while queue or pending:
            while queue and len(pending) < window:
                i, args = queue.popleft()
                attempts[i] += 1
                pending[remote.remote(_share_guard, fn, *args)] = i
            done, _ = ray.wait(list(pending), num_returns=1, timeout=_WAIT_S)
            if done:  # and whatever else finished meanwhile, in one sweep
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            finished = {ref: _result_or_error(ref) for ref in done}
            running_now = ([r for r in pending if r not in finished][:_slots_now(num_cpus)]
                           if timeout else [])
            for ref in clock.overdue(running_now):
                ray.cancel(ref, force=True)
                finished[ref] = TaskTimeout(f"timed out after {timeout:g} s")
            for ref, result in finished.items():
                i = pending.pop(ref)
                clock.forget(ref)
                if isinstance(result, OutNotSeen):
                    for other in pending:
                        ray.cancel(other, force=True)
                    raise _late_node_error(result)
                if _retrying(result, attempts[i], f"{desc} task {i + 1} of {len(calls)}"):
                    queue.appendleft((i, calls[i]))  # first in line: the others wait behind it
                    continue
                results[i] = result
                progress.update(1, summarise([r for r in results if r is not None])
                                if summarise else None)
    return results


def _result_or_error(ref: Any) -> Any:
    """A finished task's result; if it raised, its own exception (not Ray's wrapper with the
    remote traceback); if Ray lost it, Ray's error."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        return exc.cause if isinstance(exc.cause, BaseException) else exc
    except Exception as exc:  # noqa: BLE001 - recorded by the caller, per input
        return exc


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


def run_tasks_at_once(fn: Callable[..., Any], calls: Sequence[tuple], *, num_gpus: int = 0,
                      what: str = "task") -> list[Any]:
    """`fn(*args)` for every call, all submitted at once, one Ray task of one CPU (and
    `num_gpus` GPUs) each, so they run side by side wherever there are CPUs; results in call
    order. The first error is one RuntimeError naming `what`.

    max_calls=1: each worker exits afterwards, so the memory it held (for training: the
    kernels, torch's and malloc's caches, 670 MB at 300 models) is not kept by an idle worker."""
    import ray

    task = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=0, max_calls=1)(
        _on_shared_out).options(name=getattr(fn, "__name__", "task"))
    refs = {task.remote(_share_guard, fn, *args): i for i, args in enumerate(calls)}
    attempts = [1] * len(calls)
    results: list[Any] = [None] * len(calls)
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        i = refs.pop(done[0])
        result = _result_or_error(done[0])
        if _retrying(result, attempts[i], f"{what} {i + 1} of {len(calls)}"):
            attempts[i] += 1
            refs[task.remote(_share_guard, fn, *calls[i])] = i
        elif isinstance(result, BaseException):
            for ref in refs:
                ray.cancel(ref, force=True)
            if isinstance(result, OutNotSeen):
                raise _late_node_error(result)
            raise RuntimeError(f"{what} failed: {result}") from None
        else:
            results[i] = result
    return results


def run_ray_train(worker_fn: Callable[..., dict], worker_config: dict, num_workers: int,
                  use_gpu: bool, what: str = "training") -> dict:
    """Ray Train DDP (gloo on CPU, NCCL on GPU) over `num_workers` ranks (train_scaling).

    Each rank calls `worker_fn(worker_config, rank=, world_size=, device=, wrap_model=)`, where
    `wrap_model` is Ray Train's DDP wrapper; returns what rank 0 returned."""
    from ray.train import RunConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    storage = tempfile.mkdtemp(prefix="dwscan-train-")
    result, error = None, None
    try:
        trainer = TorchTrainer(
            _ray_train_loop, train_loop_config={"fn": worker_fn, "config": worker_config,
                                                "guard": _share_guard},
            scaling_config=train_scaling(num_workers, use_gpu),
            run_config=RunConfig(name=what.replace(" ", "-"), storage_path=storage),
        )
        result = trainer.fit()
        error = result.error
    except TrainingFailedError as raised:  # Ray Train 2 raises what the first one returned
        error = raised
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    if error is not None:
        blind = _out_not_seen_by_a_rank(error)
        if blind is not None:
            raise _late_node_error(blind) from None
        raise RuntimeError(f"{what} failed: {error}") from error
    return (result.metrics or {}).get("returned", {})


def _out_not_seen_by_a_rank(error: BaseException) -> OutNotSeen | None:
    """The OutNotSeen a rank on a late node raised, if one did: Ray Train keeps each rank's
    error in `worker_failures`."""
    if isinstance(error, OutNotSeen):
        return error
    failures = getattr(error, "worker_failures", None) or {}
    return next((f for f in failures.values() if isinstance(f, OutNotSeen)), None)


def _ray_train_loop(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no per-report INFO lines
    guard = loop_config.get("guard")
    if guard is not None and not sees_share_probe(*guard):
        raise OutNotSeen(_this_node())  # a rank writes the weights: nothing on a blind node
    context = ray.train.get_context()
    returned = loop_config["fn"](loop_config["config"], rank=context.get_world_rank(),
                                 world_size=context.get_world_size(),
                                 device=ray.train.torch.get_device(),
                                 wrap_model=ray.train.torch.prepare_model)
    ray.train.report({"returned": returned})
