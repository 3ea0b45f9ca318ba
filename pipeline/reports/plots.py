"""Pictures of the results: template galleries, clusterability against top-1 and depth, label
shares, substitution, and how far runs agree."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dwscan.reports.agreement import RunAgreement
from dwscan.reports.patterns import OTHER as OTHER_KIND
from dwscan.reports.patterns import kind_order, label_kinds
from dwscan.reports.tables import UNCLUSTERED


@functools.cache
def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported at the first plot rather than with this
    module: the command line and the run driver import the report stage, and most commands
    draw nothing (pyplot alone takes most of a second to import)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed on a cluster node
    import matplotlib.pyplot as plt

    return plt


def plot_template_gallery(templates: pa.Table, kernel_size: int, path: Path) -> Path:
    """Every template of one size beside its fitted family member (same diverging colour map,
    centred at 0), with family, parameters, fit cosine, share of clustered kernels and how
    many of the seeds found it."""
    plt = _pyplot()
    rows = templates.filter(pc.equal(templates.column("kernel_size"), kernel_size))
    rows = rows.sort_by([("share", "descending")]).to_pylist()
    per_line = min(len(rows), 4) or 1
    lines = -(-len(rows) // per_line) or 1
    # One axes holding every image at its own place, not a grid of subplots: 40 axes and a
    # layout engine measuring their titles took 4 s of a run's 6 s of report here, one axes
    # 0.55 to 0.65 s a size. Places are in kernel pixels; the gaps are set in inches through `scale`.
    width, gap, pair_gap, text_room = 4.0 * per_line, 0.06, 0.3, 0.42  # inches
    image = (0.98 * width - per_line * gap - (per_line - 1) * pair_gap) / (2 * per_line)
    scale = image / kernel_size  # inches per kernel pixel
    gap, pair_gap, text_room = gap / scale, pair_gap / scale, text_room / scale
    step_x, step_y = 2 * kernel_size + gap + pair_gap, kernel_size + text_room
    extent_x, extent_y = per_line * step_x - pair_gap, lines * step_y
    height = extent_y * scale + 0.6
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0.01, 0.1 / height, 0.98, extent_y * scale / height))
    ax.axis("off")
    for i, row in enumerate(rows):
        x, y = (i % per_line) * step_x, (i // per_line) * step_y + text_room
        template = np.asarray(row["weights"], np.float32).reshape(kernel_size, kernel_size)
        fitted = np.asarray(row["fit_weights"], np.float32).reshape(kernel_size, kernel_size)
        limit = float(max(np.abs(template).max(), np.abs(fitted).max())) or 1.0
        for left, image in ((x, template), (x + kernel_size + gap, fitted)):
            ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto",
                      extent=(left, left + kernel_size, y + kernel_size, y))
        ax.text(x, y - 0.03 * kernel_size, f"#{row['template_id']} "
                f"{100 * row['share']:.1f}% of clustered, {row['support']}/{row['n_seeds']} "
                f"seeds\n{row['label']}", fontsize=7,
                va="bottom")
        ax.text(x + kernel_size + gap, y - 0.03 * kernel_size,
                f"{row['family']}, fit cosine {row['fit_cosine']:.3f}\n"
                f"{_fit_parameters_text(row)}", fontsize=5.5, va="bottom")
    ax.set_xlim(0, extent_x)  # after imshow, which would fit the view to the last image
    ax.set_ylim(extent_y, 0)
    fig.suptitle(f"{kernel_size}x{kernel_size} templates (left) and their fitted family members "
                 "(right); red > 0 > blue; seeds: how many found it", fontsize=9,
                 y=1 - 0.1 / height, va="top")
    return _save(fig, path)


def _fit_parameters_text(row: dict) -> str:
    """The fitted parameters of a gallery cell, two decimals, angles whole, two lines."""
    parameters = dict(row["fit_parameters"] or [])
    items = [f"{name.replace('_deg', '')} {value:.0f}" if name.endswith("_deg")
             else f"{name.replace('surround_', 's.')} {value:.2f}"
             for name, value in parameters.items()]
    return ", ".join(items[:3]) + ("\n" + ", ".join(items[3:]) if items[3:] else "\n")


_MARKERS = "osD^vP*Xph"
MAX_WIDTH_PX = 2400  # no image wider than this, whatever the zoo: _save lowers the dpi
DPI = 120
COLOURED_FAMILIES = 9  # the most common families get a colour each; the rest draw grey as "other"
OTHER = "other"
LABEL_ALL_UP_TO = 12  # a scatter of this many models or fewer labels every point


def family_groups(families: list[str | None]) -> dict[str, str]:
    """Each family's legend group: itself for the COLOURED_FAMILIES most common ones, else
    'other', so a zoo of 40 families still has a legend of 10 entries."""
    counts: dict[str, int] = {}
    for family in families:
        counts[family or "unknown"] = counts.get(family or "unknown", 0) + 1
    ranked = sorted(counts, key=lambda f: (-counts[f], f))
    coloured = set(ranked[:COLOURED_FAMILIES]) if len(ranked) > COLOURED_FAMILIES + 1 else set(ranked)
    return {f: f if f in coloured else OTHER for f in ranked}


def _group_colours(groups: dict[str, str]) -> dict[str, object]:
    plt = _pyplot()
    named = sorted(set(groups.values()) - {OTHER})
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(named)}
    colours[OTHER] = "tab:gray"
    return colours


def scatter_labels(model_ids: list[str], x: np.ndarray, y: np.ndarray,
                   named: tuple[str, ...] = (), max_outliers: int = 10,
                   z: float = 4.0) -> list[str]:
    """The points worth a name on a scatter: every one in a small zoo; else the models the user
    named and the outliers, those more than `z` robust standard deviations (1.4826 * MAD) off
    the least-squares line, at most `max_outliers` of them, the farthest first."""
    if len(model_ids) <= LABEL_ALL_UP_TO:
        return list(model_ids)
    chosen = [m for m in model_ids if m in set(named)]
    if len(x) >= 3 and np.ptp(x) > 0:
        residual = y - np.polyval(np.polyfit(x, y, 1), x)
        spread = 1.4826 * np.median(np.abs(residual - np.median(residual)))
        far = np.abs(residual) > z * max(spread, 1e-12)
        order = [i for i in np.argsort(-np.abs(residual)) if far[i]][:max_outliers]
        chosen += [model_ids[i] for i in order if model_ids[i] not in chosen]
    return chosen


def plot_clusterability_vs_top1(report: pa.Table, path: Path, named: tuple[str, ...] = (),
                                n_boot: int = 1000, seed: int = 0) -> Path:
    """Clustered fraction of each model (all sizes) against ImageNet top-1: colour = family,
    marker = pre-training data, a least-squares line with its bootstrap 95% band. Names only on
    outliers and the `named` models once the zoo is large (scatter_labels)."""
    plt = _pyplot()
    overall = [r for r in report.to_pylist() if r["kernel_size"] is None]
    known = [r for r in overall if r["top1"] is not None and r["clustered_fraction"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    groups = family_groups([r["family"] for r in known])
    colours = _group_colours(groups)
    pretrains = sorted({r["pretrain"] or "unknown" for r in known})
    x = np.array([r["top1"] for r in known], dtype=float)
    y = 100 * np.array([r["clustered_fraction"] for r in known], dtype=float)
    group = [groups[r["family"] or "unknown"] for r in known]
    pretrain = [r["pretrain"] or "unknown" for r in known]
    size = 36 if len(known) <= 100 else 14
    for g in colours:
        for p_index, p in enumerate(pretrains):
            mine = [i for i in range(len(known)) if group[i] == g and pretrain[i] == p]
            if mine:
                ax.scatter(x[mine], y[mine], s=size, edgecolors="black", linewidths=0.3,
                           color=colours[g], marker=_MARKERS[p_index % len(_MARKERS)], alpha=0.85)
    chance = [(r["top1"], 100 * r["chance_fraction"]) for r in known
              if r["chance_fraction"] is not None]
    if chance:
        ax.scatter(*zip(*chance), color="tab:gray", marker="_", s=120 if len(known) <= 100 else 40)
    ids = [r["model_id"] for r in known]
    for model_id in scatter_labels(ids, x, y, named):
        i = ids.index(model_id)
        ax.annotate(model_id, (x[i], y[i]), fontsize=6, xytext=(4, 3), textcoords="offset points",
                    fontweight="bold" if model_id in named else "normal")
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
    counts = {g: group.count(g) for g in colours}
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[g],
                          label=f"{g} ({counts[g]})") for g in colours if counts[g]]
    handles += [plt.Line2D([], [], ls="", marker=_MARKERS[i % len(_MARKERS)], color="black",
                           markerfacecolor="none", label=p) for i, p in enumerate(pretrains)]
    handles += ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_xlabel("ImageNet-1k top-1 (%)")
    ax.set_ylabel("clustered kernels (%)")
    threshold = overall[0]["threshold"] if overall else float("nan")
    named_note = "\nnamed: outliers and the models asked for" if len(known) > LABEL_ALL_UP_TO else ""
    ax.set_title(f"Clusterability at cosine >= {threshold:g}, {len(known)} models "
                 f"(grey: random-kernel chance){named_note}", fontsize=9)
    if not known:
        ax.text(0.5, 0.5, "no model with a known top-1", ha="center", transform=ax.transAxes)
    ax.set_ylim(0, 100)
    fig.tight_layout()
    return _save(fig, path)


MAX_BARS = 60  # label-share groups drawn; the page's table lists every group
# a hue per kind of pattern (tab10 without its grey, which marks 'other')
_KIND_HUES = (0, 1, 2, 3, 4, 5, 6, 8, 9)


def _kind_colours(kind_of: dict[str, str]) -> tuple[list[str], dict[str, object], dict[str, object]]:
    """Labels in stack order, kind by kind (kind_order), and the colour of each label and each
    kind: a hue per kind, its templates in shades of it (darkest first), so a stack reads by
    kind first; 'other' grey, 'unclustered' light grey."""
    from matplotlib.colors import to_rgb

    plt = _pyplot()
    kinds = sorted(set(kind_of.values()), key=kind_order)
    hued = [k for k in kinds if k not in (OTHER_KIND, UNCLUSTERED)]
    hues = {k: to_rgb(plt.get_cmap("tab10")(_KIND_HUES[i % len(_KIND_HUES)]))
            for i, k in enumerate(hued)}
    hues |= {OTHER_KIND: to_rgb("tab:gray"), UNCLUSTERED: to_rgb("lightgrey")}
    order, colours = [], {}
    for kind in kinds:
        mine = sorted(label for label, k in kind_of.items() if k == kind)
        for i, label in enumerate(mine):
            paler = 0.6 * i / max(len(mine) - 1, 1)
            colours[label] = tuple(c + (1 - c) * paler for c in hues[kind])
            order.append(label)
    return order, colours, {k: hues[k] for k in kinds}


def _stack(ax, positions: np.ndarray, shares: np.ndarray, labels: list[str],
           colours: dict[str, object], horizontal: bool) -> None:
    """Stacked bars of `shares` (bars x labels, fractions) in percent, a white hairline between
    templates."""
    base = np.zeros(len(positions))
    for j, label in enumerate(labels):
        values = 100 * shares[:, j]
        style = {"color": colours[label], "edgecolor": "white", "linewidth": 0.2}
        if horizontal:
            ax.barh(positions, values, left=base, height=0.8, **style)
        else:
            ax.bar(positions, values, bottom=base, width=0.85, **style)
        base += values


def _kind_legend(ax, hues: dict[str, object]) -> None:
    """A legend of the kinds (not the single templates) beside the axes; the figure's
    constrained layout keeps it inside the canvas."""
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=colour, label=kind) for kind, colour in hues.items()],
              fontsize=7, title="kind of pattern\n(shades: its templates)", title_fontsize=7,
              bbox_to_anchor=(1.01, 1), loc="upper left")


def _legend_height(entries: int) -> float:
    """Inches a _kind_legend of `entries` kinds needs, its title and margins included."""
    return 0.6 + 0.17 * entries


def plot_label_shares(family_shares: pa.Table, path: Path) -> Path:
    """Stacked horizontal bars: the mean share of each template label over the models of each
    family and kernel size (FAMILY_LABEL_SHARES rows with their `kind`), kind by kind, so the
    plot keeps its size at any zoo and reads by kind of pattern first."""
    plt = _pyplot()
    rows = family_shares.to_pylist()
    groups = sorted({(r["family"], r["kernel_size"], r["n_models"]) for r in rows},
                    key=lambda g: (g[0], g[1]))
    shown = sorted(sorted(groups, key=lambda g: -g[2])[:MAX_BARS], key=lambda g: (g[0], g[1]))
    names, colours, hues = _kind_colours({r["label"]: r["kind"] for r in rows})
    shares = np.zeros((len(shown), len(names)))
    row_of = {g[:2]: i for i, g in enumerate(shown)}
    for r in rows:
        if (r["family"], r["kernel_size"]) in row_of:
            shares[row_of[r["family"], r["kernel_size"]], names.index(r["label"])] = r["share"]
    height = max(0.26 * len(shown) + 1.6, _legend_height(len(hues)))
    fig, ax = plt.subplots(figsize=(8, min(height, 18)), layout="constrained")
    y = np.arange(len(shown))[::-1]
    _stack(ax, y, shares, names, colours, horizontal=True)
    ax.set_yticks(y, [f"{f} {k}x{k} ({n})" for f, k, n in shown], fontsize=7)
    ax.set_xlabel("valid kernels (%), mean over the models of the group")
    ax.set_xlim(0, 100)
    more = f"; the {MAX_BARS} largest of {len(groups)} groups" if len(groups) > len(shown) else ""
    ax.set_title(f"Kinds of pattern per model family and kernel size (models in brackets{more})",
                 fontsize=9)
    _kind_legend(ax, hues)
    return _save(fig, path)


PER_MODEL_LINES_UP_TO = 20  # more models than this: the family bands alone


def plot_fraction_vs_depth(layers: pa.Table, path: Path, bins: int = 10) -> Path:
    """Clustered fraction of each depthwise layer against its relative depth, per family: the
    mean over the family's layers in each depth bin; in a small zoo, one faint line per model
    as well (a zoo's spread is in the page's per-model layer tables)."""
    plt = _pyplot()
    rows = [r for r in layers.to_pylist() if r["clustered_fraction"] is not None]
    groups = family_groups([r["family"] for r in {r["model_id"]: r for r in rows}.values()])
    colours = _group_colours(groups)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    edges = np.linspace(0, 1, bins + 1)
    group = np.array([groups[r["family"] or "unknown"] for r in rows], dtype=object)
    depth = np.array([r["depth"] for r in rows], dtype=float)
    fraction = 100 * np.array([r["clustered_fraction"] for r in rows], dtype=float)
    model = np.array([r["model_id"] for r in rows], dtype=object)
    few = len(set(model.tolist())) <= PER_MODEL_LINES_UP_TO
    which = np.clip(np.digitize(depth, edges) - 1, 0, bins - 1)
    for g in colours:
        mine = group == g
        if not mine.any():
            continue
        if few:
            for m in sorted(set(model[mine].tolist())):
                own = np.flatnonzero(mine & (model == m))
                own = own[np.argsort(depth[own], kind="stable")]
                ax.plot(depth[own], fraction[own], color=colours[g], alpha=0.25, lw=0.8)
        present = [b for b in range(bins) if (mine & (which == b)).any()]
        centres = [(edges[b] + edges[b + 1]) / 2 for b in present]
        values = [fraction[mine & (which == b)] for b in present]
        ax.plot(centres, [v.mean() for v in values], color=colours[g], lw=2, marker="o", ms=3,
                label=f"{g} ({len(set(model[mine].tolist()))} models)")
    ax.set_xlabel("relative depth of the depthwise layer (0 = first, 1 = last)")
    ax.set_ylabel("clustered kernels (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, 1)
    detail = "; thin: each model" if few else ""
    ax.set_title(f"Clusterability by depth (thick: family mean per depth bin{detail})", fontsize=9)
    if rows:
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_shares(assignments: pa.Table, templates: pa.Table, model_id: str,
                      path: Path) -> Path:
    """Share of each template label in every depthwise layer of one model, layers by depth,
    stacked kind by kind (a hue per kind of pattern, a shade per template)."""
    plt = _pyplot()
    labels = {(r["kernel_size"], r["template_id"]): r["label"] for r in templates.to_pylist()}
    mine = assignments.filter(pc.equal(assignments.column("model_id"), model_id)).to_pylist()
    layers = sorted({(r["layer_index"], r["depth"], r["kernel_size"]) for r in mine})
    names, colours, hues = _kind_colours({**label_kinds(templates), UNCLUSTERED: UNCLUSTERED})
    counts = np.zeros((len(layers), len(names)))
    row_of = {layer[0]: i for i, layer in enumerate(layers)}
    for r in mine:
        if r["invalid_reason"] is not None:
            continue
        name = (UNCLUSTERED if r["template_id"] is None
                else labels[r["kernel_size"], r["template_id"]])
        counts[row_of[r["layer_index"]], names.index(name)] += 1
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(min(max(6, 0.35 * len(layers) + 3), MAX_WIDTH_PX / DPI),
                                    max(4, _legend_height(len(hues)))), layout="constrained")
    x = np.arange(len(layers))
    _stack(ax, x, shares, names, colours, horizontal=False)
    step = -(-len(layers) // 50)  # at most 50 tick labels, however deep the model
    ax.set_xticks(x[::step], [f"{d:.2f}\n{k}x{k}" for _, d, k in layers[::step]], fontsize=6)
    ax.set_xlabel("relative depth (and kernel size) of each depthwise layer")
    ax.set_ylabel("kernels (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{model_id}: kinds of pattern per layer", fontsize=10)
    _kind_legend(ax, hues)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """PNG bytes written whole, to a local folder or an object store; the dpi drops below DPI
    where the figure would otherwise come out wider than MAX_WIDTH_PX."""
    from dwscan.io.storage import as_location, write_bytes_atomic

    plt = _pyplot()
    buffer = io.BytesIO()
    width_inches = fig.get_size_inches()[0]
    fig.savefig(buffer, format="png", dpi=min(DPI, math.floor(MAX_WIDTH_PX / width_inches)))
    plt.close(fig)
    path = as_location(path)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def plot_substitution(table: pa.Table, path: Path) -> Path:
    """Top-1 agreement with the unmodified network for each variant, one bar group per model
    (dwscan substitute); the image count is in the title, since every bar is over those images."""
    plt = _pyplot()
    rows = [r for r in table.to_pylist() if r["status"] == "ok"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    models = list(dict.fromkeys(r["model_id"] for r in rows))
    fig, ax = plt.subplots(figsize=(min(20, 3 + 0.45 * len(variants) * max(1, len(models))), 4.5))
    width = 0.8 / max(1, len(models))
    colours = plt.get_cmap("tab10")
    for m, model_id in enumerate(models):
        mine = {r["variant"]: r for r in rows if r["model_id"] == model_id}
        xs = [i + (m - (len(models) - 1) / 2) * width for i, v in enumerate(variants) if v in mine]
        ax.bar(xs, [100 * mine[v]["top1_agreement"] for v in variants if v in mine], width,
               color=colours(m % 10), label=model_id)
    ax.set_xticks(range(len(variants)), variants, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("top-1 agreement with the unmodified model (%)")
    ax.set_ylim(0, 100)
    images = sorted({r["n_images"] for r in rows})
    ax.set_title(f"Kernels swapped for patterns (images per model: "
                 f"{', '.join(map(str, images)) or 'none'})", fontsize=9)
    if models:
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_agreement(agreement: RunAgreement, path: Path,
                   bands: tuple[float, float] = (1.5, 3.0)) -> Path:
    """`dwscan compare`'s picture: each run's clustered fractions and family x polarity shares
    against the first run's (on the diagonal where they agree; `bands`, in points, shaded: issue
    18's bars), and per kernel size the share of each run's clustered kernels whose template
    each other run has."""
    plt = _pyplot()
    matched = agreement.matched_templates.to_pylist()
    sizes = sorted({row["kernel_size"] for row in matched})
    n = len(agreement.runs)
    fig, axes = plt.subplots(1, 2 + len(sizes), figsize=(4.2 * 2 + 3.2 * len(sizes), 4.2),
                             gridspec_kw={"width_ratios": [4.2, 4.2] + [3.2] * len(sizes)})
    colours = plt.get_cmap("tab10")
    for ax, table, band, what in ((axes[0], agreement.fractions, bands[0], "clustered fraction"),
                                  (axes[1], agreement.pattern_shares, bands[1],
                                   "family x polarity share")):
        values = 100 * np.array(table.column("values").to_pylist(), float).reshape(-1, n)
        top = float(values.max()) * 1.05 if values.size else 100.0
        ax.plot([0, top], [0, top], color="0.3", lw=0.8)
        ax.fill_between([0, top], [-band, top - band], [band, top + band], color="0.85",
                        label=f"within {band:g} points")
        for run in range(1, n):
            ax.scatter(values[:, 0], values[:, run], s=14, color=colours((run - 1) % 10),
                       label=f"run {run}")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel=f"run 0: {what} (%)",
               ylabel=f"other runs: {what} (%)")
        ax.set_title(f"{what}, per model and size ({len(values)})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    for ax, k in zip(axes[2:], sizes):
        grid = np.full((n, n), np.nan)
        for row in matched:
            if row["kernel_size"] == k:
                grid[row["run"], row["other_run"]] = 100 * row["matched_share"]
        ax.imshow(grid, vmin=50, vmax=100, cmap="viridis")
        for (a, b), share in np.ndenumerate(grid):
            if not np.isnan(share):
                ax.text(b, a, f"{share:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if share < 80 else "black")
        ax.set_xticks(range(n), [str(i) for i in range(n)])
        ax.set_yticks(range(n), [str(i) for i in range(n)])
        ax.set(xlabel="other run", ylabel="run")
        ax.set_title(f"{k}x{k}: % of the run's clustered kernels\nwhose template the other "
                     f"run has (cos >= {agreement.match_cosine:g})", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
