"""SQL over a run's outputs: DuckDB views named after every table (`kernels`, `models`, ...).

Per-model tables (kernels, assignments) are one view over all their files; a table the output
folder does not hold yet gets no view, and a query naming it fails with DuckDB's own message.
"""

from __future__ import annotations

import os

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

import schemas
from pipeline.storage import as_location, is_remote


def connect(out: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose views read the Parquet files under `out` (a folder, or a URI:
    then through Arrow datasets on the fsspec filesystem, so DuckDB needs no extension)."""
    out = as_location(out)
    if not (out / "models.parquet").exists():
        raise FileNotFoundError(f"{out} is not a dwscan output folder (run `dwscan run` first)")
    connection = duckdb.connect()
    for name, schema in schemas.ALL.items():
        pattern = schemas.table_path(schema).replace("<model>", "*")
        files = sorted(out.glob(pattern))
        if not files:
            continue
        if is_remote(out):
            dataset = pads.dataset([f.path for f in files], filesystem=out.fs, format="parquet")
            connection.register(f"_{name}_files", dataset)
            connection.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM \"_{name}_files\"")
            continue
        glob = str(out / pattern).replace("'", "''")
        connection.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{glob}', "
                           f"union_by_name = true)")
    return connection


def views(connection: duckdb.DuckDBPyConnection) -> list[str]:
    return sorted(r[0] for r in connection.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        if not r[0].startswith("_"))


class QueryError(ValueError):
    """The SQL failed; the message names the views there are."""


def query_table(out: str | os.PathLike, sql: str) -> pa.Table:
    """The result of `sql` as an Arrow table."""
    connection = connect(out)
    try:
        return connection.sql(sql).to_arrow_table()
    except duckdb.Error as error:
        raise QueryError(f"{error}\n(views in {out}: {', '.join(views(connection)) or 'none'})") \
            from error


def query_to_parquet(out: str | os.PathLike, sql: str, path: str | os.PathLike) -> int:
    """Write the result of `sql` to a Parquet file, streamed by DuckDB; returns the row count."""
    connection = connect(out)
    target = str(path).replace("'", "''")
    try:
        connection.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)")
        return connection.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0]
    except duckdb.Error as error:
        raise QueryError(f"{error}\n(views in {out}: {', '.join(views(connection)) or 'none'})") \
            from error
