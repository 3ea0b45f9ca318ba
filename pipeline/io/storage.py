"""The output folder: where each table lives, and atomic Parquet writes with explicit schemas.

`--out` is a local folder or a URI of any fsspec filesystem (`s3://bucket/prefix`, `gs://...`),
since on a cluster every node must see it. Locally a file is written beside its target and
renamed over it; on an object store a file is one object that appears whole when its upload
completes (and is discarded if the write fails), so readers never see half a file either way.
Remote paths are `UPath`s, which answer the same pathlib calls (`/`, exists, unlink, glob, ...).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from dwscan import schemas
from dwscan.text import has_control_characters, one_line

Location = Path | UPath  # a local path, or a path on an fsspec filesystem


def as_location(out: str | os.PathLike) -> Location:
    """`s3://bucket/x` (any URI with a scheme) as a UPath; anything else as an absolute Path
    (Ray workers run in other folders)."""
    if isinstance(out, UPath):
        return out
    text = os.fspath(out)
    if "://" in text and not text.startswith("file://"):
        return UPath(text)
    return Path(text.removeprefix("file://")).resolve()


def is_remote(path: Location) -> bool:
    return isinstance(path, UPath)


def write_bytes_atomic(path: Location, data: bytes) -> None:
    """Whole or not at all (see module docstring)."""
    if is_remote(path):
        path.write_bytes(data)
        return
    fd, tmp = _temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_share_probe(root: Path) -> tuple[Path, str]:
    """A file with a fresh token in `root`, for every node to read back (the check that a local
    `--out` is one folder for the whole cluster). Named like a temp file, so one that a killed
    run leaves behind is cleared with them."""
    token = secrets.token_hex(16)
    path = root / f".dwscan-shared-{token}.tmp"
    write_bytes_atomic(path, token.encode())
    return path, token


def sees_share_probe(path: str, token: str) -> bool:
    """On a node: does this node see the probe the driver wrote?"""
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def _temp_file_beside(path: Path) -> tuple[int, str]:
    """A new hidden temp file next to `path` (its folder made if missing), open for writing.

    Created with mode 0666 and folders with 0777, both less the umask, as any new file: unlike
    `tempfile.mkstemp`'s 0600, which the rename would carry onto the output and lock out the
    colleagues (or the group) the user's umask lets read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _source(path: str | os.PathLike | Location) -> Any:
    """What pyarrow opens: the local path, or an open file of a remote one."""
    if isinstance(path, UPath):
        return path.fs.open(path.path, "rb")
    return path


# Longest file stem a model id may give: room for '.parquet', a temp or pending file's prefix
# and suffix, and 'layer_shares_...png', within the 255 bytes most file systems allow a name.
MAX_STEM_BYTES = 200


class ModelIdError(ValueError):
    """Model ids that cannot name a file, or that would share one; refused before any work."""


class UnreadableTableError(ValueError):
    """A table in OUT that cannot be read (corrupt, truncated, not Parquet): the command stops
    with one line naming the file, before it changes anything."""


class OutputWriteError(OSError):
    """OUT could not be written (full, read-only, not a folder): nothing of the run is committed."""


def model_stem(model_id: str) -> str:
    """A file stem for a model id; hub ids carry '/', which becomes '--' (as in the HF cache)."""
    safe = model_id.replace("/", "--")
    shown = model_id if len(model_id) <= 60 else f"{model_id[:40]}...({len(model_id)} characters)"
    if not safe or safe.startswith(".") or any(c in safe for c in "\\\0"):
        raise ModelIdError(f"model id {shown!r} cannot name a file (empty, starts with '.', or "
                           f"holds a backslash or NUL)")
    if has_control_characters(safe):  # C0, DEL and C1: a terminal would act on them
        raise ModelIdError(f"model id {shown!r} cannot name a file (control characters)")
    if len(safe.encode()) > MAX_STEM_BYTES:
        raise ModelIdError(f"model id {shown!r} cannot name a file (longer than "
                           f"{MAX_STEM_BYTES} bytes)")
    return safe


def model_file_name(model_id: str) -> str:
    return f"{model_stem(model_id)}.parquet"


def check_model_ids(model_ids: Iterable[str], known: Iterable[str] = ()) -> None:
    """Refuse (ModelIdError, naming them all) ids that cannot name a file, and ids whose files
    would be one: two of `model_ids`, or one of them and a different id already in OUT (`known`).
    Names are compared case-folded, as a case-insensitive file system would."""
    problems: list[str] = []
    owner: dict[str, str] = {}
    for model_id in known:
        try:
            owner.setdefault(model_stem(model_id).casefold(), model_id)
        except ModelIdError:
            continue
    claimed: dict[str, str] = {}
    for model_id in dict.fromkeys(model_ids):
        try:
            stem = model_stem(model_id)
        except ModelIdError as exc:
            problems.append(str(exc))
            continue
        key = stem.casefold()
        other = claimed.get(key) or owner.get(key)
        if other is not None and other != model_id:
            problems.append(f"model ids {other!r} and {model_id!r} map to the same file "
                            f"{stem}.parquet")
        claimed.setdefault(key, model_id)
    if problems:
        raise ModelIdError("; ".join(problems) + " (rename with --model-id)")


