"""Issue 22 (the non-hub parts), as plain functions without Ray: declared sizes capped before they
are parsed, honest checkpoints read, side files that are not files, plain text everywhere, a
failed re-scan that keeps the last good scan, and queries that only read their own folder."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file

from dwscan import schemas
from dwscan.cli import main
from dwscan.executor import ray_executor
from dwscan.io.catalogue import model_row
from dwscan.io.checkpoints import CheckpointError, ReadLimits, SafetensorsReader
from dwscan.io.storage import ModelIdError, OutputLayout, check_model_ids, read_table, write_table
from dwscan.io.zoo import ModelSpec, local_checkpoint_spec, read_config
from dwscan.run import scan_models
from dwscan.stages.extract import extract_depthwise_kernels, extract_model_to_parquet
from dwscan.text import one_line
from tests.helpers import many_tiny_tensors, tiny_state_dict

TINY_FILTERS = 8 + 16  # depthwise kernels of tiny_state_dict (its 1x7 layer is skipped)


def test_one_line_removes_every_control_sequence():
    cases = {
        "a\x1b[31mred\x1b[0m b": "ared b",  # CSI (colour)
        "a\x1b[2J\x1b[H b": "a b",  # CSI (clear screen, cursor home)
        "x\x1b]0;title\x07y": "xy",  # OSC ended by BEL
        "x\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\z": "xlinkz",  # OSC ended by ST
        "a\x1bcb": "ab",  # RIS
        "a\x1b(Bb": "ab",  # charset designation
        "a\x1bPq#0;2\x1b\\b": "ab",  # DCS
        "a\x9b2Jb": "ab",  # 8-bit CSI
        "a\x9d0;t\x9cb": "ab",  # 8-bit OSC and ST
        "a\x00\x01\x7f\x85b": "ab",  # NUL, C0, DEL, C1
        "line1\nline2\r\tend": "line1 line2 end",
        "trailing\x1b": "trailing",
        "unended\x1b]0;title": "unended",
    }
    for raw, plain in cases.items():
        assert one_line(raw) == plain, raw
    assert one_line("x" * 600) == "x" * 500 and one_line("x" * 600, None) == "x" * 600


@pytest.mark.parametrize("model_id", ["a\x1b[2Jb", "tab\there", "c1\x9bx", "nel\x85x", "del\x7f"])
def test_ids_with_any_control_character_are_refused(model_id):
    with pytest.raises(ModelIdError, match="control characters") as info:
        check_model_ids(["fine", model_id])
    assert one_line(str(info.value)) == str(info.value)  # the message itself is plain


def test_safetensors_headers_and_tensor_counts_are_capped_before_parsing(tmp_path):
    path = tmp_path / "many.safetensors"
    many_tiny_tensors(path, 1000)
    header_bytes = struct.unpack("<Q", path.read_bytes()[:8])[0]
    with pytest.raises(CheckpointError, match=r"over the cap of 1000 per model "
                                              r"\(ReadLimits.max_header_bytes\)"):
        extract_depthwise_kernels(path, "m", ReadLimits(max_header_bytes=1000))
    with pytest.raises(CheckpointError, match=r"1000 tensors, over the cap of 999 per model "
                                              r"\(ReadLimits.max_tensors\)"):
        extract_depthwise_kernels(path, "m", ReadLimits(max_tensors=999))
    assert extract_depthwise_kernels(path, "m").n_filters == 1000
    data = path.read_bytes()

    def fetch(file, start, stop):
        return data[start:stop]

    for limits, cap in [(ReadLimits(max_header_bytes=header_bytes - 1), "max_header_bytes"),
                        (ReadLimits(max_tensors=999), "max_tensors")]:
        with pytest.raises(CheckpointError, match=f"ReadLimits.{cap}"):
            SafetensorsReader(fetch, ["m.safetensors"], limits)
    assert len(SafetensorsReader(fetch, ["m.safetensors"]).tensor_infos()) == 1000


def _torch_zip_with_pickle(path: Path, pickle_bytes: bytes) -> None:
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, pickle_bytes if info.filename.endswith("data.pkl")
                         else src.read(info))


def dict_bomb(n: int) -> bytes:
    """A pickle that builds a list of n empty dicts: one byte each, ~80 bytes each unpickled."""
    return b"\x80\x02](" + b"}" * n + b"e."


def test_torch_pickles_are_capped_by_opcode_count_before_torch_load(tmp_path):
    zipped = tmp_path / "bomb.pth"
    _torch_zip_with_pickle(zipped, dict_bomb(10_000))
    legacy = tmp_path / "legacy.pth"
    torch.save({f"blocks.{i}.conv_dw.weight": torch.zeros(2, 1, 3, 3) for i in range(100)},
               legacy, _use_new_zipfile_serialization=False)
    for path in (zipped, legacy):
        with pytest.raises(CheckpointError, match=r"more opcodes than the cap of 1000 per model "
                                                  r"\(ReadLimits.max_pickle_ops\)"):
            extract_depthwise_kernels(path, "m", ReadLimits(max_pickle_ops=1000))
    assert extract_depthwise_kernels(legacy, "m").n_filters == 200  # under the default cap


def test_a_shard_index_is_capped_before_it_is_read(tmp_path):
    save_file(tiny_state_dict(), str(tmp_path / "shard.safetensors"))
    index = {"weight_map": {f"t{i}": "shard.safetensors" for i in range(2000)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"over the cap of 1000 bytes "
                                              r"\(ReadLimits.max_index_bytes\)"):
        extract_depthwise_kernels(tmp_path, "m", ReadLimits(max_index_bytes=1000))
    assert extract_depthwise_kernels(tmp_path, "m").n_filters == TINY_FILTERS


def test_parameters_that_require_grad_are_read_as_plain_tensors(tmp_path):
    """torch.save(model.state_dict(keep_vars=True)): nn.Parameters that require grad."""
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.BatchNorm2d(8))
    path = tmp_path / "keep_vars.pth"
    torch.save(model.state_dict(keep_vars=True), path)
    extraction = extract_depthwise_kernels(path, "m")
    expected = model[0].weight.detach().numpy().reshape(8, 9)
    np.testing.assert_array_equal(np.array(extraction.kernels.column("weights").to_pylist()),
                                  expected)


def _fifo_config(folder: Path) -> None:
    os.mkfifo(folder / "config.json")


def _dev_zero_config(folder: Path) -> None:
    (folder / "config.json").symlink_to("/dev/zero")


def _device_config(folder: Path) -> None:
    (folder / "config.json").symlink_to("/dev/null")


@pytest.mark.parametrize("make, kind", [(_fifo_config, "a FIFO"),
                                        (_dev_zero_config, "a character device"),
                                        (_device_config, "a character device")])
def test_a_config_that_is_not_a_regular_file_is_ignored_without_blocking(tmp_path, make, kind):
    """Beside good weights, the model is scanned with a warning; a blocking open or an endless
    read would hang the worker (the thread's join time is the proof that neither happened)."""
    save_file(tiny_state_dict(), str(tmp_path / "model.safetensors"))
    make(tmp_path)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(extract_model_to_parquet(
        local_checkpoint_spec(tmp_path, "m"), tmp_path / "out")), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "reading config.json blocked"
    assert (result["status"], result["n_filters"]) == ("ok", TINY_FILTERS), result
    assert result["warnings"] == f"config.json is {kind}, not a regular file: ignored"
    assert read_config(tmp_path / "config.json")[1] == [result["warnings"]]


def test_strings_from_files_are_stored_plain(tmp_path):
    """Layer names and config fields carrying terminal sequences are stored without them."""
    state = {"blocks.0\x1b[2J\x1b]0;pwned\x07.conv_dw.weight": np.ones((4, 1, 3, 3), np.float32),
             "odd\x9b31m.weight": np.ones((4, 1, 3, 5), np.float32)}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "conv\x1bcnext",
                                                      "pretrained_cfg": {"tag": 5}}))
    row = extract_model_to_parquet(local_checkpoint_spec(tmp_path, "m"), tmp_path / "out")
    assert row["architecture"] == "convnext" and row["accuracy_key"] == "convnext"
    assert row["skipped_layers"] == [{"layer": "odd.weight", "shape": "4x1x3x5",
                                      "reason": "non-square kernel 3x5"}]
    layers = read_table(OutputLayout(tmp_path / "out").kernels_path("m")).column("layer")
    assert set(layers.to_pylist()) == {"blocks.0.conv_dw.weight"}


