"""dwscan substitute: the key map, the variants, a known answer and bad inputs, as plain
functions (no Ray); one end-to-end command test on a tiny output folder."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from dwscan import schemas
from dwscan.io.images import ImageSet, ImageSetError, batches, labelled_folder
from dwscan.io.networks import ArchitectureError, Network, build_network, rebuild
from dwscan.io.template_index import template_indexes
from dwscan.io.zoo import demo_zoo
from dwscan.method.substitution import affine_fit, fitted
from dwscan.stages.assign import assign_kernels
from dwscan.stages.substitute import (
    build_variants,
    kernel_rows,
    measure_model,
    measure_variants,
)
from dwscan.testing.synthetic import noisy_copies, planted_templates

K = 5


# ---- the demo zoo's key map: the rebuilt network computes what the original does ----

def _same_pad(x, k, stride):
    """TF 'SAME' padding, as EfficientNet-PyTorch's static-same convs do."""
    size = x.shape[-1]
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return F.pad(x, [total // 2, total - total // 2] * 2)


def _reference_lite0(state: dict, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 written from scratch over the checkpoint's own key names (no timm):
    TF SAME padding, batch norm eps 1e-3, ReLU6, no squeeze-excite."""
    def bn(t, name):
        return F.batch_norm(t, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                            state[f"{name}.weight"], state[f"{name}.bias"], False, 0.0, 1e-3)

    x = F.relu6(bn(F.conv2d(_same_pad(x, 3, 2), state["_conv_stem.weight"], stride=2), "_bn0"))
    strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]  # Lite0: stage repeats 1,2,2,3,3,4,1
    for n, stride in enumerate(strides):
        p = f"_blocks.{n}"
        h = x
        if f"{p}._expand_conv.weight" in state:
            h = F.relu6(bn(F.conv2d(h, state[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
        dw = state[f"{p}._depthwise_conv.weight"]
        h = F.conv2d(_same_pad(h, dw.shape[-1], stride), dw, stride=stride, groups=dw.shape[0])
        h = F.relu6(bn(h, f"{p}._bn1"))
        h = bn(F.conv2d(h, state[f"{p}._project_conv.weight"]), f"{p}._bn2")
        x = h + x if stride == 1 and h.shape == x.shape else h
    x = F.relu6(bn(F.conv2d(x, state["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean((2, 3)), state["_fc.weight"], state["_fc.bias"])


def test_demo_key_map_rebuilds_the_original_network():
    spec = demo_zoo()[0]
    state = torch.load(spec.source, weights_only=True, map_location="cpu")
    network = rebuild(spec.model_id, spec.source)
    assert network.architecture == "tf_efficientnet_lite0"
    assert network.key_map["_blocks.3._depthwise_conv.weight"] == "blocks.2.0.conv_dw.weight"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, reference = network.model(x), _reference_lite0(state, x)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


# ---- a small network with planted kernels: the known answer ----

class SmallNet(nn.Module):
    """Stem, three depthwise 5x5 convs, a linear head: its function rests on the kernels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1, bias=False)
        self.dw = nn.ModuleList(nn.Conv2d(24, 24, K, padding=K // 2, groups=24, bias=False)
                                for _ in range(3))
        self.norm = nn.LayerNorm(24 * 3, elementwise_affine=False)  # the class is the pattern
        self.head = nn.Linear(24 * 3, 10, bias=False)

        self.register_buffer("centre", torch.zeros(24 * 3))  # set to the images' mean

    def features(self, x):
        x = self.stem(x)
        pooled = []
        for conv in self.dw:
            x = torch.tanh(conv(x))
            pooled.append((x * x).mean((2, 3)))  # response energy: depends on the pattern
        return torch.cat(pooled, 1)

    def forward(self, x):
        return self.head(self.norm(self.features(x) - self.centre))


def _images(n: int = 64) -> ImageSet:
    from PIL import Image

    rng = np.random.default_rng(1)

    def image(i):
        freq = 1 + i % 8
        y, x = np.mgrid[0:48, 0:48] / 48
        base = np.sin(2 * np.pi * freq * (x * np.cos(i) + y * np.sin(i)))
        rgb = np.stack([base, np.roll(base, i, 0), rng.standard_normal((48, 48))], -1)
        return lambda: Image.fromarray(((rgb - rgb.min()) / np.ptp(rgb) * 255).astype(np.uint8))
    return ImageSet([image(i) for i in range(n)], None, f"{n} synthetic test images")


def _planted_network(noise: float = 0.02) -> tuple[Network, pa.Table, pa.Table]:
    """SmallNet whose depthwise kernels are a*T + b + noise, T of planted_templates; its
    TEMPLATES (the planted ones) and ASSIGNMENTS."""
    torch.manual_seed(0)
    model = SmallNet().eval()
    templates = planted_templates(K)
    rng = np.random.default_rng(0)
    kernels, _ = noisy_copies(templates, 9, noise, rng)  # 72 = 3 layers x 24
    kernels = kernels[rng.permutation(len(kernels))] * 0.3
    rows = []
    for i, conv in enumerate(model.dw):
        mine = kernels[24 * i:24 * (i + 1)]
        conv.weight.data = torch.from_numpy(mine.reshape(24, 1, K, K).copy())
        rows += [{"model_id": "small", "layer": f"dw.{i}.weight", "layer_index": i, "depth": i / 2,
                  "channel": c, "kernel_size": K, "weights": w.tolist()} for c, w in enumerate(mine)]
    network = Network(model, "small", {}, {"input_size": (3, 48, 48), "interpolation": "bilinear",
                                           "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0})
    with torch.no_grad():  # centred on these images, so that they fall into several classes
        x, _ = next(batches(_images(), network.data_config, 64))
        model.centre.copy_(model.features(x).mean(0))
    table = _templates_table(templates)
    assignments = assign_kernels(pa.Table.from_pylist(rows, schema=schemas.KERNELS),
                                 template_indexes(table), 0.8)
    return network, table, assignments


def _templates_table(templates: np.ndarray) -> pa.Table:
    n = len(templates)
    return pa.Table.from_pylist([{
        "template_set": "test", "kernel_size": K, "template_id": i, "label": "other",
        "family": "other", "fit_cosine": 1.0, "fit_parameters": [], "weights": t.tolist(),
        "fit_weights": t.tolist(), "n_kernels": 1, "n_clustered": 1, "share": 1 / n,
        "share_of_valid": 1 / n, "support": 1, "n_seeds": 1} for i, t in enumerate(templates)],
        schema=schemas.TEMPLATES)


def _run(network, templates, assignments):
    params = dict(network.model.named_parameters())
    rows = kernel_rows(assignments, {f"dw.{i}.weight": params[f"dw.{i}.weight"].detach().numpy()
                                     for i in range(3)})
    variants = build_variants(rows, templates, 0.8)
    baseline, results = measure_variants(network, rows, variants, _images())
    return rows, {v.name: v for v in variants}, baseline, results


def test_known_answer_templates_keep_the_function_and_noise_does_not():
    network, templates, assignments = _planted_network()
    before = network.model.dw[0].weight.detach().clone()
    rows, variants, baseline, results = _run(network, templates, assignments)
    agreement = {name: m.agree / m.n_images for name, m in results.items()}
    kl = {name: m.kl_sum / m.n_images for name, m in results.items()}
    assert baseline.n_images == 64
    assert variants["templates"].n_replaced == 72  # every planted kernel is clustered
    assert agreement["identity"] == 1.0 and kl["identity"] == pytest.approx(0, abs=1e-9)
    assert agreement["templates"] >= 0.99
    assert agreement["noise"] <= agreement["templates"] - 0.2
    assert kl["noise"] > 20 * kl["templates"]
    assert agreement["shuffled-templates"] < agreement["templates"]
    assert variants["master-keys"].replaced is None  # no 7x7 kernels (nor, here, a filter file)
    assert variants["families"].n_replaced == 72  # fit_weights are the planted templates
    scopes = [variants[f"templates:{s}"].n_replaced for s in ("early", "middle", "late")]
    assert scopes == [24, 24, 24]
    assert torch.equal(network.model.dw[0].weight, before)  # the weights are put back


def test_affine_fit_identity_is_exact_and_templates_recover_scale_and_offset():
    rng = np.random.default_rng(0)
    kernels = rng.standard_normal((50, 9)).astype(np.float32)
    a, b = affine_fit(kernels, kernels)
    assert (a == 1).all() and (b == 0).all()
    assert np.array_equal(fitted(kernels, kernels).astype(np.float32), kernels)
    t = planted_templates(3)[:1].repeat(4, 0)
    a, b = affine_fit(2.5 * t - 0.3, t)
    np.testing.assert_allclose(a, 2.5, rtol=1e-6)
    np.testing.assert_allclose(b, -0.3, atol=1e-6)


def test_thresholds_replace_fewer_kernels_as_they_rise():
    network, templates, assignments = _planted_network(noise=0.6)
    params = dict(network.model.named_parameters())
    rows = kernel_rows(assignments, {f"dw.{i}.weight": params[f"dw.{i}.weight"].detach().numpy()
                                     for i in range(3)})
    variants = {v.name: v for v in build_variants(rows, templates, 0.8)}
    counts = [variants[f"templates>={t:g}"].n_replaced for t in (0.8, 0.9, 0.95)]
    assert counts[0] == variants["templates"].n_replaced
    assert counts[0] > counts[1] > counts[2]
    assert variants["noise"].n_replaced == variants["shuffled-templates"].n_replaced == counts[0]


# ---- bad inputs fail that model alone, with one line ----

def test_wrong_architecture_and_wrong_checkpoint_are_one_line_reasons():
    state = {"a.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(ArchitectureError, match="timm cannot build architecture 'no_such_net'"):
        build_network(state, "no_such_net")
    with pytest.raises(ArchitectureError, match="does not load into resnet10t: .*missing keys"):
        build_network(state, "resnet10t")


def test_bad_image_folders(tmp_path):
    with pytest.raises(ImageSetError, match="not a folder"):
        labelled_folder(tmp_path / "missing")
    (tmp_path / "n01440764").mkdir()
    with pytest.raises(ImageSetError, match="no images"):
        labelled_folder(tmp_path)
    (tmp_path / "cats").mkdir()
    with pytest.raises(ImageSetError, match="'cats' is neither"):
        labelled_folder(tmp_path)


def test_measure_model_records_failures_instead_of_raising(tmp_path):
    row = {"model_id": "m", "source": str(tmp_path / "missing.safetensors"), "revision": None}
    [failed] = measure_model(row, str(tmp_path), images_dir=None, arch="resnet10t")
    assert failed["status"] == "failed" and "file not found" in failed["reason"]
    [failed] = measure_model(row, str(tmp_path), images_dir=str(tmp_path / "nope"))
    assert failed["status"] == "failed" and "--images" in failed["reason"]
    assert "\n" not in failed["reason"]


# ---- the command, end to end (starts Ray) ----

@pytest.mark.slow
def test_substitute_command_end_to_end(tmp_path, capsys):
    import pyarrow.parquet as pq
    import timm

    from dwscan.cli import main
    from dwscan.io.catalogue import model_row
    from dwscan.io.storage import OutputLayout, write_table
    from dwscan.io.template_set import TemplateSetRecord, write_template_set_record
    from dwscan.io.zoo import local_checkpoint_spec
    from dwscan.stages.extract import extract_depthwise_kernels

    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10)
    folder = tmp_path / "tiny"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "mobilenetv3_small_050",
                                                    "num_classes": 10}))
    out = OutputLayout(tmp_path / "out")
    spec = local_checkpoint_spec(folder)
    kernels = extract_depthwise_kernels(folder, spec.model_id).kernels
    templates = _templates_table(planted_templates(K))
    write_table(kernels, out.kernels_path(spec.model_id), schemas.KERNELS)
    write_table(assign_kernels(kernels, template_indexes(templates), 0.0, "test"),
                out.assignments_path(spec.model_id), schemas.ASSIGNMENTS)
    write_table(templates, out.templates_path, schemas.TEMPLATES)
    write_template_set_record(out.template_set_path, TemplateSetRecord("test", threshold=0.0))
    good = {**model_row(spec), "n_filters": kernels.num_rows, "n_layers": 1}
    write_table(pa.Table.from_pylist([good], schema=schemas.MODELS), out.models_path,
                schemas.MODELS)
    images = tmp_path / "images"  # 4 labelled images keep the test short; the default set is 48
    for wnid in ("n01440764", "n01443537"):
        (images / wnid).mkdir(parents=True)
        for i in range(2):
            _images(4).sources[i]().save(images / wnid / f"{i}.png")
    assert main(["substitute", "--out", str(out.root), "--images", str(images)]) == 0
    printed = capsys.readouterr().out
    assert any(line.split()[:2] == ["tiny", "identity"] for line in printed.splitlines())
    assert "over 4 images" in printed
    table = pq.read_table(out.table_path(schemas.SUBSTITUTION)).to_pylist()
    identity = next(r for r in table if r["variant"] == "identity")
    assert identity["top1_agreement"] == 1.0 and identity["n_images"] == 4
    assert identity["top1_accuracy"] == identity["baseline_top1_accuracy"] is not None
    assert (out.reports_dir / "substitution.png").exists()
