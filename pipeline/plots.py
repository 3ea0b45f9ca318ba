"""Pictures of the results: template galleries, clusterability against top-1 and depth, label
shares."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402


def plot_template_gallery(templates: pa.Table, kernel_size: int, path: Path) -> Path:
    """Every template of one size beside its fitted family member (same diverging colour map,
    centred at 0), with family, parameters, fit cosine, share of clustered kernels and whether
    a second seed reproduced it."""
    rows = templates.filter(pc.equal(templates.column("kernel_size"), kernel_size))
    rows = rows.sort_by([("share", "descending")]).to_pylist()
    per_line = min(len(rows), 4) or 1
    lines = -(-len(rows) // per_line) or 1
    fig, axes = plt.subplots(lines, 2 * per_line, figsize=(2.0 * per_line * 2, 2.3 * lines + 0.4),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for i, row in enumerate(rows):
        pair = axes[i // per_line, 2 * (i % per_line):2 * (i % per_line) + 2]
        template = np.asarray(row["weights"], np.float32).reshape(kernel_size, kernel_size)
        fitted = np.asarray(row["fit_weights"], np.float32).reshape(kernel_size, kernel_size)
        limit = float(max(np.abs(template).max(), np.abs(fitted).max())) or 1.0
        for ax, image in zip(pair, (template, fitted)):
            ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
        unstable = " *" if row["stable"] is False else ""
        pair[0].set_title(f"#{row['template_id']}{unstable} {100 * row['share']:.1f}% of "
                          f"clustered\n{row['label']}", fontsize=7, loc="left")
        pair[1].set_title(f"{row['family']}, fit cosine {row['fit_cosine']:.3f}\n"
                          f"{_fit_parameters_text(row)}", fontsize=5.5, loc="left")
    fig.suptitle(f"{kernel_size}x{kernel_size} templates (left) and their fitted family members "
                 "(right); red > 0 > blue; * = not reproduced by a second seed", fontsize=9)
    return _save(fig, path)


def _fit_parameters_text(row: dict) -> str:
    """The fitted parameters of a gallery cell, two decimals, angles whole, two lines."""
    parameters = dict(row["fit_parameters"] or [])
    items = [f"{name.replace('_deg', '')} {value:.0f}" if name.endswith("_deg")
             else f"{name.replace('surround_', 's.')} {value:.2f}"
             for name, value in parameters.items()]
    return ", ".join(items[:3]) + ("\n" + ", ".join(items[3:]) if items[3:] else "\n")


_MARKERS = "osD^vP*Xph"


def plot_clusterability_vs_top1(report: pa.Table, path: Path, n_boot: int = 1000,
                                seed: int = 0) -> Path:
    """Clustered fraction of each model (all sizes) against ImageNet top-1: colour = family,
    marker = pre-training data, a least-squares line with its bootstrap 95% band."""
    overall = [r for r in report.to_pylist() if r["kernel_size"] is None]
    known = [r for r in overall if r["top1"] is not None and r["clustered_fraction"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    families = sorted({r["family"] or "unknown" for r in known})
    pretrains = sorted({r["pretrain"] or "unknown" for r in known})
    colours = plt.get_cmap("tab10")
    for r in known:
        family, pretrain = r["family"] or "unknown", r["pretrain"] or "unknown"
        ax.scatter(r["top1"], 100 * r["clustered_fraction"], s=36, edgecolors="black",
                   linewidths=0.4, color=colours(families.index(family) % 10),
                   marker=_MARKERS[pretrains.index(pretrain) % len(_MARKERS)])
        if len(known) <= 12:
            ax.annotate(r["model_id"], (r["top1"], 100 * r["clustered_fraction"]), fontsize=6,
                        xytext=(4, 3), textcoords="offset points")
        if r["chance_fraction"] is not None:
            ax.scatter(r["top1"], 100 * r["chance_fraction"], color="tab:gray", marker="_", s=120)
    x = np.array([r["top1"] for r in known])
    y = 100 * np.array([r["clustered_fraction"] for r in known])
    if len(known) >= 3 and np.ptp(x) > 0:
        grid = np.linspace(x.min(), x.max(), 50)
        rng = np.random.default_rng(seed)
        lines = []
        for _ in range(n_boot):
            i = rng.integers(0, len(x), len(x))
            if np.ptp(x[i]) > 0:
                lines.append(np.polyval(np.polyfit(x[i], y[i], 1), grid))
        low, high = np.percentile(lines, [2.5, 97.5], axis=0)
        ax.fill_between(grid, low, high, color="tab:blue", alpha=0.15, label="95% band (bootstrap)")
        ax.plot(grid, np.polyval(np.polyfit(x, y, 1), grid), color="tab:blue", lw=1,
                label="least-squares fit")
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours(i % 10), label=f)
               for i, f in enumerate(families)]
    handles += [plt.Line2D([], [], ls="", marker=_MARKERS[i % len(_MARKERS)], color="black",
                           markerfacecolor="none", label=p) for i, p in enumerate(pretrains)]
    handles += ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_xlabel("ImageNet-1k top-1 (%)")
    ax.set_ylabel("clustered kernels (%)")
    threshold = overall[0]["threshold"] if overall else float("nan")
    ax.set_title(f"Clusterability at cosine >= {threshold:g}, {len(known)} models "
                 f"(grey: random-kernel chance)", fontsize=9)
    if not known:
        ax.text(0.5, 0.5, "no model with a known top-1", ha="center", transform=ax.transAxes)
    ax.set_ylim(0, 100)
    fig.tight_layout()
    return _save(fig, path)


def plot_label_shares(label_shares: pa.Table, path: Path) -> Path:
    """Stacked bars: the share of each template label in every model (all kernel sizes)."""
    rows = [r for r in label_shares.to_pylist() if r["kernel_size"] is None]
    models = sorted({r["model_id"] for r in rows},
                    key=lambda m: next((r["top1"] or 0) for r in rows if r["model_id"] == m))
    names = sorted({r["label"] for r in rows} - {"unclustered"}) + ["unclustered"]
    shares = np.zeros((len(models), len(names)))
    for r in rows:
        shares[models.index(r["model_id"]), names.index(r["label"])] = r["share"]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(models) + 3), 4.2))
    colours = plt.get_cmap("tab20")
    bottom = np.zeros(len(models))
    for j, name in enumerate(names):
        colour = "lightgrey" if name == "unclustered" else colours(j % 20)
        ax.bar(np.arange(len(models)), 100 * shares[:, j], bottom=100 * bottom, color=colour,
               label=name, width=0.8)
        bottom += shares[:, j]
    ax.set_xticks(np.arange(len(models)), models, rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("valid kernels (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Template labels per model (models by top-1, lowest first)", fontsize=9)
    ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_fraction_vs_depth(layers: pa.Table, path: Path, bins: int = 10) -> Path:
    """Clustered fraction of each depthwise layer against its relative depth: one faint line per
    model, and the mean over each family's layers in depth bins."""
    rows = [r for r in layers.to_pylist() if r["clustered_fraction"] is not None]
    families = sorted({r["family"] or "unknown" for r in rows})
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    edges = np.linspace(0, 1, bins + 1)
    for i, family in enumerate(families):
        mine = [r for r in rows if (r["family"] or "unknown") == family]
        for model_id in sorted({r["model_id"] for r in mine}):
            model = sorted((r["depth"], r["clustered_fraction"]) for r in mine
                           if r["model_id"] == model_id)
            ax.plot(*zip(*[(d, 100 * f) for d, f in model]), color=colours(i % 10), alpha=0.25,
                    lw=0.8)
        depth = np.array([r["depth"] for r in mine])
        fraction = np.array([r["clustered_fraction"] for r in mine])
        which = np.clip(np.digitize(depth, edges) - 1, 0, bins - 1)
        centres = [(edges[b] + edges[b + 1]) / 2 for b in range(bins) if (which == b).any()]
        means = [100 * fraction[which == b].mean() for b in range(bins) if (which == b).any()]
        ax.plot(centres, means, color=colours(i % 10), lw=2, marker="o", ms=3,
                label=f"{family} ({len({r['model_id'] for r in mine})} models)")
    ax.set_xlabel("relative depth of the depthwise layer (0 = first, 1 = last)")
    ax.set_ylabel("clustered kernels (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, 1)
    ax.set_title("Clusterability by depth (thick: family mean per depth bin)", fontsize=9)
    if families:
        ax.legend(fontsize=7)
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
    """PNG bytes written whole, to a local folder or an object store."""
    from pipeline.storage import as_location, write_bytes_atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    path = as_location(path)
    write_bytes_atomic(path, buffer.getvalue())
    return path