_FAILURE_COLUMNS = {"last_error", "last_attempt_at", "failed_revision", "failed_attempts"}


def _serial_tasks(fn, calls, **_):
    """ray_executor.run_tasks without Ray: each call in turn, an exception in its result's place."""
    results = []
    for args in calls:
        try:
            results.append(fn(*args))
        except Exception as exc:  # noqa: BLE001 - as run_tasks does
            results.append(exc)
    return results


def test_a_failed_rescan_keeps_the_last_good_scan(tmp_path, monkeypatch):
    """Scan a good model, then re-scan it with its file truncated: its kernels, assignment and
    row stay; the failure is recorded beside them; a later good scan replaces all of it."""
    monkeypatch.setattr(ray_executor, "run_tasks", _serial_tasks)
    weights = tmp_path / "m.safetensors"
    save_file(tiny_state_dict(), str(weights))
    layout = OutputLayout(tmp_path / "out")
    specs = [local_checkpoint_spec(weights, "m")]
    scan_models(specs, layout)
    kernels = layout.kernels_path("m").read_bytes()
    layout.assignments_path("m").parent.mkdir()
    layout.assignments_path("m").write_bytes(b"assignment")
    good = read_table(layout.models_path).to_pylist()[0]

    weights.write_bytes(weights.read_bytes()[:100])
    for attempt in (1, 2):
        run_rows, merged = scan_models(specs, layout)
        row = merged.to_pylist()[0]
        assert row["last_error"].startswith("corrupt safetensors file m.safetensors"), row
        assert row["failed_attempts"] == attempt and row["last_attempt_at"] is not None
        assert {k: v for k, v in row.items() if k not in _FAILURE_COLUMNS} == \
            {k: v for k, v in good.items() if k not in _FAILURE_COLUMNS}
        assert run_rows.to_pylist() == [row]
    assert layout.kernels_path("m").read_bytes() == kernels
    assert layout.assignments_path("m").read_bytes() == b"assignment"
    assert read_table(layout.models_path).to_pylist() == [row]

    save_file({"blocks.0.conv_dw.weight": np.ones((3, 1, 3, 3), np.float32)}, str(weights))
    _, merged = scan_models(specs, layout)
    row = merged.to_pylist()[0]
    assert (row["status"], row["n_filters"], row["last_error"]) == ("ok", 3, None)
    assert not layout.assignments_path("m").exists()
    assert read_table(layout.kernels_path("m")).num_rows == 3


