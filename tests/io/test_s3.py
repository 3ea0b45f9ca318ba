"""The whole pipeline with `--out s3://...` against a real S3-compatible server on 127.0.0.1
(moto in server mode), read back with DuckDB."""

from __future__ import annotations

import os
import subprocess

import pyarrow as pa
import pytest
from safetensors.torch import save_file

from dwscan.io.lock import OutputLocked, output_lock
from dwscan.io.storage import OutputLayout, read_table, write_table
from tests.helpers import shared_ray_env
from tests.test_operations import FAST, small_state

BUCKET = "dwscan-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback; the environment every dwscan process inherits."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3
    import s3fs

    # a server of an earlier setup (slow tests run first: this module's two tests may not be
    # neighbours) is gone; s3fs would hand back its cached filesystem, bound to the old port
    s3fs.S3FileSystem.clear_instance_cache()

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def _keys(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}


def test_tables_locks_and_failed_writes_on_s3(s3):
    from dwscan import schemas

    layout = OutputLayout(f"s3://{BUCKET}/unit")
    from dwscan.io.catalogue import model_row
    from dwscan.io.zoo import ModelSpec

    row = {**model_row(ModelSpec(model_id="a", source="x.pth")), "n_layers": 1, "n_filters": 2}
    table = pa.Table.from_pylist([row], schema=schemas.MODELS)
    write_table(table, layout.models_path, schemas.MODELS)
    assert read_table(layout.models_path).column("n_filters").to_pylist() == [2]

    def broken():
        yield table.select(["model_id"])  # not the schema: the write fails midway
        raise AssertionError("unreachable")

    from dwscan.io.storage import write_tables

    with pytest.raises(KeyError):
        write_tables(broken(), layout.root / "half.parquet", schemas.MODELS)
    assert _keys(s3, "unit/") == {"models.parquet"}  # the failed upload left nothing

    with output_lock(layout.root):
        with pytest.raises(OutputLocked, match="in use"):  # a conditional PUT refuses
            with output_lock(layout.root):
                pass
    assert ".dwscan.lock" not in _keys(s3, "unit/")


@pytest.mark.slow
def test_run_and_query_with_the_output_on_s3(s3, tmp_path):
    checkpoints = []
    for i in range(2):
        path = tmp_path / f"net{i}.safetensors"
        save_file(small_state(i), str(path))
        checkpoints += ["--checkpoint", str(path)]
    out = f"s3://{BUCKET}/zoo"
    env = {**os.environ, "RAY_ADDRESS": ""}
    run = subprocess.run(["dwscan", "run", "--out", out, *checkpoints, *FAST], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    keys = _keys(s3, "zoo/")
    assert {"models.parquet", "templates.parquet", "template_set.json", "runs.parquet",
            "kernels/net0.parquet", "assignments/net1.parquet", "reports/clusterability.parquet",
            "reports/correlation.parquet", "reports/index.html",
            "reports/clusterability_vs_top1.png"} <= keys
    assert not [k for k in keys if k.endswith(".tmp") or ".dwscan.lock" in k]
    assert not (tmp_path / "s3:").exists()  # nothing went to a local folder by mistake

    # the same run into a local folder gives the same tables
    local = tmp_path / "local"
    same = subprocess.run(["dwscan", "run", "--out", str(local), *checkpoints, *FAST],
                          cwd=tmp_path, env=shared_ray_env(), capture_output=True, text=True,
                          timeout=600)
    assert same.returncode == 0, same.stderr[-3000:]
    remote = OutputLayout(out)
    assert read_table(remote.clusterability_path).equals(
        read_table(OutputLayout(local).clusterability_path))

    # DuckDB reads the objects straight from S3 (fsspec filesystem), and `dwscan query` too
    import duckdb
    import s3fs

    connection = duckdb.connect()
    connection.register_filesystem(s3fs.S3FileSystem())
    rows = connection.execute(
        f"SELECT model_id, count(*) FROM read_parquet('s3://{BUCKET}/zoo/assignments/*.parquet') "
        "GROUP BY model_id ORDER BY model_id").fetchall()
    assert rows == [("net0", 112), ("net1", 112)]
    query = subprocess.run(["dwscan", "query", "--out", out, "--format", "csv",
                            "SELECT model_id, n_filters FROM clusterability WHERE kernel_size "
                            "IS NULL ORDER BY model_id"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines() == ['"model_id","n_filters"', '"net0",112', '"net1",112']
