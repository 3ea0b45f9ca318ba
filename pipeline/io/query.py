"""SQL over a run's outputs: DuckDB views named after every table (`kernels`, `models`, ...).

Per-model tables (kernels, assignments) are one view over all their files; a table the output
folder does not hold yet gets no view, and a query naming it fails with DuckDB's own message.
Every failure (empty SQL, a table that cannot be read, a query DuckDB rejects) is a QueryError
with one message, never a traceback.
"""

from __future__ import annotations

import os

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from dwscan import schemas
from dwscan.io.storage import as_location, is_remote
from dwscan.text import one_line


class QueryError(ValueError):
    """The SQL failed, or the outputs could not be read; the message says which and why."""


def connect(out: str | os.PathLike,
            unreadable: dict[str, str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose views read the Parquet files under `out` (a folder, or a URI:
    then through Arrow datasets on the fsspec filesystem, so DuckDB needs no extension). A table
    whose files cannot be read gets no view; `unreadable` collects why (view name -> reason)."""
    unreadable = {} if unreadable is None else unreadable
    out = as_location(out)
    if not (out / "models.parquet").exists():
        raise FileNotFoundError(f"{out} is not a dwscan output folder (run `dwscan run` first)")
    connection = duckdb.connect()
    for name, schema in schemas.ALL.items():
        pattern = schemas.table_path(schema).replace("<model>", "*")
        files = sorted(out.glob(pattern))
        if not files:
            continue
        try:
            if is_remote(out):
                dataset = pads.dataset([f.path for f in files], filesystem=out.fs,
                                       format="parquet")
                connection.register(f"_{name}_files", dataset)
                connection.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM \"_{name}_files\"")
                continue
            glob = str(out / pattern).replace("'", "''")
            connection.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{glob}', "
                               f"union_by_name = true)")
        except (duckdb.Error, pa.ArrowException, OSError) as error:
            unreadable[name] = one_line(error, 300)
    return connection



def _checked_sql(sql: str) -> str:
    if not sql.strip().rstrip(";").strip():
        raise QueryError('empty query: give one SQL statement, e.g. "SELECT * FROM models"')
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
    """Write the result of `sql` to a Parquet file, streamed by DuckDB; returns the row count."""
    sql = _checked_sql(sql)
    unreadable: dict[str, str] = {}
    connection = connect(out, unreadable)
    target = str(path).replace("'", "''")
    try:
        connection.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)")
        return connection.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0]
    except (duckdb.Error, pa.ArrowException) as error:
        raise _failed(error, out, connection, unreadable) from None