def test_the_summary_says_a_failed_rescan_kept_the_last_good_scan(tmp_path, monkeypatch, capsys):
    """`dwscan scan`'s summary: the model's data is from its last good scan; exit status 1."""
    monkeypatch.setattr(ray_executor, "run_tasks", _serial_tasks)
    monkeypatch.setattr(ray_executor, "init_ray", lambda *a, **k: None)
    weights = tmp_path / "m.safetensors"
    save_file(tiny_state_dict(), str(weights))
    out = tmp_path / "out"
    assert main(["scan", "--out", str(out), "--checkpoint", str(weights)]) == 0
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert main(["scan", "--out", str(out), "--checkpoint", str(weights)]) == 1
    printed = capsys.readouterr()
    assert "failed, last good scan kept" in printed.out
    assert "FAILED m: corrupt safetensors file" in printed.err
    assert "(its data is from its last good scan, of " in printed.err


def _hand_made_output(out: Path, model_id: str) -> None:
    """An output folder as a scan leaves it (models.parquet and one kernels file), no Ray."""
    layout = OutputLayout(out)
    write_table(pa.Table.from_pylist([model_row(ModelSpec(model_id, "/x"))],
                                     schema=schemas.MODELS), layout.models_path, schemas.MODELS)
    kernels = pa.table({"model_id": [model_id], "layer": ["l"], "layer_index": [0],
                        "depth": [0.0], "channel": [0], "kernel_size": [3],
                        "weights": [[0.0] * 9]})
    write_table(kernels, layout.kernels_path(model_id), schemas.KERNELS)