def pending_path(path: Location, token: str) -> Location:
    """Where a new version of `path` waits until the run that wrote it commits it (a name the
    readers' globs never match; `token` names the scan)."""
    return path.with_name(f".{path.name}.{token}.pending")


def parse_pending_name(name: str) -> tuple[str, str] | None:
    """(target file name, token) of a pending file's name; None for any other name."""
    if not (name.startswith(".") and name.endswith(".pending")):
        return None
    target, _, token = name[1:-len(".pending")].rpartition(".")
    return (target, token) if target and token else None


def replace_file(source: Location, target: Location) -> None:
    """Move `source` over `target`: an atomic rename locally; on an object store a server-side
    copy, after which `target` is the new object whole."""
    if is_remote(source):
        source.fs.mv(source.path, target.path)
    else:
        os.replace(source, target)


def check_writable(root: Location) -> None:
    """Fail now (OutputWriteError, one line) when OUT cannot be written: a file, a read-only
    mount, no permission. Creates nothing. An object store is checked when the run writes its
    lock."""
    if is_remote(root):
        return
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        what = "--out" if existing == root else f"its parent {existing}"
        raise OutputWriteError(f"cannot write to --out {root}: {what} is a file, not a folder")
    if existing == root:
        try:
            fd, probe = _temp_file_beside(root / "write-test")
            os.close(fd)
            os.unlink(probe)
            return
        except OSError as exc:
            raise OutputWriteError(f"cannot write to --out {root}: "
                                   f"{exc.strerror or exc}") from None
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputWriteError(f"cannot write to --out {root}: {existing} is not writable "
                               f"(read-only or no permission)")


class OutputLayout:
    """Paths of every output under one run folder; one file per model so a model is replaced whole."""

    def __init__(self, root: str | os.PathLike | Location):
        self.root = as_location(root)

    @property
    def kernels_dir(self) -> Path:
        return self.root / "kernels"

    @property
    def assignments_dir(self) -> Path:
        return self.root / "assignments"

    @property
    def autoencoders_dir(self) -> Path:
        return self.root / "autoencoders"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def models_path(self) -> Path:
        return self.root / "models.parquet"

    @property
    def templates_path(self) -> Path:
        return self.root / "templates.parquet"

    @property
    def seed_templates_path(self) -> Path:
        return self.root / "seed_templates.parquet"

    @property
    def template_set_path(self) -> Path:
        return self.root / "template_set.json"

    @property
    def runs_path(self) -> Path:
        return self.root / "runs.parquet"

    @property
    def accuracy_sources_path(self) -> Path:
        return self.reports_dir / "accuracy_sources.json"

    @property
    def clusterability_path(self) -> Path:
        return self.reports_dir / "clusterability.parquet"

    @property
    def missed_patterns_path(self) -> Path:
        return self.reports_dir / "missed_patterns.parquet"

    @property
    def threshold_sweep_path(self) -> Path:
        return self.reports_dir / "threshold_sweep.parquet"

    def table_path(self, schema: pa.Schema) -> Path:
        """Where a one-file table (not a per-model one) lives: its schema says."""
        return self.root / schemas.table_path(schema)

    def layer_shares_plot_path(self, model_id: str) -> Path:
        return self.reports_dir / f"layer_shares_{model_stem(model_id)}.png"

    def kernels_path(self, model_id: str) -> Path:
        return self.kernels_dir / model_file_name(model_id)

    def assignments_path(self, model_id: str) -> Path:
        return self.assignments_dir / model_file_name(model_id)


def write_table(table: pa.Table, path: str | os.PathLike | Location,
                schema: pa.Schema) -> Location:
    """Cast to `schema` and write atomically: a reader sees the old file or the new, never half."""
    write_tables([table], path, schema)
    return as_location(path)


