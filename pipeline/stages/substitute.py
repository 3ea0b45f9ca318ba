"""Stage 7: what the patterns do. Each model is rebuilt, its depthwise kernels are swapped for
patterns (its templates, their fitted family members, ...), and the swapped network is compared
with the unmodified one on images: top-1 agreement, mean KL divergence, and top-1 accuracy on a
labelled folder. One Ray task per model (`measure_model`); METHOD.md section 8 says what the
measure shows and what it does not.

It reads what OUT holds (models, templates, assignments, template_set.json) and the whole
checkpoint of each model (not only its depthwise tensors); it writes only
reports/substitution.parquet (rows of the measured models replaced, the others kept) and
reports/substitution.png, each whole.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dwscan import schemas
from dwscan.executor import ray_executor
from dwscan.io.catalogue import ok_model_ids
from dwscan.io.checkpoints import CheckpointError
from dwscan.io.images import ImageSet, ImageSetError, batches, load_image_set
from dwscan.io.networks import ArchitectureError, Network, rebuild
from dwscan.io.storage import OutputLayout, read_table_as, read_tables, write_table
from dwscan.io.template_set import read_template_set_record
from dwscan.method import substitution as sub
from dwscan.method.families import (
    MASTER_KEY_SIZE,
    default_master_key_filters,
    read_master_key_filters,
)
from dwscan.text import one_line

SWEEP_THRESHOLDS = (0.8, 0.9, 0.95)
SCOPES = {"early": (0.0, 1 / 3), "middle": (1 / 3, 2 / 3), "late": (2 / 3, 1.01)}
_ASSIGNMENT_COLUMNS = ["layer", "channel", "depth", "kernel_size", "template_id",
                       "nearest_template_id", "cosine", "template_set"]


@dataclass
class KernelRows:
    """A model's depthwise kernels, one entry per assignment row: where it sits, what it was
    assigned, and (per kernel size) its weights as the rebuilt network holds them."""

    layer: np.ndarray  # checkpoint key of the depthwise weight
    channel: np.ndarray
    kernel_size: np.ndarray
    depth: np.ndarray
    template_id: np.ndarray  # -1: not clustered at OUT's threshold (or invalid)
    nearest: np.ndarray  # -1: invalid
    cosine: np.ndarray  # nan: invalid
    weights: dict[int, np.ndarray] = field(default_factory=dict)  # k -> (rows of size k, k*k)

    def rows_of(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.kernel_size == k)


@dataclass
class Variant:
    """One swapped network: which kernels are replaced and by what; skipped with a reason."""

    name: str
    kind: str
    threshold: float | None = None
    scope: str = "all"
    replaced: np.ndarray | None = None  # bool per kernel row; None when skipped
    weights: dict[int, np.ndarray] = field(default_factory=dict)  # k -> new rows of size k
    reason: str | None = None

    @property
    def n_replaced(self) -> int:
        return 0 if self.replaced is None else int(self.replaced.sum())


def kernel_rows(assignments: pa.Table, layer_weights: dict[str, np.ndarray]) -> KernelRows:
    """KernelRows of an assignment table, weights taken from `layer_weights` (checkpoint key ->
    (channels, 1, k, k) array of the rebuilt network)."""
    def column(name: str, fill) -> np.ndarray:
        return np.asarray(pc.fill_null(assignments.column(name), fill).to_numpy(zero_copy_only=False))

    rows = KernelRows(
        layer=np.asarray(assignments.column("layer").to_pylist(), dtype=object),
        channel=column("channel", 0).astype(np.int64),
        kernel_size=column("kernel_size", 0).astype(np.int64),
        depth=column("depth", 0.0).astype(np.float64),
        template_id=column("template_id", -1).astype(np.int64),
        nearest=column("nearest_template_id", -1).astype(np.int64),
        cosine=column("cosine", np.nan).astype(np.float64))
    for k in np.unique(rows.kernel_size):
        idx = rows.rows_of(int(k))
        rows.weights[int(k)] = np.stack([
            np.asarray(layer_weights[rows.layer[i]], np.float64).reshape(
                -1, int(k) * int(k))[rows.channel[i]] for i in idx])
    return rows


def template_matrices(templates: pa.Table, column: str = "weights") -> dict[int, np.ndarray]:
    """k -> (templates of size k in template_id order, k*k) from TEMPLATES `column`."""
    out = {}
    for row in sorted(templates.select(["kernel_size", "template_id", column]).to_pylist(),
                      key=lambda r: (r["kernel_size"], r["template_id"])):
        out.setdefault(row["kernel_size"], []).append(row[column])
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _replace(rows: KernelRows, mask: np.ndarray,
             new_rows: Callable[[int, np.ndarray, np.ndarray], np.ndarray]) -> dict[int, np.ndarray]:
    """Per kernel size, the weights with the masked rows replaced by new_rows(k, kernels, which),
    `which` the masked rows' positions among the size's rows."""
    out = {}
    for k, weights in rows.weights.items():
        which = np.flatnonzero(mask[rows.rows_of(k)])
        new = weights.copy()
        if len(which):
            new[which] = new_rows(k, weights[which], which)
        out[k] = new
    return out


def build_variants(rows: KernelRows, templates: pa.Table, threshold: float,
                   sign_invariant: bool = False, master_keys: np.ndarray | None = None,
                   master_key_reason: str | None = None, seed: int = 0) -> list[Variant]:
    """Every variant of one model, in the order of the table (METHOD.md section 8)."""
    rng = np.random.default_rng(seed)
    patterns = template_matrices(templates)
    members = template_matrices(templates, "fit_weights")
    clustered = rows.template_id >= 0

    def of_size(k: int, column: np.ndarray) -> np.ndarray:
        return column[rows.rows_of(k)]

    def with_templates(mask: np.ndarray) -> dict[int, np.ndarray]:
        return _replace(rows, mask, lambda k, kern, which: sub.fitted(
            kern, patterns[k][of_size(k, rows.nearest)[which]]))

    def templates_variant(name: str, t: float, scope: str = "all") -> Variant:
        low, high = SCOPES.get(scope, (0.0, 2.0))
        mask = ((rows.nearest >= 0) & (rows.cosine >= t) & (rows.depth >= low)
                & (rows.depth < high))
        if t == threshold:
            mask &= clustered  # exactly the kernels OUT's assignment counts
        return Variant(name, "templates", t, scope, mask, with_templates(mask))

    def shuffled(k: int, kern: np.ndarray, which: np.ndarray) -> np.ndarray:
        own = of_size(k, rows.nearest)[which]
        a, b = sub.affine_fit(kern, patterns[k][own])
        other = sub.other_index(own, len(patterns[k]), rng)
        new = sub.affine(patterns[k][np.maximum(other, 0)], a, b)
        return np.where((other >= 0)[:, None], new, kern)

    everything = np.ones(len(rows.layer), bool)
    variants = [Variant("identity", "identity", None, "all", everything,
                        _replace(rows, everything, lambda k, kern, which: sub.fitted(kern, kern))),
                templates_variant("templates", threshold)]
    variants.append(Variant("families", "families", threshold, "all", clustered, _replace(
        rows, clustered, lambda k, kern, which: sub.fitted(
            kern, members[k][sub.nearest_pattern(kern, members[k], sign_invariant)]))))
    variants.append(_master_keys_variant(rows, clustered, threshold, master_keys,
                                         master_key_reason, sign_invariant))
    single = [k for k, p in patterns.items() if len(p) < 2]
    shuffle_mask = clustered & ~np.isin(rows.kernel_size, single)
    variants.append(Variant("shuffled-templates", "shuffled-templates", threshold, "all",
                            shuffle_mask, _replace(rows, clustered, shuffled)))
    variants.append(Variant("noise", "noise", threshold, "all", clustered, _replace(
        rows, clustered, lambda k, kern, which: sub.gaussian_like(kern, rng))))
    variants += [templates_variant(f"templates>={t:g}", t) for t in SWEEP_THRESHOLDS]
    variants += [templates_variant(f"templates:{scope}", threshold, scope) for scope in SCOPES]
    return variants


def _master_keys_variant(rows: KernelRows, clustered: np.ndarray, threshold: float,
                         filters: np.ndarray | None, reason: str | None,
                         sign_invariant: bool) -> Variant:
    """Clustered 7x7 kernels -> their nearest master-key filter; skipped when the filter file is
    unusable (`reason`) or without clustered 7x7 kernels."""
    variant = Variant("master-keys", "master-keys", threshold)
    mask = clustered & (rows.kernel_size == MASTER_KEY_SIZE)
    if filters is None:
        variant.reason = reason
    elif not mask.any():
        variant.reason = f"no clustered {MASTER_KEY_SIZE}x{MASTER_KEY_SIZE} kernels"
    else:
        variant.replaced = mask
        variant.weights = _replace(rows, mask, lambda k, kern, which: sub.fitted(
            kern, filters[sub.nearest_pattern(kern, filters, sign_invariant)]))
    return variant


def master_key_filters() -> tuple[np.ndarray | None, str | None]:
    """The master-key filters (the shipped file, or $DWSCAN_MASTER_KEY_FILTERS), or (None, why
    that file cannot be used)."""
    try:
        return read_master_key_filters(default_master_key_filters()), None
    except (OSError, ValueError) as error:
        return None, f"master-key filter file unusable: {one_line(error, 200)}"


# ---- running the swapped networks ----

def depthwise_parameters(network: Network, layers: Sequence[str]) -> dict[str, object]:
    """Checkpoint key -> the model's weight tensor for each depthwise layer."""
    params = dict(network.model.named_parameters())
    missing = [layer for layer in layers if network.key_map.get(layer, layer) not in params]
    if missing:
        raise ArchitectureError(f"the rebuilt {network.architecture} has no weight for "
                                f"depthwise layer {missing[0]} (and {len(missing) - 1} more)")
    return {layer: params[network.key_map.get(layer, layer)] for layer in layers}


