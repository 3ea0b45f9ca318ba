import os
import stat
from pathlib import Path

import pyarrow as pa
import pytest

from dwscan import schemas
from dwscan.io.catalogue import model_row
from dwscan.io.storage import OutputLayout, model_file_name, read_table, schema_version_of, write_table
from dwscan.io.zoo import ModelSpec


def test_round_trip_with_schema_version_and_no_temp_files(tmp_path):
    row = {**model_row(ModelSpec(model_id="a", source="x.pth")), "n_layers": 1, "n_filters": 2}
    table = pa.Table.from_pylist([row])
    path = write_table(table, tmp_path / "sub" / "models.parquet", schemas.MODELS)
    back = read_table(path)
    assert back.schema.equals(schemas.MODELS, check_metadata=False)
    assert back.to_pylist()[0]["n_filters"] == 2
    assert schema_version_of(path) == schemas.SCHEMA_VERSION
    assert [p.name for p in path.parent.iterdir()] == ["models.parquet"]


def test_model_ids_become_safe_file_names(tmp_path):
    assert model_file_name("timm/convnext_atto.d2_in1k") == "timm--convnext_atto.d2_in1k.parquet"
    for bad in ("", "../x", ".hidden"):
        with pytest.raises(ValueError):
            model_file_name(bad)
    layout = OutputLayout(tmp_path)
    assert layout.kernels_path("timm/a").parent == tmp_path / "kernels"


def test_every_schema_is_versioned_and_documented():
    assert set(schemas.ALL) == {"kernels", "models", "templates", "seed_templates", "assignments",
                                "clusterability", "pattern_shares",
                                "layers", "label_shares", "model_metadata", "accuracy",
                                "correlation", "threshold_sweep", "missed_patterns", "runs",
                                "substitution"}
    for name, schema in schemas.ALL.items():
        assert schema.metadata[schemas.VERSION_KEY] == schemas.SCHEMA_VERSION.encode()
        assert schemas.description(schema), name
        undocumented = [f.name for f in schema if not schemas.description(f)]
        assert not undocumented, (name, undocumented)


def test_schemas_readme_is_generated_from_the_schemas():
    """schemas/README.md is `python -m dwscan.schemas`' output: regenerate it after a schema change."""
    readme = Path(schemas.__file__).with_name("README.md").read_text()
    assert readme == schemas.markdown()


def test_a_table_from_an_older_schema_reads_as_the_current_one(tmp_path):
    import pyarrow.parquet as pq

    from dwscan.io.storage import read_table_as

    old = pa.table({"model_id": ["a"], "source": ["x.pth"], "status": ["ok"], "n_layers": [1],
                    "n_filters": [9]})
    pq.write_table(old, tmp_path / "models.parquet")
    table = read_table_as(tmp_path / "models.parquet", schemas.MODELS)
    assert table.schema.equals(schemas.MODELS, check_metadata=False)
    row = table.to_pylist()[0]
    assert (row["model_id"], row["n_filters"], row["revision"], row["bytes_fetched"]) == (
        "a", 9, None, None)


def test_ids_that_would_share_a_file_or_cannot_name_one_are_refused_together():
    from dwscan.io.storage import ModelIdError, check_model_ids

    check_model_ids(["org/a", "org/b"], known=["org/a", "other"])  # a re-scan of a known id
    with pytest.raises(ModelIdError) as info:
        check_model_ids(["org/a", "org--a", "..", "x" * 201, "new/B"], known=["new--b"])
    message = str(info.value)
    assert "'org/a' and 'org--a' map to the same file org--a.parquet" in message
    assert "model id '..' cannot name a file" in message
    assert "(201 characters)' cannot name a file (longer than 200 bytes)" in message
    assert "'new--b' and 'new/B' map to the same file" in message  # case-insensitive disks
    assert "\n" not in message


def test_pending_files_name_their_target_and_scan(tmp_path):
    from dwscan.io.storage import parse_pending_name, pending_path

    pending = pending_path(tmp_path / "kernels" / "org--m.v1.parquet", "20260101T000000Z")
    assert pending.parent == tmp_path / "kernels" and pending.name.startswith(".")
    assert parse_pending_name(pending.name) == ("org--m.v1.parquet", "20260101T000000Z")
    assert parse_pending_name("org--m.parquet") is None


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755),
                                                              (0o077, 0o600, 0o700)])
def test_outputs_get_the_mode_the_umask_gives_a_new_file(tmp_path, umask, file_mode, dir_mode):
    """Not mkstemp's 0600: a colleague (or the group) the umask lets read must read the outputs."""
    from dwscan.io.storage import write_bytes_atomic

    previous = os.umask(umask)
    try:
        layout = OutputLayout(tmp_path / "out")
        row = {**model_row(ModelSpec(model_id="a", source="x.pth")), "n_layers": 1, "n_filters": 2}
        write_table(pa.Table.from_pylist([row]), layout.models_path, schemas.MODELS)
        write_table(pa.Table.from_pylist([row]), layout.reports_dir / "deep" / "m.parquet",
                    schemas.MODELS)
        write_bytes_atomic(layout.template_set_path, b"{}")
    finally:
        os.umask(previous)
    for path in (layout.models_path, layout.reports_dir / "deep" / "m.parquet",
                 layout.template_set_path):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    for path in (layout.root, layout.reports_dir, layout.reports_dir / "deep"):
        assert stat.S_IMODE(path.stat().st_mode) == dir_mode, path
