"""SQL over a run's outputs: DuckDB views named after every table (`kernels`, `models`, ...).

Per-model tables (kernels, assignments) are one view over all their files; a table the output
folder does not hold yet gets no view, and a query naming it fails with DuckDB's own message.
Every failure (empty SQL, a table that cannot be read, a query DuckDB rejects) is a QueryError
with one message, never a traceback.

A query reads its own folder and cannot change it: the files of each view are listed by name
(the folder's path is never a glob pattern, so `--out 'z?'` cannot read `zA`), the views are
Arrow datasets over exactly those files, and once they exist the connection loses every access
to files (DuckDB's `enable_external_access`, locked): COPY TO, ATTACH, INSTALL/LOAD and reading
any other file fail. Only a SELECT (or EXPLAIN) is run at all.
"""

from __future__ import annotations

import os

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dwscan import schemas
from dwscan.io.storage import Location, as_location, is_remote, write_tables
from dwscan.text import one_line

# What a query may be: it reads the views, never anything else.
_READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class QueryError(ValueError):
    """The SQL failed, or the outputs could not be read; the message says which and why."""


def connect(out: str | os.PathLike,
            unreadable: dict[str, str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose views read the Parquet files under `out` (a folder, or a URI),
    with no access to any other file (see the module docstring). A table whose files cannot be
    read gets no view; `unreadable` collects why (view name -> reason naming the file)."""
    unreadable = {} if unreadable is None else unreadable
    out = as_location(out)
    if not (out / "models.parquet").exists():
        raise FileNotFoundError(f"{out} is not a dwscan output folder (run `dwscan run` first)")
    connection = duckdb.connect()
    for name, schema in schemas.ALL.items():
        files = table_files(out, schemas.table_path(schema))
        if not files:
            continue
        try:
            connection.register(f"_{name}_files", _dataset(out, files))
            connection.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM \"_{name}_files\"")
        except (duckdb.Error, pa.ArrowException, OSError) as error:
            unreadable[name] = one_line(error, 300)
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


def table_files(out: Location, path: str) -> list[Location]:
    """The files of a table at `path` under OUT (`kernels/<model>.parquet`: every Parquet file
    of kernels/ but the hidden temp and pending ones), listed, never globbed."""
    folder, _, name = path.rpartition("/")
    where = out / folder if folder else out
    if "<model>" not in name:
        return [where / name] if (where / name).exists() else []
    if not where.is_dir():
        return []
    return sorted(f for f in where.iterdir()
                  if f.name.endswith(".parquet") and not f.name.startswith("."))


def _dataset(out: Location, files: list[Location]) -> pads.Dataset:
    """An Arrow dataset over exactly `files`, its columns the union of theirs (a file written
    under an older schema reads null in the columns added since); a file that cannot be read
    fails it, named."""
    filesystem = out.fs if is_remote(out) else None
    paths = [f.path if is_remote(out) else os.fspath(f) for f in files]
    schemas_of = []
    for path in paths:
        try:
            schemas_of.append(pq.read_schema(path, filesystem=filesystem))
        except (pa.ArrowException, OSError) as error:
            raise OSError(f"cannot read {path}: {one_line(error, 200)}") from None
    return pads.dataset(paths, filesystem=filesystem, format="parquet",
                        schema=pa.unify_schemas(schemas_of))


def _checked_sql(sql: str) -> str:
    """`sql` when it is one statement that only reads: anything that writes, attaches, loads or
    sets is refused before it runs (the locked connection would refuse file access anyway)."""
    if not sql.strip().rstrip(";").strip():
        raise QueryError('empty query: give one SQL statement, e.g. "SELECT * FROM models"')
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(one_line(error, 300)) from None
    if len(statements) != 1:
        raise QueryError(f"give one SQL statement, not {len(statements)}")
    kind = statements[0].type
    if kind not in _READ_ONLY_STATEMENTS:
        raise QueryError(f"refused: dwscan query runs one SELECT and never changes the outputs; "
                         f"this statement is {kind.name}")
    return sql


def _failed(error: BaseException, out, connection, unreadable: dict[str, str]) -> QueryError:
    """One line: DuckDB's message, the views there are, and the tables that could not be read."""
    text = f"{one_line(error, 300)} (views in {out}: {', '.join(views(connection)) or 'none'})"
    for name, reason in unreadable.items():
        text += f"; table {name} cannot be read, so it has no view: {reason}"
    return QueryError(text)


def views(connection: duckdb.DuckDBPyConnection) -> list[str]:
    return sorted(r[0] for r in connection.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        if not r[0].startswith("_"))


def query_table(out: str | os.PathLike, sql: str) -> pa.Table:
    """The result of `sql` as an Arrow table."""
    sql = _checked_sql(sql)
    unreadable: dict[str, str] = {}
    connection = connect(out, unreadable)
    try:
        relation = connection.sql(sql)
        if relation is None:
            raise QueryError("the statement returned no rows to show (use SELECT)")
        return relation.to_arrow_table()
    except (duckdb.Error, pa.ArrowException) as error:
        raise _failed(error, out, connection, unreadable) from None


def query_to_parquet(out: str | os.PathLike, sql: str, path: str | os.PathLike) -> int:
    """Write the result of `sql` to a Parquet file, streamed batch by batch; returns the row
    count. Written by dwscan, not DuckDB, whose connection has no file access."""
    sql = _checked_sql(sql)
    unreadable: dict[str, str] = {}
    connection = connect(out, unreadable)
    try:
        reader = connection.sql(sql).to_arrow_reader()
        return write_tables((pa.Table.from_batches([b], reader.schema) for b in reader), path,
                            reader.schema)
    except (duckdb.Error, pa.ArrowException) as error:
        raise _failed(error, out, connection, unreadable) from None
