"""Helpers the tests import: small checkpoints, and the one hub stand-in of this test process."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import torch

from tests.hub_server import HubStandIn

_HUB: HubStandIn | None = None


def shared_hub() -> HubStandIn:
    """Start the hub stand-in once per process and point HF_ENDPOINT and HF_HUB_CACHE at it.

    Call it before anything imports huggingface_hub, which reads both once, at import; every
    subprocess a test starts (dwscan, Ray workers) inherits them.
    """
    global _HUB
    if _HUB is None:
        _HUB = HubStandIn().__enter__()
        cache = tempfile.mkdtemp(prefix="dwscan-test-hub-cache-")
        os.environ["HF_ENDPOINT"] = _HUB.endpoint
        os.environ["HF_HUB_CACHE"] = cache
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        atexit.register(_HUB.__exit__)
        atexit.register(shutil.rmtree, cache, True)
    return _HUB


def tiny_state_dict() -> dict[str, np.ndarray]:
    """Depthwise 3x3 and 5x5 layers (names that sort wrongly as text), a non-square depthwise
    weight, and non-depthwise tensors around them."""
    rng = np.random.default_rng(0)
    return {
        "stem.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),  # dense conv
        "blocks.2.conv_dw.weight": rng.normal(size=(8, 1, 3, 3)).astype(np.float32),
        "blocks.2.bn.weight": np.ones(8, np.float32),
        "blocks.10.conv_dw.weight": rng.normal(size=(16, 1, 5, 5)).astype(np.float32),
        "blocks.10.conv_pw.weight": rng.normal(size=(16, 8, 1, 1)).astype(np.float32),
        "blocks.11.conv_dw.weight": rng.normal(size=(4, 1, 1, 7)).astype(np.float32),  # 1x7
        "head.fc.weight": rng.normal(size=(10, 16)).astype(np.float32),
    }


def write_torch(state: dict[str, np.ndarray], path, wrapper: str | None = None) -> None:
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    torch.save({wrapper: tensors, "epoch": 3} if wrapper else tensors, path)


# A finished scan, written table by table (no Ray, no training): (model id, timm key, top-1,
# clustered fraction). Top-1 rises with the fraction, so every rank correlation is exactly 1.
SCANNED_ZOO = [
    ("mobilenetv3_z", "mobilenetv3_z.lamb_in1k", 70.0, 0.40),
    ("efficientnet_x", "efficientnet_x.ra_in1k", 76.0, 0.50),
    ("efficientnet_y", "efficientnet_y.in12k_ft_in1k", 78.0, 0.60),
    ("convnext_a", "convnext_a.fb_in1k", 80.0, 0.70),
    ("convnext_c", "convnext_c.fb_in1k", 82.0, 0.80),
    ("convnext_b", "convnext_b.fb_in22k_ft_in1k", 84.0, 0.90),
]
SCANNED_LAYERS = 2
SCANNED_CHANNELS = 100  # per layer
SCANNED_INVALID = 4  # zero kernels per model, in its last layer


def write_scanned_zoo(root) -> tuple[str, str]:
    """OUT as a finished scan leaves it (models, templates, assignments) for SCANNED_ZOO, plus
    timm-style accuracy and pre-training tables; returns their paths. convnext_b is listed at two
    image sizes and its model card says 224; its parameter count carries a thousands separator."""
    import pyarrow as pa

    import schemas
    from pipeline.storage import OutputLayout, write_table

    layout = OutputLayout(root)
    models = []
    for model_id, key, _, fraction in SCANNED_ZOO:
        models.append({"model_id": model_id, "source": f"/zoo/{model_id}.safetensors",
                       "accuracy_key": key, "input_size": "3x224x224", "status": "ok",
                       "n_layers": SCANNED_LAYERS, "n_filters": SCANNED_LAYERS * SCANNED_CHANNELS,
                       "skipped_layers": []})
        n_valid = SCANNED_LAYERS * SCANNED_CHANNELS - SCANNED_INVALID
        n_clustered = round(fraction * n_valid)
        rows = []
        for i in range(SCANNED_LAYERS * SCANNED_CHANNELS):
            layer, channel = divmod(i, SCANNED_CHANNELS)
            invalid = i >= SCANNED_LAYERS * SCANNED_CHANNELS - SCANNED_INVALID
            clustered = not invalid and i < n_clustered
            rows.append({"model_id": model_id, "layer": f"blocks.{layer}.conv_dw.weight",
                         "layer_index": layer, "depth": float(layer), "channel": channel,
                         "kernel_size": 5, "template_id": i % 2 if clustered else None,
                         "nearest_template_id": None if invalid else i % 2,
                         "cosine": None if invalid else (0.9 if clustered else 0.5),
                         "sign": None if invalid else 1,
                         "invalid_reason": "zero" if invalid else None})
        write_table(pa.Table.from_pylist(rows, schema=schemas.ASSIGNMENTS),
                    layout.assignments_path(model_id), schemas.ASSIGNMENTS)
    models.append({"model_id": "broken", "source": "/zoo/broken.pth", "status": "failed",
                   "error": "CheckpointError: truncated", "n_layers": 0, "n_filters": 0,
                   "skipped_layers": []})
    write_table(pa.Table.from_pylist(models, schema=schemas.MODELS), layout.models_path,
                schemas.MODELS)
    template = np.zeros(25, np.float32)
    templates = [{"kernel_size": 5, "template_id": t, "label": label, "family": family,
                  "fit_cosine": 0.95, "fit_parameters": {"sigma": 1.0},
                  "fit_weights": (template + t - 0.5).tolist(),
                  "code": 0.25 + 0.5 * t, "weights": (template + t - 0.5).tolist(),
                  "n_kernels": 100, "n_clustered": 80, "share": 0.5, "share_of_valid": 0.4}
                 for t, (label, family) in enumerate([("on-centre", "centre-surround"),
                                                      ("+d/dx", "first-derivative")])]
    write_table(pa.Table.from_pylist(templates, schema=schemas.TEMPLATES), layout.templates_path,
                schemas.TEMPLATES)

    results = root / "results-imagenet.csv"
    lines = ["model,img_size,top1,top1_err,top5,top5_err,param_count,crop_pct,interpolation"]
    for _, key, top1, _ in SCANNED_ZOO:
        params = '"1,014.45"' if key.startswith("convnext_b") else "5.00"
        if key.startswith("convnext_b"):
            lines.append(f"{key},384,{top1 + 1:.3f},0,95.0,0,{params},1.0,bicubic")
        lines.append(f"{key},224,{top1:.3f},0,93.0,0,{params},0.875,bicubic")
    results.write_text("\n".join(lines) + "\n")
    pretrain = root / "model_metadata-in1k.csv"
    pretrain.write_text("model,pretrain\nmobilenetv3_z.lamb_in1k,in1k\n")
    return str(results), str(pretrain)
