import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from dwscan.io.checkpoints import (
    CheckpointError,
    SafetensorsCheckpoint,
    natural_key,
    open_checkpoint,
)
from tests.helpers import safetensors_bytes, write_torch


def _read_all(path) -> dict[str, np.ndarray]:
    with open_checkpoint(path) as ckpt:
        return {info.name: ckpt.read(info.name) for info in ckpt.tensor_infos()}


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pt-state_dict", "bin-model", "hf-folder",
                                 "sharded"])
def test_every_format_reads_the_same_tensors(tmp_path, tiny_state, fmt):
    if fmt == "safetensors":
        path = tmp_path / "m.safetensors"
        save_file(tiny_state, str(path))
    elif fmt == "pth":
        path = tmp_path / "m.pth"
        write_torch(tiny_state, path)
    elif fmt == "pt-state_dict":
        path = tmp_path / "m.pt"
        write_torch(tiny_state, path, wrapper="state_dict")
    elif fmt == "bin-model":
        path = tmp_path / "m.bin"
        write_torch(tiny_state, path, wrapper="model")
    elif fmt == "hf-folder":
        path = tmp_path / "repo"
        path.mkdir()
        (path / "config.json").write_text('{"architecture": "x"}')
        save_file(tiny_state, str(path / "model.safetensors"))
    else:
        path = tmp_path / "sharded"
        path.mkdir()
        names = list(tiny_state)
        shards = {"model-00001-of-00002.safetensors": names[:3],
                  "model-00002-of-00002.safetensors": names[3:]}
        for shard, keys in shards.items():
            save_file({k: tiny_state[k] for k in keys}, str(path / shard))
        weight_map = {k: shard for shard, keys in shards.items() for k in keys}
        (path / "model.safetensors.index.json").write_text(
            __import__("json").dumps({"weight_map": weight_map}))
    got = _read_all(path)
    assert set(got) == set(tiny_state)
    for name, value in tiny_state.items():
        np.testing.assert_array_equal(got[name], value)


def test_half_precision_is_read_as_float32(tmp_path):
    value = torch.randn(4, 1, 3, 3).to(torch.bfloat16)
    path = tmp_path / "bf16.pth"
    torch.save({"w": value}, path)
    got = _read_all(path)["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, value.float().numpy())


def test_safetensors_of_every_float_dtype_read_as_torch_widens_them(tmp_path):
    """Local safetensors are read without torch (numpy, and BF16 from its raw bytes): each
    float dtype gives what torch's .float() gives, in a sharded file whose second shard (with
    its own header and offsets) holds the BF16 tensors after others."""
    from safetensors.torch import save_file as save_torch

    g = torch.Generator().manual_seed(0)
    first = {"a.dw": torch.randn(4, 1, 3, 3, generator=g).half(),
             "b.dw": torch.randn(2, 1, 5, 5, generator=g).double()}
    second = {"c.norm": torch.randn(7, generator=g),
              "d.dw": torch.randn(3, 1, 3, 3, generator=g).bfloat16(),
              "e.dw": torch.randn(8, 1, 7, 7, generator=g).bfloat16()}
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_torch(first, str(folder / "model-00001-of-00002.safetensors"), metadata={"x": "y"})
    save_torch(second, str(folder / "model-00002-of-00002.safetensors"))
    shards = {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": second}
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: shard for shard, part in shards.items() for name in part}}))
    got = _read_all(folder)
    for name, value in {**first, **second}.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], value.float().numpy())


