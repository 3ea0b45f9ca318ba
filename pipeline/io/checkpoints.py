"""Reading checkpoints safely: the only module that opens weight files.

Safetensors, local or on the Hub, are read by byte ranges: the header (capped) first, then only
the tensors wanted, by one parser and one decoder (SafetensorsReader). Torch files are read only
with `torch.load(weights_only=True)`, which refuses any pickle that asks to build arbitrary
objects, so nothing in a hostile file runs. Every failure becomes a `CheckpointError` with a
one-line reason.

A hostile file may also claim more than it holds, so before anything is allocated: every file a
checkpoint folder names must resolve inside the folder, a torch zip may inflate to at most
`ReadLimits.max_torch_bytes`, a torch pickle may hold at most `ReadLimits.max_pickle_ops`
opcodes (counted by a scan of the pickle, before `torch.load` builds anything), safetensors
headers and tensor counts are capped before they are parsed, a shard index before it is read,
and a tensor must be backed by as many bytes as it declares (no stride-0 or overlapping views);
`dwscan.stages.extract` caps the kernels per model.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from dwscan.io.small_files import FileTooLarge, read_regular_file
from dwscan.text import one_line

SAFETENSORS_SUFFIXES = {".safetensors"}
TORCH_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}
# Files a Hugging Face style folder may hold, in order of preference (safetensors first).
FOLDER_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message is the one-line reason recorded for it."""


@dataclass(frozen=True)
class ReadLimits:
    """What one model may cost, whatever its files claim (README, "Safety", has the defaults).

    The biggest depthwise zoo models hold about 10^5 kernels (convnext_xxlarge: 54k), and a
    weights pickle is ~100 bytes per tensor, so the defaults refuse only files that lie.
    """

    max_kernels: int = 1_000_000  # depthwise kernels per model
    max_kernel_values: int = 100_000_000  # their weights together (400 MB as float32)
    max_torch_bytes: int = 1 << 30  # a torch file's bytes held in memory: its pickle, inflated
    # (compressed) storages, or all of a legacy (non-zip) file
    max_pickle_bytes: int = 64 << 20  # a torch zip's data.pkl, uncompressed
    # Parsed structures cost a multiple of what a file declares (a safetensors header ~10x its
    # bytes, an unpickled object up to ~100 bytes per opcode, a parsed JSON index ~4x its bytes),
    # so each is capped before it is parsed. A state dict costs ~38 pickle opcodes per tensor.
    max_tensors: int = 100_000  # tensors a checkpoint declares, all its files together
    max_header_bytes: int = 16 << 20  # its safetensors headers, all its files together
    max_pickle_ops: int = 2_000_000  # opcodes of a torch file's pickles (~50,000 tensors)
    max_index_bytes: int = 32 << 20  # a model.safetensors.index.json


DEFAULT_LIMITS = ReadLimits()

# `--model-timeout` default, the time one model may take: far beyond any honest read (a 3 GB
# pytorch_model.bin at 10 MB/s is 5 minutes), short enough that a stuck mount or a FIFO does not
# hold a nightly run for a day. Here beside the other limits, so the command line reads it
# without importing the run driver.
DEFAULT_MODEL_TIMEOUT = 3600.0


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str