def variant_tensors(rows: KernelRows, variant: Variant, originals: dict[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
    """Checkpoint key -> the layer's whole weight array under `variant` (changed layers only)."""
    out: dict[str, np.ndarray] = {}
    for k, weights in variant.weights.items():
        idx = rows.rows_of(k)
        changed = variant.replaced[idx]
        for position in np.flatnonzero(changed):
            i = idx[position]
            layer = rows.layer[i]
            if layer not in out:
                out[layer] = originals[layer].copy()
            out[layer].reshape(-1, k * k)[rows.channel[i]] = weights[position]
    return out


@dataclass
class Measures:
    n_images: int = 0
    agree: int = 0
    kl_sum: float = 0.0
    correct: int = 0


def measure_variants(network: Network, rows: KernelRows, variants: list[Variant],
                     images: ImageSet, device: str = "cpu", batch_size: int = 32
                     ) -> tuple[Measures, dict[str, Measures]]:
    """Run every image through the unmodified network and each measurable variant, batch by
    batch (each image is read once); the weights are put back afterwards."""
    import torch

    model = network.model.to(device)
    params = depthwise_parameters(network, sorted(set(rows.layer.tolist())))
    originals = {layer: p.detach().cpu().numpy().copy() for layer, p in params.items()}
    swaps = {v.name: {layer: torch.from_numpy(w.astype(np.float32)).to(device)
                      for layer, w in variant_tensors(rows, v, originals).items()}
             for v in variants if v.replaced is not None}
    base_weights = {layer: torch.from_numpy(w).to(device) for layer, w in originals.items()}
    baseline = Measures()
    results = {name: Measures() for name in swaps}
    try:
        with torch.no_grad():
            for x, labels in batches(images, network.data_config, batch_size):
                x = x.to(device)
                base = model(x).float().log_softmax(-1)
                base_top = base.argmax(-1).cpu()
                baseline.n_images += len(x)
                if labels is not None:
                    baseline.correct += int((base_top == labels).sum())
                for name, swap in swaps.items():
                    for layer, tensor in swap.items():
                        params[layer].copy_(tensor.view_as(params[layer]))
                    logp = model(x).float().log_softmax(-1)
                    for layer in swap:
                        params[layer].copy_(base_weights[layer].view_as(params[layer]))
                    top = logp.argmax(-1).cpu()
                    m = results[name]
                    m.n_images += len(x)
                    m.agree += int((top == base_top).sum())
                    m.kl_sum += float((base.exp() * (base - logp)).sum(-1).clamp_min(0).sum())
                    if labels is not None:
                        m.correct += int((top == labels).sum())
    finally:
        with torch.no_grad():
            for layer, tensor in base_weights.items():
                params[layer].copy_(tensor.view_as(params[layer]))
    return baseline, results


def variant_rows(model_id: str, rows: KernelRows, variants: list[Variant], baseline: Measures,
                 results: dict[str, Measures], labelled: bool, common: dict) -> list[dict]:
    """SUBSTITUTION rows of one measured model."""
    n_kernels = len(rows.layer)
    out = []
    for v in variants:
        m = results.get(v.name)
        row = {**common, "model_id": model_id, "variant": v.name, "kind": v.kind,
               "threshold": v.threshold, "scope": v.scope, "n_kernels": n_kernels,
               "n_images": baseline.n_images, "status": "ok" if m else "skipped",
               "reason": v.reason}
        if m:
            row.update(n_replaced=v.n_replaced,
                       replaced_fraction=v.n_replaced / n_kernels if n_kernels else None,
                       top1_agreement=m.agree / m.n_images if m.n_images else None,
                       mean_kl=m.kl_sum / m.n_images if m.n_images else None)
            if labelled and m.n_images:
                row.update(top1_accuracy=m.correct / m.n_images,
                           baseline_top1_accuracy=baseline.correct / baseline.n_images)
        out.append(row)
    return out


def failed_row(model_id: str, reason: str, status: str = "failed", n_images: int = 0) -> dict:
    return {"model_id": model_id, "variant": None, "status": status,
            "reason": one_line(reason, 300), "n_images": n_images, "measured_at": now_utc()}


def measure_model(model: dict, out: str, images_dir: str | None = None,
                  arch: str | None = None, seed: int = 0) -> list[dict]:
    """One model, in its own Ray task: rebuild it, build its variants from OUT's assignment and
    templates, run them on the images (on CUDA when the task has a GPU). A model that cannot be
    read, rebuilt or fed is one 'failed' row with the reason; it never raises for bad input."""
    import torch

    started = time.perf_counter()
    layout = OutputLayout(out)
    model_id = model["model_id"]
    try:
        images = load_image_set(images_dir)
        network = rebuild(model_id, model["source"], model.get("revision"), arch)
        assignments = read_tables([layout.assignments_path(model_id)], schemas.ASSIGNMENTS,
                                  columns=_ASSIGNMENT_COLUMNS)
        params = depthwise_parameters(network, sorted(set(assignments.column("layer").to_pylist())))
        rows = kernel_rows(assignments, {k: p.detach().numpy() for k, p in params.items()})
        record = read_template_set_record(layout.template_set_path)
        templates = read_table_as(layout.templates_path, schemas.TEMPLATES)
        filters, why = master_key_filters()
        variants = build_variants(rows, templates, record.threshold, record.sign_invariant,
                                  filters, why, seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        baseline, results = measure_variants(network, rows, variants, images, device)
    except (CheckpointError, ArchitectureError, ImageSetError) as error:
        return [failed_row(model_id, str(error))]
    common = {"architecture": network.architecture, "image_set": images.description,
              "device": device, "model_seconds": time.perf_counter() - started,
              "template_set": record.template_set, "measured_at": now_utc()}
    return variant_rows(model_id, rows, variants, baseline, results,
                        images.labels is not None, common)


# ---- the stage over OUT ----

@dataclass
class SubstitutionResult:
    table: pa.Table  # this run's rows
    plot: object | None = None  # path of reports/substitution.png


def substitute(layout: OutputLayout, model_ids: Sequence[str] = (), images_dir: str | None = None,
               arch: str | None = None, max_in_flight: int | None = None,
               seed: int = 0) -> SubstitutionResult:
    """Measure the chosen ok models of OUT (all by default), one Ray task each; merge their rows
    into reports/substitution.parquet (other models' rows kept) and redraw the plot."""
    models = read_table_as(layout.models_path, schemas.MODELS)
    ok = ok_model_ids(models)
    chosen = list(dict.fromkeys(model_ids)) or ok
    rows_by_id = {r["model_id"]: r for r in models.to_pylist()}
    runnable = [m for m in chosen if m in ok]
    unknown = [failed_row(m, "not an ok model of this output folder (see models.parquet)",
                          status="skipped") for m in chosen if m not in ok]
    num_gpus = 1 if _cluster_gpus() else 0
    results = ray_executor.run_tasks(
        measure_model, [(rows_by_id[m], str(layout.root), images_dir, arch, seed)
                        for m in runnable],
        desc="substitute", max_in_flight=max_in_flight, num_gpus=num_gpus)
    rows = list(unknown)
    for model_id, result in zip(runnable, results):
        rows += ([failed_row(model_id, f"{type(result).__name__}: {result}")]
                 if isinstance(result, BaseException) else result)
    table = pa.Table.from_pylist(rows, schema=schemas.SUBSTITUTION)
    merged = merge_rows(layout, table)
    from dwscan.reports.plots import plot_substitution

    plot = plot_substitution(merged, layout.reports_dir / "substitution.png")
    return SubstitutionResult(table, plot)


def merge_rows(layout: OutputLayout, table: pa.Table) -> pa.Table:
    """reports/substitution.parquet = earlier rows of other models + `table`, written whole."""
    path = layout.table_path(schemas.SUBSTITUTION)
    earlier = read_table_as(path, schemas.SUBSTITUTION, missing_ok=True)
    keep = pc.invert(pc.is_in(earlier.column("model_id"), table.column("model_id")))
    merged = pa.concat_tables([earlier.filter(keep), table])
    write_table(merged, path, schemas.SUBSTITUTION)
    return merged


def _cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0)


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def format_substitution(table: pa.Table) -> str:
    """The printed table: one line per model and variant measured, numbers with their image
    count; then one line per variant or model that was not measured, with the reason."""
    from dwscan.reports.tables import format_text_table

    rows = table.to_pylist()
    labelled = any(r["top1_accuracy"] is not None for r in rows)
    lines = [["model", "variant", "replaced", "share", "images", "agreement", "mean KL"]
             + (["top-1", "base top-1"] if labelled else [])]
    for r in (r for r in rows if r["status"] == "ok"):
        lines.append([r["model_id"], r["variant"], str(r["n_replaced"]),
                      f"{100 * r['replaced_fraction']:.1f}%", str(r["n_images"]),
                      f"{r['top1_agreement']:.3f}", f"{r['mean_kl']:.4f}"]
                     + ([_fraction(r["top1_accuracy"]), _fraction(r["baseline_top1_accuracy"])]
                        if labelled else []))
    text = format_text_table(lines, left_aligned={0, 1}) if len(lines) > 1 else ""
    others = [f"{r['model_id']} {r['variant'] or ''}".rstrip() + f": {r['status']}: {r['reason']}"
              for r in rows if r["status"] != "ok"]
    return "\n".join([text, *others]).strip("\n")


def summary_lines(table: pa.Table) -> list[str]:
    """One line per model: how its variants compare, with the image count and the time."""
    out = []
    for model_id in dict.fromkeys(table.column("model_id").to_pylist()):
        mine = [r for r in table.to_pylist() if r["model_id"] == model_id]
        ok = {r["variant"]: r for r in mine if r["status"] == "ok"}
        if not ok:
            out.append(f"{model_id}: {mine[0]['status']}: {mine[0]['reason']}")
            continue
        any_row = next(iter(ok.values()))
        parts = [f"{name} {ok[name]['top1_agreement']:.3f}" for name in
                 ("identity", "templates", "families", "shuffled-templates", "noise") if name in ok]
        share = ok.get("templates", any_row)["replaced_fraction"]
        out.append(f"{model_id}: top-1 agreement over {any_row['n_images']} images: "
                   f"{', '.join(parts)} (templates replace {100 * share:.1f}% of the kernels); "
                   f"{any_row['model_seconds']:.1f} s on {any_row['device']}")
    return out


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