def test_reading_a_safetensors_model_does_not_import_torch(tmp_path):
    """Extraction from safetensors (F32 and BF16) needs no torch: a Ray worker that imports it
    pays about 3 s of CPU, more than a small model takes to read."""
    import subprocess
    import sys

    from safetensors.torch import save_file as save_torch

    path = tmp_path / "m.safetensors"
    save_torch({"blocks.0.conv_dw.weight": torch.randn(4, 1, 3, 3),
                "blocks.1.conv_dw.weight": torch.randn(4, 1, 5, 5).bfloat16()}, str(path))
    code = ("import sys\n"
            "from dwscan.stages.extract import extract_depthwise_kernels\n"
            f"extraction = extract_depthwise_kernels({str(path)!r}, 'm')\n"
            "assert extraction.kernels.num_rows == 8, extraction\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_natural_order_puts_block_2_before_block_10():
    names = ["blocks.10.w", "blocks.2.w", "blocks.1.w", "head"]
    assert sorted(names, key=natural_key) == ["blocks.1.w", "blocks.2.w", "blocks.10.w", "head"]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_carrying_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(2, 1, 3, 3), "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        _read_all(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_a_truncated_file_gives_a_one_line_reason(tmp_path, tiny_state, fmt):
    path = tmp_path / f"m.{fmt}"
    if fmt == "safetensors":
        save_file(tiny_state, str(path))
    else:
        write_torch(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        _read_all(path)
    assert "corrupt" in str(info.value) and "\n" not in str(info.value)


def test_a_local_safetensors_file_that_holds_less_than_it_declares_is_refused_on_opening(
        tmp_path, tiny_state):
    """Local safetensors are read by the hub's parser from byte ranges: a file shorter than the
    header's length field, a header longer than the file, and a tensor that ends past the file
    each give one line naming the file, before any tensor is read. The whole file reads."""
    path = tmp_path / "m.safetensors"
    save_file(tiny_state, str(path))
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    for cut, why in [(5, "5 bytes, shorter than its header's 8-byte length"),
                     (header - 1, "past the end of the file"),
                     (len(data) - 1, f"ends at byte {len(data)}, past the end of the file")]:
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="corrupt safetensors file m.safetensors") as e:
            SafetensorsCheckpoint([path])
        assert why in str(e.value) and "\n" not in str(e.value)
    path.write_bytes(data)
    reader = SafetensorsCheckpoint([path])
    for info in reader.tensor_infos():
        np.testing.assert_array_equal(reader.read(info.name), tiny_state[info.name])


def test_shards_of_one_name_in_two_subfolders_are_both_read(tmp_path):
    """A shard index may name shards in subfolders; two of the same file name are two files."""
    for sub, name in (("a", "x.weight"), ("b", "y.weight")):
        (tmp_path / sub).mkdir()
        save_file({name: np.full((2, 1, 3, 3), ord(sub), np.float32)},
                  str(tmp_path / sub / "model.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x.weight": "a/model.safetensors", "y.weight": "b/model.safetensors"}}))
    with open_checkpoint(tmp_path) as reader:
        assert [i.name for i in reader.tensor_infos()] == ["x.weight", "y.weight"]
        assert reader.read("x.weight")[0, 0, 0, 0] == ord("a")
        assert reader.read("y.weight")[0, 0, 0, 0] == ord("b")


def test_headers_that_share_bytes_nest_deep_or_hold_newlines_are_one_line_refusals(tmp_path):
    """Entries pointing at the same bytes (a reader of every tensor would hold them once per
    entry), a header nested past Python's recursion limit, and a tensor name with a newline in
    a bad entry: each a CheckpointError of one line."""
    path = tmp_path / "m.safetensors"
    shared = {f"t{i}": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]} for i in range(3)}
    cases = [(safetensors_bytes(shared, bytes(16)), "tensors t0 and t1 share bytes"),
             (len(b"[" * 200_000).to_bytes(8, "little") + b"[" * 200_000, "corrupt safetensors"),
             (safetensors_bytes({"a\nb": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}},
                                 bytes(8)), "a b declares shape [4] (F32) but spans 8 bytes")]
    for data, why in cases:
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            SafetensorsCheckpoint([path])
        assert why in str(info.value) and "\n" not in str(info.value), str(info.value)[:300]


def test_integer_and_boolean_safetensors_read_as_float32(tmp_path):
    """A state dict to load into a network holds every tensor: a batch norm's
    num_batches_tracked (I64) and a mask (BOOL) read as float32, as torch's .float() gives."""
    path = tmp_path / "m.safetensors"
    state = {"bn.num_batches_tracked": np.array(5, np.int64),
             "mask": np.array([True, False, True]), "small": np.array([-3, 7], np.int8)}
    save_file(state, str(path))
    reader = SafetensorsCheckpoint([path])
    for name, value in state.items():
        got = reader.read(name)
        assert got.dtype == np.float32 and got.shape == value.shape
        np.testing.assert_array_equal(got, value.astype(np.float32))


def test_garbage_missing_and_unknown_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        _read_all(garbage)
    with pytest.raises(CheckpointError, match="file not found"):
        _read_all(tmp_path / "absent.pth")
    unknown = tmp_path / "weights.pkl"
    unknown.write_bytes(b"whatever")
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        _read_all(unknown)
    with pytest.raises(CheckpointError, match="has none of"):
        _read_all(tmp_path)


def test_a_torch_file_without_a_state_dict_is_rejected(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        _read_all(path)


@pytest.mark.parametrize("shard", ["../x.safetensors", "/etc/passwd", "a/../../x.safetensors",
                                   "a\\..\\x.safetensors", ""])
def test_a_shard_index_names_only_files_inside_its_folder(tmp_path, tiny_state, shard):
    save_file(tiny_state, str(tmp_path.parent / "x.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        __import__("json").dumps({"weight_map": {"w": shard}}))
    with pytest.raises(CheckpointError, match="not a file name inside the checkpoint"):
        _read_all(tmp_path)


def test_views_that_share_elements_are_refused_before_they_are_read(tmp_path):
    path = tmp_path / "views.pth"
    storage = torch.arange(9000, dtype=torch.float32)
    torch.save({"ok": storage[:900].reshape(100, 1, 3, 3),
                "transposed": storage[:900].reshape(1, 1, 30, 30).transpose(2, 3),
                "overlap": storage.as_strided((1000, 1, 3, 3), (1, 1, 3, 1))}, path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.read("ok").shape == (100, 1, 3, 3)
        assert ckpt.read("transposed").shape == (1, 1, 30, 30)  # permuted, not overlapping
        with pytest.raises(CheckpointError, match="strides \\(1, 1, 3, 1\\): refused"):
            ckpt.read("overlap")
