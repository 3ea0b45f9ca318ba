"""Pictures of the results: a gallery of templates, and clusterability against top-1."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402


def plot_template_gallery(templates: pa.Table, kernel_size: int, path: Path) -> Path:
    """Every template of one size, on a diverging colour map centred at 0, label and share below."""
    rows = templates.filter(pc.equal(templates.column("kernel_size"), kernel_size))
    rows = rows.sort_by([("share", "descending")]).to_pylist()
    cols = min(len(rows), 6) or 1
    lines = -(-len(rows) // cols) or 1
    fig, axes = plt.subplots(lines, cols, figsize=(1.9 * cols, 2.2 * lines), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows):
        image = np.asarray(row["weights"], dtype=np.float32).reshape(kernel_size, kernel_size)
        limit = float(np.abs(image).max()) or 1.0
        ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"#{row['template_id']} {row['label']}\n{100 * row['share']:.1f}% of kernels",
                     fontsize=8)
    fig.suptitle(f"{kernel_size}x{kernel_size} templates (red > 0 > blue)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_clusterability_vs_top1(report: pa.Table, path: Path) -> Path:
    """Clustered fraction of each model (all sizes) against ImageNet top-1, chance level marked."""
    overall = [r for r in report.to_pylist() if r["kernel_size"] is None]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    known = [r for r in overall if r["top1"] is not None and r["clustered_fraction"] is not None]
    for r in known:
        ax.scatter(r["top1"], 100 * r["clustered_fraction"], color="tab:blue")
        ax.annotate(r["model_id"], (r["top1"], 100 * r["clustered_fraction"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
        if r["chance_fraction"] is not None:
            ax.scatter(r["top1"], 100 * r["chance_fraction"], color="tab:gray", marker="_", s=200)
    ax.set_xlabel("ImageNet-1k top-1 (%)")
    ax.set_ylabel("clustered kernels (%)")
    threshold = overall[0]["threshold"] if overall else float("nan")
    ax.set_title(f"Clusterability at cosine >= {threshold:g} (grey: random-kernel chance)",
                 fontsize=9)
    if not known:
        ax.text(0.5, 0.5, "no model with a known top-1", ha="center", transform=ax.transAxes)
    ax.set_ylim(0, 100)
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_shares(assignments: pa.Table, templates: pa.Table, model_id: str,
                      path: Path) -> Path:
    """Share of each template label in every depthwise layer of one model, layers by depth."""
    labels = {(r["kernel_size"], r["template_id"]): r["label"] for r in templates.to_pylist()}
    mine = assignments.filter(pc.equal(assignments.column("model_id"), model_id)).to_pylist()
    layers = sorted({(r["layer_index"], r["depth"], r["kernel_size"]) for r in mine})
    names = sorted({labels[k] for k in labels}) + ["unclustered"]
    counts = np.zeros((len(layers), len(names)))
    row_of = {layer[0]: i for i, layer in enumerate(layers)}
    for r in mine:
        if r["invalid_reason"] is not None:
            continue
        name = ("unclustered" if r["template_id"] is None
                else labels[r["kernel_size"], r["template_id"]])
        counts[row_of[r["layer_index"]], names.index(name)] += 1
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 3), 4))
    colours = plt.get_cmap("tab20")
    bottom = np.zeros(len(layers))
    x = np.arange(len(layers))
    for j, name in enumerate(names):
        colour = "lightgrey" if name == "unclustered" else colours(j % 20)
        ax.bar(x, 100 * shares[:, j], bottom=100 * bottom, color=colour, label=name, width=0.85)
        bottom += shares[:, j]
    ax.set_xticks(x, [f"{d:.2f}\n{k}x{k}" for _, d, k in layers], fontsize=6)
    ax.set_xlabel("relative depth (and kernel size) of each depthwise layer")
    ax.set_ylabel("kernels (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{model_id}: template shares per layer", fontsize=10)
    ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
