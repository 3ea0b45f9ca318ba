"""Finished scans written table by table (no Ray, no training), with planted answers: the report
tests and the report benchmark read them."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

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
SCANNED_LABELS = ("on-centre", "+d/dx")  # template i % len(labels) of each clustered kernel

# A zoo of any size: each family's models and the kernel size of their depthwise layers (layer i
# of a model has kernel size sizes[i % len(sizes)]), and the timm tags (pre-training) they cycle.
ZOO_FAMILIES = {"convnext": (7,), "efficientnet": (3, 5), "mobilenetv3": (3, 5),
                "mixnet": (3, 5, 7), "ghostnet": (3,)}
ZOO_TAGS = ("ra_in1k", "fb_in22k_ft_in1k", "in12k_ft_in1k", "fb_in1k")
ZOO_LABELS = ("on-centre", "off-centre", "+d/dx", "+d/dy")
ZOO_OUTLIERS = 2  # the first models' top-1 is 12 points off the line of every other model


def zoo_of(n_models: int, seed: int = 0) -> Iterator[tuple[str, str, float, float]]:
    """n models as SCANNED_ZOO entries: families and tags in turn, a planted clustered fraction
    in [0.3, 0.9] (a multiple of 0.01) and top-1 = 60 + 25 * fraction + noise (sd 0.5), except
    the first ZOO_OUTLIERS models, 12 points below that line."""
    rng = np.random.default_rng(seed)
    families = list(ZOO_FAMILIES)
    for i in range(n_models):
        family = families[i % len(families)]
        tag = ZOO_TAGS[(i // len(families)) % len(ZOO_TAGS)]
        fraction = round(float(rng.uniform(0.3, 0.9)), 2)
        top1 = 60 + 25 * fraction + float(rng.normal(0, 0.5)) - (12 if i < ZOO_OUTLIERS else 0)
        model_id = f"{family}_m{i:04d}"
        yield model_id, f"{model_id}.{tag}", round(top1, 3), fraction


def zoo_kernel_sizes(model_id: str) -> tuple[int, ...]:
    """Kernel sizes of a zoo_of model's layers, in turn (5x5 for SCANNED_ZOO's models)."""
    match = re.fullmatch(r"(\w+)_m\d{4}", model_id)
    return ZOO_FAMILIES.get(match.group(1) if match else "", (5,))


# the family and polarity of a label the scanned zoos use, by how it starts (templates.parquet's
# `family` and `polarity`, as the fitted families name them); any other label is 'other'
LABEL_PATTERNS = (("on-centre", "centre-surround", "on"), ("off-centre", "centre-surround", "off"),
                  ("+d2/d", "second-derivative", "+"), ("-d2/d", "second-derivative", "-"),
                  ("+d/d", "first-derivative", "+"), ("on-cross", "cross", "on"))


def label_pattern(label: str) -> tuple[str, str | None]:
    """(family, polarity) of a scanned zoo's template label (LABEL_PATTERNS)."""
    return next(((f, p) for start, f, p in LABEL_PATTERNS if label.startswith(start)),
                ("other", None))