def query(capsys, out: Path, sql: str, *extra: str) -> tuple[int, str, str]:
    code = main(["query", "--out", str(out), "--format", "csv", *extra, sql])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_a_query_reads_only_its_own_folder(tmp_path, capsys, monkeypatch):
    """--out paths with glob characters are never globbed: 'z?' does not read its sibling 'zA',
    'g[1]' has its own views."""
    monkeypatch.chdir(tmp_path)
    for name in ("zA", "z?", "g[1]", "g1"):
        _hand_made_output(tmp_path / name, f"model-of-{name}")
    for name in ("z?", "g[1]"):
        for table in ("kernels", "models"):
            code, out, err = query(capsys, Path(name), f"SELECT model_id FROM {table}")
            assert (code, out.splitlines()[1:]) == (0, [f'"model-of-{name}"']), err


def test_a_query_cannot_change_or_leave_its_folder(tmp_path, capsys):
    out = tmp_path / "out"
    _hand_made_output(out, "m")
    _hand_made_output(tmp_path / "other", "secret")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    models = out / "models.parquet"
    hostile = [f"COPY (SELECT 1) TO '{models}'", f"COPY models TO '{tmp_path}/x.csv'",
               f"ATTACH '{tmp_path}/x.db'", "INSTALL httpfs", "LOAD httpfs",
               "CREATE TABLE t AS SELECT 1", "SET enable_external_access = true",
               f"SELECT * FROM read_parquet('{tmp_path}/other/models.parquet')",
               f"SELECT * FROM '{tmp_path}/other/kernels/secret.parquet'",
               "SELECT 1; SELECT 2"]
    for sql in hostile:
        code, printed, err = query(capsys, out, sql)
        assert code == 2 and printed == "", sql
        assert err.count("\n") == 1 and "Traceback" not in err and err.startswith(
            "dwscan query: "), (sql, err)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert pq.read_table(models).column("model_id").to_pylist() == ["m"]
    result = tmp_path / "result.parquet"  # --output is written by dwscan, not by DuckDB
    code, printed, err = query(capsys, out, "SELECT model_id FROM kernels", "--format",
                               "parquet", "--output", str(result))
    assert code == 0 and pq.read_table(result).column("model_id").to_pylist() == ["m"], err


def test_a_corrupt_models_table_is_one_line_naming_it(tmp_path, capsys):
    """For `dwscan query` and `dwscan scan` (refused before Ray starts or anything is read)."""
    out = tmp_path / "out"
    _hand_made_output(out, "m")
    (out / "models.parquet").write_bytes(b"PAR1 not parquet at all PAR1")
    code, _, err = query(capsys, out, "SELECT * FROM models")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"cannot read {out / 'models.parquet'}" in err
    good = tmp_path / "good.safetensors"
    save_file(tiny_state_dict(), str(good))
    assert main(["scan", "--out", str(out), "--checkpoint", str(good)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"dwscan scan: error: cannot read {out / 'models.parquet'}: ")

