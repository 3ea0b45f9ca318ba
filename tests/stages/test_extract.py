import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dwscan.io.arrays import list_column_to_matrix
from dwscan.io.storage import OutputLayout, read_table
from dwscan.io.zoo import demo_zoo, local_checkpoint_spec
from dwscan.stages.extract import extract_depthwise_kernels, extract_model_to_parquet
from tests.helpers import write_torch


def test_known_layers_in_network_order_with_values(tiny_safetensors, tiny_state):
    result = extract_depthwise_kernels(tiny_safetensors, "tiny")
    table = result.kernels
    assert result.n_layers == 2
    assert table.num_rows == 8 + 16
    # safetensors sorts names as text; the natural order puts block 2 first
    assert table.column("layer").unique().to_pylist() == ["blocks.2.conv_dw.weight",
                                                         "blocks.10.conv_dw.weight"]
    assert table.column("layer_index").unique().to_pylist() == [0, 1]
    assert table.column("depth").unique().to_pylist() == [0.0, 1.0]
    assert table.column("kernel_size").unique().to_pylist() == [3, 5]
    assert table.column("channel").to_pylist() == list(range(8)) + list(range(16))
    three = table.filter(np.array(table.column("kernel_size").to_pylist()) == 3)
    np.testing.assert_array_equal(list_column_to_matrix(three.column("weights"), 9),
                                  tiny_state["blocks.2.conv_dw.weight"].reshape(8, 9))
    assert result.skipped_layers == [{"layer": "blocks.11.conv_dw.weight", "shape": "4x1x1x7",
                                      "reason": "non-square kernel 1x7"}]


def test_torch_files_keep_state_dict_order(tmp_path, tiny_state):
    path = tmp_path / "tiny.pth"
    write_torch(tiny_state, path)
    layers = extract_depthwise_kernels(path, "tiny").kernels.column("layer").unique().to_pylist()
    assert layers == ["blocks.2.conv_dw.weight", "blocks.10.conv_dw.weight"]


@pytest.mark.parametrize("arch", ["mobilenetv3_small_050", "convnext_atto", "efficientnet_b0",
                                  "resnet18"])
def test_timm_layouts_match_the_depthwise_modules(tmp_path, arch):
    timm = pytest.importorskip("timm")
    model = timm.create_model(arch, pretrained=False)
    expected = [(name + ".weight", m.weight.detach()) for name, m in model.named_modules()
                if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1
                and m.in_channels // m.groups == 1]
    path = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    result = extract_depthwise_kernels(path, arch)
    assert result.n_layers == len(expected)
    assert result.n_filters == sum(w.shape[0] for _, w in expected)
    got_layers = result.kernels.column("layer").unique().to_pylist()
    assert got_layers == [name for name, _ in expected]  # network order, from safetensors
    if expected:
        name, weight = expected[-1]
        k = weight.shape[-1]
        last = result.kernels.slice(result.n_filters - weight.shape[0])
        np.testing.assert_array_equal(list_column_to_matrix(last.column("weights"), k * k),
                                      weight.reshape(weight.shape[0], -1).numpy())


def test_demo_zoo_lite0_has_the_published_layout():
    spec = demo_zoo()[0]
    assert spec.model_id == "efficientnet-lite0"
    result = extract_depthwise_kernels(spec.source, spec.model_id)
    sizes = result.kernels.column("kernel_size").to_numpy()
    assert (result.n_layers, result.n_filters) == (16, 8960)
    assert ((sizes == 3).sum(), (sizes == 5).sum()) == (2624, 6336)


def test_a_failed_model_is_recorded_and_its_stale_file_removed_at_commit(tmp_path,
                                                                         tiny_safetensors):
    import pyarrow as pa

    from dwscan import schemas
    from dwscan.run import commit_pending_kernels, now_utc, scan_token

    layout = OutputLayout(tmp_path / "out")
    spec = local_checkpoint_spec(tiny_safetensors, model_id="m")
    ok = extract_model_to_parquet(spec, layout.root)
    assert ok["status"] == "ok" and ok["n_filters"] == 24 and ok["n_layers"] == 2
    assert read_table(layout.kernels_path("m")).num_rows == 24
    tiny_safetensors.write_bytes(tiny_safetensors.read_bytes()[:100])
    when = now_utc()
    failed = extract_model_to_parquet(spec, layout.root, token=scan_token(when))
    assert failed["status"] == "failed" and "corrupt safetensors" in failed["error"]
    assert read_table(layout.kernels_path("m")).num_rows == 24  # a scan touches no stored file
    # once models.parquet records the failure, the commit removes the stale kernels
    commit_pending_kernels(layout, pa.Table.from_pylist([{**failed, "scanned_at": when}],
                                                        schema=schemas.MODELS))
    assert not layout.kernels_path("m").exists()
