"""Stage 1: pull every depthwise convolution kernel out of a checkpoint."""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dwscan import schemas
from dwscan.io.arrays import matrices_to_list_array
from dwscan.io.catalogue import model_row
from dwscan.io.checkpoints import (
    DEFAULT_LIMITS,
    FLOAT_DTYPES,
    CheckpointError,
    ReadLimits,
    TensorInfo,
    open_checkpoint,
)
from dwscan.io.storage import OutputLayout, OutputWriteError, pending_path, write_table
from dwscan.io.zoo import HUB_PREFIX, ModelSpec, config_beside, timm_metadata
from dwscan.text import one_line


@dataclass
class Extraction:
    """What one checkpoint gave: its kernels and the depthwise-like layers that were not kept."""

    kernels: pa.Table
    n_layers: int
    skipped_layers: list[dict] = field(default_factory=list)

    @property
    def n_filters(self) -> int:
        return self.kernels.num_rows


def depthwise_verdict(info: TensorInfo) -> str | None:
    """'keep', a skip reason, or None when the tensor is not a depthwise conv weight at all.

    A depthwise weight has shape (C*m, 1, kh, kw): one input channel per group. Shape alone cannot
    tell it from an ordinary conv on a 1-channel input, which is rare in DS-CNNs.
    """
    shape = info.shape
    if len(shape) != 4 or shape[1] != 1 or max(shape[2], shape[3]) < 2:
        return None
    if shape[2] != shape[3]:
        return f"non-square kernel {shape[2]}x{shape[3]}"
    if info.dtype not in FLOAT_DTYPES:
        return f"dtype {info.dtype} not supported"
    return "keep"


def extract_depthwise_kernels(checkpoint: str | Path, model_id: str,
                              limits: ReadLimits = DEFAULT_LIMITS) -> Extraction:
    """Read the depthwise kernels of one local checkpoint, in network order, as a KERNELS table."""
    with open_checkpoint(checkpoint, limits) as ckpt:
        return extract_from_reader(ckpt, model_id, limits)


def extract_from_reader(ckpt, model_id: str, limits: ReadLimits = DEFAULT_LIMITS) -> Extraction:
    """Depthwise kernels from any reader with `tensor_infos()` and `read(name)` (and, if it has
    one, `prefetch(names)`, called once with every tensor it will be asked for). The kernel caps
    are checked on the declared shapes, before anything is read."""
    kept, skipped = depthwise_tensors(ckpt, limits)
    if hasattr(ckpt, "prefetch"):
        ckpt.prefetch([info.name for info in kept])
    return kernels_of(ckpt, model_id, kept, skipped)


def depthwise_tensors(ckpt, limits: ReadLimits = DEFAULT_LIMITS
                      ) -> tuple[list[TensorInfo], list[dict]]:
    """The tensors to keep, in network order, and the depthwise-like ones skipped (with why);
    the kernel caps checked on their declared shapes, before anything is read."""
    kept: list[TensorInfo] = []
    skipped: list[dict] = []
    for info in ckpt.tensor_infos():
        verdict = depthwise_verdict(info)
        if verdict == "keep":
            kept.append(info)
        elif verdict is not None:
            skipped.append({"layer": one_line(info.name, None),
                            "shape": "x".join(map(str, info.shape)), "reason": one_line(verdict)})
    _check_kernel_caps(kept, limits)
    return kept, skipped


def kernels_of(ckpt, model_id: str, kept: list[TensorInfo], skipped: list[dict]) -> Extraction:
    """The KERNELS table of the `kept` tensors: the CPU part of a model's extraction."""
    columns: dict[str, list] = {name: [] for name in schemas.KERNELS.names}
    n_layers = len(kept)
    for index, info in enumerate(kept):
        channels, _, k, _ = info.shape
        values = ckpt.read(info.name).reshape(channels, k * k).astype(np.float32, copy=False)
        columns["model_id"].append(np.full(channels, model_id, dtype=object))
        # a state-dict key is text from the file: stored (and shown) plain
        columns["layer"].append(np.full(channels, one_line(info.name, None), dtype=object))
        columns["layer_index"].append(np.full(channels, index, dtype=np.int32))
        columns["depth"].append(np.full(channels, index / max(n_layers - 1, 1), np.float32))
        columns["channel"].append(np.arange(channels, dtype=np.int32))
        columns["kernel_size"].append(np.full(channels, k, dtype=np.int32))
        columns["weights"].append(values)
    return Extraction(kernels=_kernels_table(columns), n_layers=n_layers, skipped_layers=skipped)


