"""`dwscan run` end to end, as a user runs it: a subprocess that starts its own local Ray."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

import schemas
from pipeline.families import dog_family
from pipeline.storage import OutputLayout, read_table, read_tables, schema_version_of
from pipeline.zoo import demo_zoo
from tests.test_checkpoints import _Payload

pytestmark = pytest.mark.slow


def run_dwscan(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}  # never join a cluster that happens to be running
    return subprocess.run(["dwscan", "run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _depthwise_counts(path: str) -> tuple[int, int]:
    """Layers and filters counted straight from torch.load, independently of dwscan."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    shapes = [v.shape for v in state.values() if v.ndim == 4 and v.shape[1] == 1 and v.shape[2] > 1]
    return len(shapes), sum(s[0] for s in shapes)


def test_demo_zoo_end_to_end(tmp_path):
    result = run_dwscan([], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    layout = OutputLayout(tmp_path / "dwscan-out")

    models = {r["model_id"]: r for r in read_table(layout.models_path).to_pylist()}
    assert set(models) == {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"}
    lite0 = models["efficientnet-lite0"]
    assert (lite0["status"], lite0["n_layers"], lite0["n_filters"]) == ("ok", 16, 8960)
    for spec in demo_zoo():
        row = models[spec.model_id]
        assert row["status"] == "ok" and row["error"] is None and row["skipped_layers"] == []
        assert (row["n_layers"], row["n_filters"]) == _depthwise_counts(spec.source)
        kernels = read_table(layout.kernels_path(spec.model_id))
        assert kernels.num_rows == row["n_filters"]
        assert read_table(layout.assignments_path(spec.model_id)).num_rows == row["n_filters"]
    sizes = read_table(layout.kernels_path("efficientnet-lite0")).column("kernel_size").to_numpy()
    assert ((sizes == 3).sum(), (sizes == 5).sum()) == (2624, 6336)

    for k in (3, 5):
        assert (layout.autoencoders_dir / f"k{k}.safetensors").exists()
    templates = read_table(layout.templates_path)
    assert sorted(set(templates.column("kernel_size").to_pylist())) == [3, 5]
    for k in (3, 5):
        share = pc.sum(templates.filter(pc.equal(templates["kernel_size"], k))["share"]).as_py()
        assert share == pytest.approx(1.0)

    report = {(r["model_id"], r["kernel_size"]): r
              for r in read_table(layout.clusterability_path).to_pylist()}
    assert len(report) == 9
    top1 = {"efficientnet-lite0": 74.846, "efficientnet-lite1": 76.674,
            "efficientnet-lite2": 77.470}
    for model_id, expected in top1.items():
        overall = report[model_id, None]
        assert overall["top1"] == expected
        assert overall["n_filters"] == models[model_id]["n_filters"]
        # trained kernels cluster far more than random ones do against the same templates
        assert overall["clustered_fraction"] > overall["chance_fraction"] + 0.3
        assert model_id in result.stdout
    for path in [layout.models_path, layout.templates_path, layout.clusterability_path]:
        assert schema_version_of(path) == schemas.SCHEMA_VERSION


def test_broken_checkpoints_fail_alone_and_a_synthetic_zoo_comes_back(tmp_path,
                                                                      synthetic_checkpoint):
    synthetic, truth = synthetic_checkpoint
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(synthetic.read_bytes()[:5000])
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"conv_dw.weight": torch.zeros(4, 1, 3, 3), "x": _Payload(marker)}, evil)
    out = tmp_path / "out"
    result = run_dwscan(["--out", str(out), "--checkpoint", str(synthetic), "--model-id", "synth",
                         "--checkpoint", str(truncated), "--checkpoint", str(evil),
                         "--checkpoint", str(tmp_path / "missing.pth")], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert not marker.exists()
    layout = OutputLayout(out)
    models = {r["model_id"]: r for r in read_table(layout.models_path).to_pylist()}
    assert models["synth"]["status"] == "ok" and models["synth"]["n_layers"] == 6
    assert "corrupt safetensors" in models["truncated"]["error"]
    assert "refused to unpickle" in models["evil"]["error"]
    assert "file not found" in models["missing"]["error"]
    for name in ("truncated", "evil", "missing"):
        assert models[name]["status"] == "failed" and f"FAILED {name}" in result.stderr
        assert not layout.kernels_path(name).exists()

    # every family template is found again at every size
    templates = read_table(layout.templates_path).to_pylist()
    for k in (3, 5, 7):
        found: dict[str, float] = {}
        for t in templates:
            if t["kernel_size"] == k:
                found[t["label"]] = max(found.get(t["label"], 0.0), t["label_cosine"])
        for name in dog_family(k):
            assert found.get(name, 0) >= 0.95, (k, name, found)
    # structured kernels land on the template named after their truth
    assigned = read_tables([layout.assignments_path("synth")], schemas.ASSIGNMENTS).to_pylist()
    labels = {(t["kernel_size"], t["template_id"]): t["label"] for t in templates}
    hits = total = 0
    clustered = {3: [], 5: [], 7: []}
    for row in assigned:
        true_name = truth[row["layer"]][row["channel"]]
        clustered[row["kernel_size"]].append(row["template_id"] is not None)
        if true_name != "random":
            total += 1
            hits += labels[row["kernel_size"], row["nearest_template_id"]] == true_name
    assert hits / total >= 0.98
    structured_share = np.mean([v != "random" for v in truth["stages.1.blocks.0.conv_dw.weight"]])
    for k in (5, 7):  # random kernels almost never reach the threshold at these sizes
        assert abs(np.mean(clustered[k]) - structured_share) <= 0.02
    report = {r["kernel_size"]: r for r in read_table(layout.clusterability_path).to_pylist()}
    assert abs(report[7]["clustered_fraction"] - structured_share) <= 0.02