def natural_key(name: str) -> tuple:
    """Sort key that puts 'blocks.2' before 'blocks.10' (safetensors headers lose module order)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name))


def _within_cap(amount: int, cap: int, what: str, cap_name: str) -> int:
    """`amount`, or a CheckpointError naming the cap when it is over it (checked before the
    thing counted is parsed or built)."""
    if amount > cap:
        raise CheckpointError(f"{amount} {what}, over the cap of {cap} per model ({cap_name})")
    return amount


# Safetensors dtype names this module can turn into float32 kernels.
FLOAT_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": None}
_TORCH_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}
# Fetch two tensors in one request when at most this many unwanted bytes lie between them.
COALESCE_GAP = 4096
# Beyond that, a file's wider gaps are joined too, smallest first, while the unwanted bytes
# they add stay within this share of the wanted bytes: one request instead of one per layer
# where small tensors (norms, biases) sit between the depthwise ones.
COALESCE_SHARE = 0.05
# What parsing a safetensors header holds, per byte of it (a dict of entries): the share of
# the worker's byte budget it takes while it is parsed.
HEADER_PARSE_FACTOR = 10


def _no_budget(n: int) -> AbstractContextManager:
    return nullcontext()


class SafetensorsReader:
    """Safetensors files read by byte ranges through `fetch(file, start, stop) -> bytes`, on the
    Hub (dwscan.io.hub) or local (SafetensorsCheckpoint): the header first, then only the
    tensors asked for, neighbours coalesced into one request. One parser and one decoder for
    every safetensors file dwscan reads: numpy only, no torch and no safetensors library.

    `heads` holds the first bytes of a file where they were read already (with other requests
    of the model, in the same round trip): its header comes from them as far as they reach,
    and bytes past the header are kept for the first tensors. `hold(n)` reserves n bytes of
    the worker's budget while a header is parsed."""

    def __init__(self, fetch, files: list[str], limits: ReadLimits = DEFAULT_LIMITS,
                 heads: dict[str, bytes] | None = None,
                 hold: Callable[[int], AbstractContextManager] = _no_budget,
                 sizes: dict[str, int] | None = None):
        self._fetch = fetch
        self._infos: dict[str, TensorInfo] = {}
        self._where: dict[str, tuple[str, int, int]] = {}  # name -> (file, start, stop)
        self._cache: dict[str, bytes] = {}
        self._ahead: dict[str, tuple[int, bytes]] = {}  # file -> (offset, bytes read already)
        self.header_bytes = 0  # the headers and their length fields
        declared = 0  # the header lengths the files declare, together
        for file in files:
            head = (heads or {}).get(file, b"")
            if len(head) < 8:
                head = self._fetch(file, 0, 8)
            if len(head) < 8:
                raise CheckpointError(f"corrupt safetensors file {file}: {len(head)} bytes, "
                                      f"shorter than its header's 8-byte length")
            length = struct.unpack("<Q", head[:8])[0]
            if length == 0:
                raise CheckpointError(f"corrupt safetensors file {file}: header length 0")
            if sizes is not None and length > sizes[file] - 8:
                raise CheckpointError(f"corrupt safetensors file {file}: header length {length} "
                                      f"past the end of the file ({sizes[file]} bytes)")
            declared = _within_cap(declared + length, limits.max_header_bytes,
                                   "bytes of safetensors header", "ReadLimits.max_header_bytes")
            with hold(HEADER_PARSE_FACTOR * length):
                raw = bytes(head[8:8 + length])
                if len(raw) < length:
                    raw += self._fetch(file, 8 + len(raw), 8 + length)
                try:
                    header = json.loads(raw)
                except (ValueError, RecursionError) as exc:
                    raise CheckpointError(f"corrupt safetensors header in {file}: "
                                          f"{one_line(exc, 200)}") from exc
                del raw
                self.header_bytes += 8 + length
                if not isinstance(header, dict):
                    raise CheckpointError(f"corrupt safetensors header in {file}: "
                                          f"not a JSON object")
                _within_cap(len(self._infos) + len(header) - ("__metadata__" in header),
                            limits.max_tensors, "tensors", "ReadLimits.max_tensors")
                spans = []
                for name, meta in header.items():
                    if name == "__metadata__":
                        continue
                    info, begin, end = _header_entry(file, name, meta)
                    self._infos[name] = info
                    self._where[name] = (file, 8 + length + begin, 8 + length + end)
                    spans.append((begin, end, name))
                del header
                _check_spans(file, spans, 8 + length, None if sizes is None else sizes[file])
            if len(head) > 8 + length:
                self._ahead[file] = (8 + length, bytes(head[8 + length:]))

    def tensor_infos(self) -> list[TensorInfo]:
        return [self._infos[n] for n in sorted(self._infos, key=natural_key)]

    def plan(self, names: list[str]) -> list[tuple[str, int, int, list[tuple[str, int, int]]]]:
        """The requests that fetch these tensors, (file, start, stop, [(name, start, stop)]):
        neighbours within COALESCE_GAP joined, then wider gaps, smallest first, while what
        they add stays within COALESCE_SHARE of the file's wanted bytes."""
        by_file: dict[str, list[tuple[int, int, str]]] = {}
        for name in names:
            if name not in self._cache:
                file, start, stop = self._where[name]
                by_file.setdefault(file, []).append((start, stop, name))
        requests = []
        for file, spans in by_file.items():
            spans.sort()
            gaps = sorted((spans[i + 1][0] - spans[i][1], i) for i in range(len(spans) - 1))
            budget = COALESCE_SHARE * sum(b - a for a, b, _ in spans)
            joined = set()
            for gap, i in gaps:
                if gap > COALESCE_GAP and gap > budget:
                    break
                joined.add(i)
                budget -= max(gap, 0) if gap > COALESCE_GAP else 0
            group: list[tuple[str, int, int]] = []
            for i, (start, stop, name) in enumerate(spans):
                group.append((name, start, stop))
                if i not in joined:
                    requests.append((file, group[0][1], max(g[2] for g in group), group))
                    group = []
        return requests

    def planned_bytes(self, names: list[str]) -> int:
        """Bytes that fetching these tensors holds at once (the coalesced requests)."""
        return sum(stop - start for _, start, stop, _ in self.plan(names))

    def prefetch(self, names: list[str]) -> None:
        """Fetch these tensors with as few requests as the gaps between them allow: side by
        side where `fetch` has `many(ranges)`. Bytes the first read brought past the header
        serve the start of the first request as far as they reach."""
        plan = self.plan(names)
        have: list[bytes] = []
        missing: list[tuple[str, int, int]] = []
        for file, start, stop, _ in plan:
            offset, ahead = self._ahead.get(file, (0, b""))
            held = ahead[start - offset:stop - offset] if offset <= start < offset + len(ahead) \
                else b""
            have.append(held)
            missing.append((file, start + len(held), stop))
        wanted = [r for r in missing if r[1] < r[2]]
        many = getattr(self._fetch, "many", None)
        fetched = iter(many(wanted) if many else [self._fetch(*r) for r in wanted])
        for (_, start, stop, group), held, (_, rest, _) in zip(plan, have, missing):
            data = held if rest == stop else next(fetched) if not held else held + next(fetched)
            for name, a, b in group:
                self._cache[name] = data[a - start:b - start]
        self._ahead.clear()

    def read(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self.prefetch([name])
        info = self._infos[name]
        return decode_tensor(self._cache.pop(name), info.dtype, info.shape)


class SafetensorsCheckpoint(SafetensorsReader):
    """Local safetensors files (one, or the shards of a sharded checkpoint), read as the Hub's
    are (SafetensorsReader) from byte ranges of the files, tensor by tensor: `prefetch` reads
    nothing ahead, since a local read costs no round trip and holding every tensor at once
    would cost memory. The files' sizes are known, so a header past the end of its file, and a
    tensor past it, are refused when the files are opened."""

    def __init__(self, files: list[Path], limits: ReadLimits = DEFAULT_LIMITS):
        # each file by its name, or by its path below the files' common folder where shards in
        # subfolders share a name
        unique = len({f.name for f in files}) == len(files)
        top = os.path.commonpath([f.parent for f in files]) if files else ""
        ranges = _LocalRanges({(f.name if unique else os.path.relpath(f, top)): f
                               for f in files})
        try:
            super().__init__(ranges, list(ranges.sizes), limits, sizes=ranges.sizes)
        except BaseException:
            ranges.close()
            raise

    def prefetch(self, names: list[str]) -> None:
        """Nothing: each tensor is read when asked for."""

    def read(self, name: str) -> np.ndarray:
        file, start, stop = self._where[name]
        info = self._infos[name]
        return decode_tensor(self._fetch(file, start, stop), info.dtype, info.shape)

    def close(self) -> None:
        self._fetch.close()


class _LocalRanges:
    """`fetch(file, start, stop)` over local files, each opened once (a path swapped for another
    file after it was checked is not followed again), read with pread."""

    def __init__(self, paths: dict[str, Path]):
        self._fds: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        try:
            for name, path in paths.items():
                self._fds[name] = os.open(path, os.O_RDONLY)
                self.sizes[name] = os.fstat(self._fds[name]).st_size
        except FileNotFoundError as exc:
            self.close()
            raise CheckpointError(f"file not found: {path}") from exc
        except OSError as exc:
            self.close()
            raise CheckpointError(f"cannot read {path.name}: {one_line(exc, 200)}") from exc

    def __call__(self, file: str, start: int, stop: int) -> bytes:
        try:
            return os.pread(self._fds[file], stop - start, start)
        except OSError as exc:
            raise CheckpointError(f"cannot read {file}: {one_line(exc, 200)}") from exc

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:  # a reader dropped without close()
        self.close()


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def _header_entry(file: str, name: str, meta: object) -> tuple[TensorInfo, int, int]:
    """One tensor of a safetensors header, checked: its byte span must hold exactly its shape."""
    try:
        dtype, shape, (begin, end) = meta["dtype"], meta["shape"], meta["data_offsets"]
        if not (isinstance(dtype, str) and isinstance(shape, list)
                and all(type(v) is int and v >= 0 for v in [*shape, begin, end])):
            raise TypeError
    except (TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"corrupt safetensors header in {file}: bad entry for "
                              f"{one_line(name, 100)}") from exc
    size = _DTYPE_BYTES.get(dtype)
    if size is not None and end - begin != size * _product(shape):
        raise CheckpointError(f"corrupt safetensors header in {file}: {one_line(name, 100)} "
                              f"declares shape {one_line(str(shape), 100)} "
                              f"({one_line(dtype, 20)}) but spans {end - begin} bytes")
    return TensorInfo(name, tuple(shape), dtype), begin, end


def _check_spans(file: str, spans: list[tuple[int, int, str]], data_start: int,
                 size: int | None) -> None:
    """No two tensors of a file share bytes: a header whose entries all point at one span would
    make a reader of every tensor (`read_state_dict`) hold that span once per entry. Where the
    file's size is known, no tensor ends past it."""
    spans = sorted(s for s in spans if s[1] > s[0])
    for (_, end, before), (begin, _, after) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(f"corrupt safetensors header in {file}: tensors "
                                  f"{one_line(before, 100)} and {one_line(after, 100)} share "
                                  f"bytes")
    if size is not None and spans and data_start + spans[-1][1] > size:  # disjoint: last ends last
        _, end, name = spans[-1]
        raise CheckpointError(f"corrupt safetensors file {file}: tensor {one_line(name, 100)} "
                              f"ends at byte {data_start + end}, past the end of the file "
                              f"({size} bytes)")


def _product(values) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


# Integer and boolean tensors (a batch norm's num_batches_tracked) read as float32 too, as a
# state dict to load into a network (dwscan.io.networks) holds every tensor.
_OTHER_DTYPES = {"I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
                 "U16": "<u2", "U32": "<u4", "U64": "<u8"}


def decode_tensor(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Raw little-endian safetensors bytes as a float32 array."""
    if dtype == "BF16":
        values = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    elif dtype in FLOAT_DTYPES or dtype in _OTHER_DTYPES:
        layout = FLOAT_DTYPES.get(dtype) or _OTHER_DTYPES[dtype]
        try:
            values = np.frombuffer(data, dtype=layout).astype(np.float32)
        except ValueError as exc:  # a byte count that is no whole number of values
            raise CheckpointError(f"tensor of {dtype} got {len(data)} bytes") from exc
    else:
        raise CheckpointError(f"unsupported dtype {one_line(dtype, 20)}")
    if values.size != _product(shape):
        raise CheckpointError(f"tensor of shape {one_line(str(shape), 100)} got {values.size} "
                              f"values")
    return values.reshape(shape)


class TorchCheckpoint:
    """A torch state dict, loaded with weights_only=True (memory-mapped when the file is a zip)."""

    def __init__(self, file: Path, limits: ReadLimits = DEFAULT_LIMITS):
        import torch

        if not file.is_file():
            raise CheckpointError(f"file not found: {file}")
        use_mmap = _check_torch_size(file, limits)
        _check_pickle_ops(file, limits)
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True, mmap=use_mmap)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"refused to unpickle {file.name}: it is not a plain weights file "
                f"(weights_only=True rejected it: {one_line(exc)[:160]})") from exc
        except Exception as exc:
            raise CheckpointError(f"corrupt torch file {file.name}: {one_line(exc)[:200]}") \
                from exc
        self._tensors = _find_state_dict(obj, file.name)

    def tensor_infos(self) -> list[TensorInfo]:
        return [TensorInfo(n, tuple(t.shape), _dtype_name(t.dtype)) for n, t in self._tensors.items()]

    def read(self, name: str) -> np.ndarray:
        import torch

        # a state dict saved with keep_vars=True holds Parameters that require grad (numpy()
        # refuses those); the weights are the same as a plain tensor's
        tensor = self._tensors[name].detach().as_subclass(torch.Tensor)
        _check_backing(name, tensor)
        return tensor.float().numpy()


def _check_torch_size(file: Path, limits: ReadLimits) -> bool:
    """Refuse a torch file that would inflate past the limits, from the zip directory alone
    (before torch.load); returns whether to memory-map it: only a zip whose storages are stored
    uncompressed can be mapped (torch maps compressed bytes as if they were the tensor)."""
    if not zipfile.is_zipfile(file):  # legacy format: torch reads all of it into memory
        size = file.stat().st_size
        if size > limits.max_torch_bytes:
            raise CheckpointError(f"{file.name} is a legacy (non-zip) torch file of {size} bytes, "
                                  f"over the cap of {limits.max_torch_bytes} (--max-torch-mb)")
        return False
    try:
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt torch file {file.name}: {one_line(exc)[:200]}") from exc
    pickles = [e for e in entries if e.filename.endswith("data.pkl")]
    pickle_bytes = sum(e.file_size for e in pickles)
    if pickle_bytes > limits.max_pickle_bytes:
        raise CheckpointError(f"{file.name}: its pickle inflates to {pickle_bytes} bytes, over the "
                              f"cap of {limits.max_pickle_bytes}")
    compressed = [e for e in entries if e.compress_type != zipfile.ZIP_STORED]
    in_memory = pickle_bytes + sum(e.file_size for e in compressed if e not in pickles)
    if in_memory > limits.max_torch_bytes:
        raise CheckpointError(f"{file.name} inflates to {in_memory} bytes in memory, over the cap "
                              f"of {limits.max_torch_bytes} (--max-torch-mb)")
    return not compressed


# A legacy (non-zip) torch file is five pickles in a row: magic number, protocol version,
# system info, the object, its storage keys (then raw storage bytes).
_LEGACY_PICKLES = 5


def _check_pickle_ops(file: Path, limits: ReadLimits) -> None:
    """Refuse a torch file whose pickles hold more than `limits.max_pickle_ops` opcodes, counted
    by a streamed scan of the opcodes (nothing is built): a few MB of one-byte opcodes would
    otherwise unpickle into GBs of containers, memo entries or marks."""
    ops = 0
    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                for entry in archive.infolist():
                    if entry.filename.endswith("data.pkl"):
                        with archive.open(entry) as stream:
                            ops = _count_pickle_ops(stream, ops, file.name, limits)
        else:
            with open(file, "rb") as stream:
                for _ in range(_LEGACY_PICKLES):
                    ops = _count_pickle_ops(stream, ops, file.name, limits)
    except (ValueError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"corrupt torch file {file.name}: {one_line(exc, 200)}") from exc


def _count_pickle_ops(stream, ops: int, file_name: str, limits: ReadLimits) -> int:
    """`ops` plus the opcodes of the one pickle at `stream`'s position, up to the cap."""
    for _ in pickletools.genops(stream):
        ops += 1
        if ops > limits.max_pickle_ops:
            raise CheckpointError(f"{file_name}: its pickles hold more opcodes than the cap of "
                                  f"{limits.max_pickle_ops} per model (ReadLimits.max_pickle_ops)")
    return ops


def _check_backing(name: str, tensor) -> None:
    """A tensor must be backed by as many bytes as it declares: a stride-0 or overlapping view
    of a small storage would otherwise become a huge array when read."""
    declared = tensor.numel() * tensor.element_size()
    backing = tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size()
    if declared > backing or _overlaps(tuple(tensor.shape), tensor.stride()):
        raise CheckpointError(
            f"tensor {name} declares shape {tuple(tensor.shape)} ({declared} bytes) over "
            f"{max(backing, 0)} bytes of storage with strides {tensor.stride()}: refused")


def _overlaps(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether two indices of a strided view share an element (sufficient test: sorted by stride,
    each stride must step past everything the smaller ones span)."""
    span = 1
    for size, stride in sorted((d for d in zip(shape, strides) if d[0] > 1), key=lambda d: d[1]):
        if stride < span:
            return True
        span = stride * size
    return False


def _dtype_name(dtype) -> str:
    """A torch dtype under its safetensors name ('F32', 'BF16', ...), so readers agree."""
    name = str(dtype).removeprefix("torch.")
    return _TORCH_DTYPES.get(name, name)


def _find_state_dict(obj: object, file_name: str) -> dict:
    import torch

    for wrapper in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file_name} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{file_name} holds no tensors")
    return tensors


def choose_weight_file(names: Iterable[str]) -> str | None:
    """The file a Hugging Face style folder or Hub repo is read from, of the `names` it holds:
    the first of FOLDER_WEIGHT_FILES there is (safetensors, then its shard index, then torch)."""
    names = set(names)
    return next((name for name in FOLDER_WEIGHT_FILES if name in names), None)


def weight_files(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> tuple[str, list[Path]]:
    """Which reader and which files a checkpoint path needs: ('safetensors'|'torch', files).

    Files a folder (or a shard index) names must resolve inside it, symlinks followed."""
    if path.is_dir():
        name = choose_weight_file(n for n in FOLDER_WEIGHT_FILES if (path / n).is_file())
        if name is None:
            raise CheckpointError(f"folder {path} has none of {', '.join(FOLDER_WEIGHT_FILES)}")
        kind, files = weight_files(path / name, limits)
        return kind, [confined(path, f) for f in [path / name, *files]][1:]
    if path.name.endswith(".safetensors.index.json"):
        return "safetensors", [confined(path.parent, path.parent / s)
                               for s in shard_names(read_shard_index(path, limits), path.name)]
    if path.suffix in SAFETENSORS_SUFFIXES:
        return "safetensors", [path]
    if path.suffix in TORCH_SUFFIXES:
        return "torch", [path]
    if not path.exists():
        raise CheckpointError(f"file not found: {path}")
    raise CheckpointError(
        f"unsupported checkpoint format {path.suffix or path.name!r}: expected .safetensors, "
        f"{', '.join(sorted(TORCH_SUFFIXES))} or a folder with {FOLDER_WEIGHT_FILES[0]}")


def read_shard_index(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> object:
    """A shard index, parsed: a regular file of at most `limits.max_index_bytes` (checked
    before it is read: a parsed index costs ~4x its size)."""
    try:
        return json.loads(read_regular_file(path, limits.max_index_bytes))
    except FileTooLarge as exc:
        raise CheckpointError(f"bad shard index {path.name}: over the cap of "
                              f"{limits.max_index_bytes} bytes (ReadLimits.max_index_bytes)") \
            from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"bad shard index {path.name}: {one_line(exc, 200)}") from exc


def shard_names(index: object, index_name: str) -> list[str]:
    """The shard files a `model.safetensors.index.json` names: plain relative names only."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"bad shard index {index_name}: no weight_map of shards")
    shards = sorted(set(map(str, weight_map.values())))
    for shard in shards:
        parts = PurePosixPath(shard).parts
        if (not shard or "\\" in shard or "\0" in shard or PurePosixPath(shard).is_absolute()
                or ".." in parts):
            raise CheckpointError(f"bad shard index {index_name}: shard {shard[:100]!r} is not "
                                  f"a file name inside the checkpoint")
    return shards


def confined(folder: Path, file: Path) -> Path:
    """`file` if it resolves (symlinks followed) inside `folder`, else a CheckpointError.

    The one exception is a Hugging Face cache snapshot (`.../snapshots/<rev>/`), whose files
    are symlinks into the repo's `blobs/` folder."""
    resolved = file.resolve()
    root = folder.resolve()
    allowed = [root]
    if folder.parent.name == "snapshots":
        allowed.append(folder.parent.parent.resolve() / "blobs")
    if not any(resolved.is_relative_to(a) for a in allowed):
        raise CheckpointError(f"{file.name} resolves outside the checkpoint folder "
                              f"({os.fspath(resolved)[:200]}): refused")
    return file


@contextmanager
def open_checkpoint(path: str | Path, limits: ReadLimits = DEFAULT_LIMITS
                    ) -> Iterator[SafetensorsCheckpoint | TorchCheckpoint]:
    kind, files = weight_files(Path(path), limits)
    reader = (SafetensorsCheckpoint(files, limits) if kind == "safetensors"
              else TorchCheckpoint(files[0], limits))
    try:
        yield reader
    finally:
        if isinstance(reader, SafetensorsCheckpoint):
            reader.close()