def _check_kernel_caps(kept: list[TensorInfo], limits: ReadLimits) -> None:
    kernels = sum(info.shape[0] for info in kept)
    values = sum(info.shape[0] * info.shape[2] * info.shape[3] for info in kept)
    if kernels > limits.max_kernels:
        raise CheckpointError(f"{kernels} depthwise kernels, over the cap of {limits.max_kernels} "
                              f"per model (--max-kernels)")
    if values > limits.max_kernel_values:
        raise CheckpointError(f"{values} depthwise weights, over the cap of "
                              f"{limits.max_kernel_values} per model")


def _kernels_table(columns: dict[str, list]) -> pa.Table:
    if not columns["weights"]:
        return schemas.KERNELS.empty_table()
    arrays = {}
    for name, parts in columns.items():
        if name == "weights":
            arrays[name] = matrices_to_list_array(parts)
        else:
            arrays[name] = pa.array(np.concatenate(parts), type=schemas.KERNELS.field(name).type)
    return pa.table(arrays, schema=schemas.KERNELS)


def extract_model_to_parquet(spec: ModelSpec, out: str | Path, limits: ReadLimits = DEFAULT_LIMITS,
                             token: str | None = None) -> dict:
    """Extract one model into OUT/kernels/<model>.parquet; its MODELS row, failed or not.

    With a `token` the kernels go to the model's pending file (`storage.pending_path`), which
    the run moves into place only once models.parquet records this scan (`run.scan_models`),
    so nothing stored earlier is touched here. Any failure to read the model is this model's
    alone: it is recorded with a one-line reason. A failure to write OUT raises
    OutputWriteError: the run then commits nothing. A model with no depthwise convolution is
    'skipped'. The row carries the worker's peak memory while reading it (VmHWM).
    """
    _reset_peak_memory()
    layout = OutputLayout(out)
    row = model_row(spec)
    try:
        if spec.source.startswith(HUB_PREFIX):
            from dwscan.io.hub import open_hub_checkpoint  # huggingface_hub: only when needed

            with open_hub_checkpoint(spec.source.removeprefix(HUB_PREFIX), spec.revision,
                                     limits=limits) as hub:
                extraction = extract_from_reader(hub.reader, spec.model_id, limits)
                config, warnings = hub.config, hub.config_warnings
                row.update(revision=one_line(hub.revision or "", 100) or None,
                           bytes_fetched=hub.bytes_fetched, range_support=hub.range_support)
        else:
            config, warnings = config_beside(spec.source)
            extraction = extract_depthwise_kernels(spec.source, spec.model_id, limits)
    except Exception as exc:  # noqa: BLE001 - one model's failure must not end the run
        reason = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
        return {**row, "status": "failed", "error": one_line(reason),
                "peak_memory_bytes": peak_memory_bytes()}
    _complete_row(row, spec, layout, extraction, config, warnings, token)
    return {**row, "peak_memory_bytes": peak_memory_bytes()}


def _complete_row(row: dict, spec: ModelSpec, layout: OutputLayout, extraction: Extraction,
                  config: dict, warnings: list[str], token: str | None) -> None:
    """Fill a read model's row from its config.json and kernels, and write the kernels (to the
    pending file with a `token`); OutputWriteError when OUT cannot be written."""
    metadata = timm_metadata(config)
    warnings = warnings + metadata["warnings"]
    row.update(architecture=metadata["architecture"], pretrained_tag=metadata["pretrained_tag"],
               input_size=metadata["input_size"], warnings=one_line("; ".join(warnings)) or None,
               accuracy_key=spec.accuracy_key or metadata["accuracy_key"] or spec.model_id,
               n_layers=extraction.n_layers, n_filters=extraction.n_filters,
               skipped_layers=extraction.skipped_layers)
    if extraction.n_layers:
        target = layout.kernels_path(spec.model_id)
        try:
            write_table(extraction.kernels, pending_path(target, token) if token else target,
                        schemas.KERNELS)
        except OSError as exc:
            raise OutputWriteError(f"cannot write the kernels of {spec.model_id} to "
                                   f"{layout.root}: {one_line(str(exc), 200)}") from None
    else:
        row.update(status="skipped", error="no depthwise convs")


# What the hub models read side by side in one worker may hold at once: their depthwise ranges,
# headers being parsed, torch files loaded (hub.ByteBudget). One model larger than this is read
# alone; the README's per-model caps still bound each one.
HUB_BUDGET_BYTES = 512 << 20
# A model thread still running this long after its deadline (a read that cannot see the
# deadline, e.g. a whole pytorch_model.bin download) is left behind and its model recorded as
# timed out, so the other models of its batch are not held up.
ABANDON_GRACE_S = 10.0