def write_tables(tables: Iterable[pa.Table], path: str | os.PathLike, schema: pa.Schema,
                 metadata: dict[bytes, str] | None = None) -> int:
    """Stream tables into one Parquet file, atomically like `write_table`; returns the row count.

    Memory stays at one table's worth, whatever the total. `metadata` is added to the file's
    key-value metadata (beside the schema's own).
    """
    if metadata:
        schema = schema.with_metadata({**schema.metadata, **{k: v.encode() for k, v in
                                                             metadata.items()}})
    path = as_location(path)
    if is_remote(path):
        sink = path.fs.open(path.path, "wb")  # the object appears when the upload completes
    else:
        fd, tmp = _temp_file_beside(path)
        os.close(fd)
        sink = tmp
    rows = 0
    try:
        floats = _float_columns(schema)
        with pq.ParquetWriter(sink, schema, compression="zstd", use_byte_stream_split=floats,
                              use_dictionary=[p for p in _leaf_paths(schema)
                                              if p not in floats]) as writer:
            for table in tables:
                writer.write_table(table.select(schema.names).cast(schema))
                rows += table.num_rows
        if is_remote(path):
            sink.close()
        else:
            os.replace(tmp, path)
    except BaseException:
        if is_remote(path):
            sink.discard()  # abort the upload: nothing appears
            sink.closed = True  # and nothing is flushed when the file object is collected
        else:
            Path(tmp).unlink(missing_ok=True)
        raise
    return rows


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet paths of every leaf column (lists as `name.list.element`, struct fields as
    `name.field`)."""
    def leaves(path: str, kind: pa.DataType) -> list[str]:
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            return leaves(f"{path}.list.element", kind.value_type)
        if pa.types.is_struct(kind):
            return [p for i in range(kind.num_fields)
                    for p in leaves(f"{path}.{kind.field(i).name}", kind.field(i).type)]
        return [path]

    return [p for f in schema for p in leaves(f.name, f.type)]


def _float_columns(schema: pa.Schema) -> list[str]:
    """Parquet paths of float columns: byte-stream-split encoding makes kernel weights ~10%
    smaller and ~35% faster to read than zstd alone (benchmarks/assign.py). They are kept out
    of dictionary encoding, which otherwise takes precedence: a kernels file then took ~5x as
    long to write (a dictionary of unique floats built, then dropped) and ~1.8x the bytes."""
    paths = []
    for f in schema:
        if pa.types.is_floating(f.type):
            paths.append(f.name)
        elif pa.types.is_list(f.type) and pa.types.is_floating(f.type.value_type):
            paths.append(f"{f.name}.list.element")
    return paths


def iter_tables(path: str | os.PathLike, batch_size: int = 262_144) -> Iterator[pa.Table]:
    """A Parquet file as tables of at most `batch_size` rows, read one at a time."""
    # pre_buffer would coalesce the reads of every row group up front: memory as large as the
    # file; a read buffer keeps even one column chunk (a 1M-row row group) from being read whole
    reader = pq.ParquetFile(_source(path), pre_buffer=False, buffer_size=1 << 20)
    for batch in reader.iter_batches(batch_size=batch_size):
        yield pa.Table.from_batches([batch])


def read_table(path: str | os.PathLike, columns: list[str] | None = None, filters=None) -> pa.Table:
    return pq.read_table(_source(path), columns=columns, filters=filters)


def read_table_as(path: str | os.PathLike | Location, schema: pa.Schema,
                  missing_ok: bool = False) -> pa.Table:
    """A table written under an older schema version, as the current one: columns added since
    come back null, so outputs of an earlier dwscan stay usable. With `missing_ok`, a file not
    written yet reads as an empty table."""
    if missing_ok and not as_location(path).exists():
        return schema.empty_table()
    try:
        table = pq.read_table(_source(path))
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableTableError(f"cannot read {path}: {one_line(exc, 300)}") from None
    for f in schema:
        if f.name not in table.column_names:
            filler = ([[]] * table.num_rows if pa.types.is_list(f.type) and not f.nullable
                      else [None] * table.num_rows)
            table = table.append_column(f.name, pa.array(filler, f.type))
    return table.select(schema.names).cast(schema)


def read_tables(paths: list[Path], schema: pa.Schema, columns: list[str] | None = None,
                filters=None) -> pa.Table:
    """Concatenate per-model files; an empty list gives an empty table of the schema. Of
    `columns`, those added to `schema` since a file was written come back null (as in
    read_table_as)."""
    tables = [_read_columns(p, schema, columns, filters) for p in paths]
    if not tables:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    return pa.concat_tables(tables)


def _read_columns(path: Path, schema: pa.Schema, columns: list[str] | None, filters) -> pa.Table:
    if columns is None:
        return read_table(path, filters=filters)
    present = set(pq.read_schema(_source(path)).names)
    table = read_table(path, columns=[c for c in columns if c in present], filters=filters)
    for name in columns:
        if name not in present:
            table = table.append_column(schema.field(name), pa.nulls(table.num_rows,
                                                                     schema.field(name).type))
    return table.select(columns)


def file_metadata(path: str | os.PathLike | Location) -> dict[bytes, bytes]:
    """A Parquet file's key-value metadata, from its footer alone."""
    return pq.read_schema(_source(path)).metadata or {}


def schema_version_of(path: str | os.PathLike) -> str | None:
    value = file_metadata(path).get(schemas.VERSION_KEY)
    return value.decode() if value else None