def write_scanned_zoo(root, zoo=SCANNED_ZOO, layers: int = SCANNED_LAYERS,
                      channels: int = SCANNED_CHANNELS,
                      labels: tuple[str, ...] = SCANNED_LABELS) -> tuple[str, str]:
    """OUT as a finished scan leaves it (models, templates, assignments) for `zoo`, plus
    timm-style accuracy and pre-training tables; returns their paths.

    Each model has `layers` depthwise layers of `channels` kernels (sizes from zoo_kernel_sizes);
    its first round(fraction * valid) kernels are clustered (template i % len(labels)), its last
    SCANNED_INVALID are zero. A model named convnext_b is listed at two image sizes and its model
    card says 224; its parameter count carries a thousands separator. A failed model, 'broken',
    has no kernels."""
    import pyarrow as pa

    from dwscan import schemas
    from dwscan.io.storage import OutputLayout, write_table

    layout = OutputLayout(root)
    zoo = list(zoo)
    models = []
    n = layers * channels
    index = np.arange(n)
    layer = (index // channels).astype(np.int32)
    invalid = index >= n - SCANNED_INVALID
    sizes_used: set[int] = set()
    for model_id, key, _, fraction in zoo:
        models.append({"model_id": model_id, "source": f"/zoo/{model_id}.safetensors",
                       "accuracy_key": key, "input_size": "3x224x224", "status": "ok",
                       "n_layers": layers, "n_filters": n, "skipped_layers": []})
        sizes = np.array(zoo_kernel_sizes(model_id), np.int32)
        sizes_used.update(sizes.tolist())
        clustered = ~invalid & (index < round(fraction * (n - SCANNED_INVALID)))
        template = (index % len(labels)).astype(np.int32)
        columns = {
            "model_id": pa.array([model_id] * n), "layer": pa.array(
                [f"blocks.{i}.conv_dw.weight" for i in range(layers)]).take(layer),
            "layer_index": layer, "depth": (layer / max(layers - 1, 1)).astype(np.float32),
            "channel": (index % channels).astype(np.int32), "kernel_size": sizes[layer % len(sizes)],
            "template_id": pa.array(template, mask=~clustered),
            "nearest_template_id": pa.array(template, mask=invalid),
            "cosine": pa.array(np.where(clustered, 0.9, 0.5).astype(np.float32), mask=invalid),
            "sign": pa.array(np.ones(n, np.int8), mask=invalid),
            "invalid_reason": pa.array(np.full(n, "zero"), pa.string(), mask=~invalid),
            "template_set": pa.nulls(n, pa.string()),
            # the yardstick: clustered kernels near a family member, the rest not; at 7x7 the
            # clustered ones fit master key 1 + i % 8
            "family_cosine": pa.array(np.where(clustered, 0.9, 0.6).astype(np.float32),
                                      mask=invalid),
            "master_key": pa.array((index % 8 + 1).astype(np.int32),
                                   mask=invalid | (sizes[layer % len(sizes)] != 7)),
            "master_key_cosine": pa.array(np.where(clustered, 0.9, 0.3).astype(np.float32),
                                          mask=invalid | (sizes[layer % len(sizes)] != 7)),
            "seed_template_ids": pa.nulls(n, pa.list_(pa.int32()))}  # one seed: no ranges
        write_table(pa.table(columns, schema=schemas.ASSIGNMENTS),
                    layout.assignments_path(model_id), schemas.ASSIGNMENTS)
    models.append({"model_id": "broken", "source": "/zoo/broken.pth", "status": "failed",
                   "error": "CheckpointError: truncated", "n_layers": 0, "n_filters": 0,
                   "skipped_layers": []})
    write_table(pa.Table.from_pylist(models, schema=schemas.MODELS), layout.models_path,
                schemas.MODELS)
    templates = [{"kernel_size": k, "template_id": t, "label": label,
                  "family": label_pattern(label)[0], "polarity": label_pattern(label)[1],
                  "fit_cosine": 0.95,
                  "fit_parameters": {"sigma": 1.0},
                  "fit_weights": (np.zeros(k * k, np.float32) + t - 0.5).tolist(),
                  "code": (t + 0.5) / len(labels),
                  "weights": (np.zeros(k * k, np.float32) + t - 0.5).tolist(),
                  "n_kernels": 100, "n_clustered": 80, "share": 1 / len(labels),
                  "share_of_valid": 0.8 / len(labels), "support": 1, "n_seeds": 1}
                 for k in sorted(sizes_used) for t, label in enumerate(labels)]
    write_table(pa.Table.from_pylist(templates, schema=schemas.TEMPLATES), layout.templates_path,
                schemas.TEMPLATES)

    results = root / "results-imagenet.csv"
    lines = ["model,img_size,top1,top1_err,top5,top5_err,param_count,crop_pct,interpolation"]
    for _, key, top1, _ in zoo:
        params = '"1,014.45"' if key.startswith("convnext_b.") else "5.00"
        if key.startswith("convnext_b."):
            lines.append(f"{key},384,{top1 + 1:.3f},0,95.0,0,{params},1.0,bicubic")
        lines.append(f"{key},224,{top1:.3f},0,93.0,0,{params},0.875,bicubic")
    results.write_text("\n".join(lines) + "\n")
    pretrain = root / "model_metadata-in1k.csv"
    pretrain.write_text("model,pretrain\nmobilenetv3_z.lamb_in1k,in1k\n")
    return str(results), str(pretrain)