def extract_hub_models_to_parquet(specs: list[ModelSpec], out: str | Path,
                                  limits: ReadLimits = DEFAULT_LIMITS, token: str | None = None,
                                  threads: int = 16, model_timeout: float | None = None,
                                  budget_bytes: int = HUB_BUDGET_BYTES) -> list[dict]:
    """Extract hub models in this one worker, `threads` at once: a hub model spends nearly all
    its time waiting on round trips, so one process overlaps many instead of one process per
    model (~200 MB each). What they hold is bounded by `budget_bytes`; the CPU part (decoding,
    the table, the Parquet write) runs one model at a time in one thread, as the worker holds
    one CPU.

    Returns one MODELS row per spec, as `extract_model_to_parquet` would. Each model has
    `model_timeout` seconds from when its thread starts: its requests, retry waits and body
    reads stop at the deadline ('timed out after N s'). A failure to write OUT raises
    OutputWriteError once the batch's other models are done. `peak_memory_bytes` is the
    worker's peak while the batch ran up to that model's end (shared with the models beside it).
    """
    from dwscan.io.hub import ByteBudget, Deadline, HubOptions, ModelTimeout, open_hub_checkpoint

    _reset_peak_memory()
    layout = OutputLayout(out)
    budget = ByteBudget(budget_bytes)
    # The CPU part of every model runs in this one thread: one model at a time, as the worker
    # holds one CPU, and one thread's allocator caches (Arrow's mimalloc keeps a heap per
    # thread: 16 threads writing Parquet held ~0.4 GB where one holds ~0.2 GB)
    cpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dwscan-cpu")
    started: dict[int, float] = {}
    left_behind: set[int] = set()

    def write(i: int, spec: ModelSpec, hub, kept: list[TensorInfo], skipped: list[dict],
              row: dict) -> None:
        if i in left_behind:
            raise ModelTimeout(f"timed out after {model_timeout:g} s")
        extraction = kernels_of(hub.reader, spec.model_id, kept, skipped)
        row.update(revision=one_line(hub.revision or "", 100) or None,
                   bytes_fetched=hub.bytes_fetched, range_support=hub.range_support)
        _complete_row(row, spec, layout, extraction, hub.config, hub.config_warnings, token)

    def one(i: int, spec: ModelSpec) -> dict:
        started[i] = time.monotonic()
        deadline = Deadline(model_timeout) if model_timeout else None
        row = model_row(spec)
        try:
            with open_hub_checkpoint(spec.source.removeprefix(HUB_PREFIX), spec.revision,
                                     HubOptions(deadline=deadline), limits, budget) as hub:
                kept, skipped = depthwise_tensors(hub.reader, limits)
                names = [info.name for info in kept]
                need = hub.reader.planned_bytes(names) if hasattr(hub.reader, "plan") else 0
                with budget.hold(need, deadline):
                    if hasattr(hub.reader, "prefetch"):
                        hub.reader.prefetch(names)
                    cpu.submit(write, i, spec, hub, kept, skipped, row).result()
        except OutputWriteError:
            raise
        except Exception as exc:  # noqa: BLE001 - one model's failure must not end the batch
            reason = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
            row.update(status="failed", error=one_line(reason))
        return {**row, "peak_memory_bytes": peak_memory_bytes()}

    rows: list[dict | None] = [None] * len(specs)
    write_error: OutputWriteError | None = None
    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="dwscan-model")
    try:
        futures = {pool.submit(one, i, spec): i for i, spec in enumerate(specs)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    rows[futures[future]] = future.result()
                except OutputWriteError as exc:
                    write_error = write_error or exc
            for future in [f for f in pending if model_timeout and futures[f] in started and
                           time.monotonic() - started[futures[f]] > model_timeout + ABANDON_GRACE_S]:
                i = futures[future]
                left_behind.add(i)
                pending.discard(future)
                rows[i] = {**model_row(specs[i], f"timed out after {model_timeout:g} s"),
                           "peak_memory_bytes": peak_memory_bytes()}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        cpu.shutdown(wait=False)
    if write_error is not None:
        raise write_error
    return rows


def _reset_peak_memory() -> None:
    """Start this model's peak from the current size (Linux: clear_refs 5); a worker that cannot
    keeps its lifetime peak, still an upper bound."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_bytes() -> int | None:
    """This process's peak resident memory (VmHWM) in bytes; None where /proc has none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
