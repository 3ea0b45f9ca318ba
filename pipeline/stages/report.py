"""Stage 6: every analyst table, plot and the index page under OUT/reports/.

It reads only what OUT holds (models, templates, assignments, template_set.json), so
`dwscan report` can rebuild the reports at any time, for example with another accuracy table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from dwscan import schemas
from dwscan.io.accuracy import (
    AccuracyTables,
    accuracy_rows_table,
    model_metadata_table,
    read_accuracy_tables,
    remember_sources,
    remembered_sources,
)
from dwscan.io.catalogue import ok_model_ids
from dwscan.io.storage import OutputLayout, read_table_as, read_tables, write_table
from dwscan.io.template_index import chance_clustered_fraction, template_indexes
from dwscan.io.template_set import (
    TemplateSetRecord,
    read_seed_templates,
    read_template_set_record,
    template_set_of,
)
from dwscan.reports.page import (
    DetailTable,
    ExplorerColumn,
    family_kind_shares_html,
    html_table,
    model_explorer_html,
    number,
    percent,
    write_index_html,
)
from dwscan.reports.patterns import label_kinds, labels_with_kind, pattern_kinds, with_kind
from dwscan.reports.plots import (
    plot_clusterability_vs_top1,
    plot_fraction_vs_depth,
    plot_label_shares,
    plot_layer_shares,
    plot_template_gallery,
)
from dwscan.reports.statistics import correlation_table
from dwscan.reports.tables import (
    PatternCounts,
    clusterability_table,
    family_label_shares,
    label_shares_table,
    layer_clusterability_table,
    pattern_counts,
    pattern_shares_table,
    seeds_by_size,
    threshold_sweep_table,
)


@dataclass
class Reports:
    clusterability: pa.Table
    correlation: pa.Table
    index_html: Path
    pattern_shares: pa.Table  # PATTERN_SHARES: kinds of pattern per model and over the zoo
    templates: pa.Table  # the templates the report read (the single patterns of each kind)
    layer_share_plots: dict[str, Path] = field(default_factory=dict)  # model id -> its PNG
    unknown_models: list[str] = field(default_factory=list)  # asked for, but not scanned ok


# what the report tables and plots read of ASSIGNMENTS (not channel, nearest template, sign)
_ASSIGNMENT_COLUMNS = ["model_id", "layer", "layer_index", "depth", "kernel_size", "template_id",
                       "cosine", "invalid_reason", "family_cosine", "master_key",
                       "master_key_cosine", "seed_template_ids"]


def write_reports(layout: OutputLayout, accuracy: AccuracyTables | None = None,
                  accuracy_csv: str | None = None, pretrain_csv: str | None = None,
                  seed: int = 0, show_models: Sequence[str] = ()) -> Reports:
    """Every table, plot and index.html from OUT; accuracy from `accuracy` or the two sources
    (a source left out: what OUT's last report read, else timm's, as `dwscan report` does).

    Plots cover the zoo, not each model: a model's layer-share plot and its own section of the
    page are drawn only for the `show_models` (`dwscan report --model ID`), which the scatter
    also names. A name that is not a scanned model is skipped and returned in unknown_models."""
    models = read_table_as(layout.models_path, schemas.MODELS)
    templates = read_table_as(layout.templates_path, schemas.TEMPLATES)
    record = read_template_set_record(layout.template_set_path)
    missed = (read_table_as(layout.missed_patterns_path, schemas.MISSED_PATTERNS)
              if layout.missed_patterns_path.exists() else None)
    ok = ok_model_ids(models)
    if accuracy is None:
        accuracy = read_accuracy_tables(*remembered_sources(layout.accuracy_sources_path,
                                                            accuracy_csv, pretrain_csv))
    scanned = models.filter(pc.is_in(models.column("model_id"), pa.array(ok, pa.string())))
    metadata = model_metadata_table(scanned, accuracy)
    chance = {k: chance_clustered_fraction(index, record.threshold, seed=seed)
              for k, index in template_indexes(templates, record.sign_invariant).items()}
    tables = {
        schemas.MODEL_METADATA: metadata,
        schemas.ACCURACY: accuracy_rows_table(scanned, accuracy),
        **per_model_tables(layout, ok, templates, record, chance, metadata),
    }
    tables[schemas.CORRELATION] = correlation_table(tables[schemas.CLUSTERABILITY], seed=seed)
    for schema, table in tables.items():
        write_table(table, layout.table_path(schema), schema)
    remember_sources(layout.accuracy_sources_path, accuracy.sources)
    shown = [m for m in dict.fromkeys(show_models) if m in set(ok)]
    plots = {m: plot_layer_shares(_read_assignments(layout, [m]), templates, m,
                                  layout.layer_shares_plot_path(m))
             for m in shown}
    sections = _page_sections(layout, tables, templates, missed, record, plots)
    sections += _kept_scans_section(models)
    about = (f"{len(ok)} models; template set {record.template_set} ({record.method}, cosine "
             f">= {record.threshold:g}{', sign-invariant' if record.sign_invariant else ''}); "
             f"accuracy from {accuracy.sources[0]}, pre-training from {accuracy.sources[1]}.")
    return Reports(tables[schemas.CLUSTERABILITY], tables[schemas.CORRELATION],
                   write_index_html(layout.reports_dir, sections, about),
                   tables[schemas.PATTERN_SHARES], templates, plots,
                   [m for m in dict.fromkeys(show_models) if m not in set(ok)])


# Models whose assignments the report holds at once. Its tables are per-model aggregates, so
# building them a batch at a time gives the same rows while the driver holds 100 models' rows,
# not the zoo's (1,000 models: 4.6M rows and 1.8 GB at the report's peak; BENCHMARKS.md, "zoo").
MODELS_PER_BATCH = 100


def per_model_tables(layout: OutputLayout, ok: list[str], templates: pa.Table,
                     record: TemplateSetRecord, chance: dict[int, float],
                     metadata: pa.Table) -> dict[pa.Schema, pa.Table]:
    """CLUSTERABILITY, LAYERS, LABEL_SHARES, THRESHOLD_SWEEP and PATTERN_SHARES of the `ok`
    models, built over
    batches of MODELS_PER_BATCH models in model-id order (each table is sorted by model id, so
    the batches' rows concatenate in the order one pass over every model would give)."""
    ordered = sorted(ok)
    batches = [ordered[i:i + MODELS_PER_BATCH]
               for i in range(0, len(ordered), MODELS_PER_BATCH)] or [[]]
    parts: dict[pa.Schema, list[pa.Table]] = {schemas.CLUSTERABILITY: [], schemas.LAYERS: [],
                                              schemas.LABEL_SHARES: [], schemas.THRESHOLD_SWEEP: []}
    patterns: PatternCounts = {}
    seed_templates = read_seed_templates(layout, template_set_of(templates))
    seed_lists = seeds_by_size(seed_templates)
    for batch in batches:
        assignments = _read_assignments(layout, batch)
        patterns.update(pattern_counts(assignments, templates, seed_templates))
        parts[schemas.CLUSTERABILITY].append(clusterability_table(
            assignments, record.threshold, chance, metadata, record.sign_invariant,
            template_set_of(templates), seed_lists))
        parts[schemas.LAYERS].append(layer_clusterability_table(assignments, metadata))
        parts[schemas.LABEL_SHARES].append(label_shares_table(assignments, templates, metadata))
        parts[schemas.THRESHOLD_SWEEP].append(threshold_sweep_table(assignments))
    return {**{schema: pa.concat_tables(tables) for schema, tables in parts.items()},
            schemas.PATTERN_SHARES: pattern_shares_table(patterns)}


def _read_assignments(layout: OutputLayout, model_ids: list[str]) -> pa.Table:
    return read_tables([layout.assignments_path(m) for m in model_ids], schemas.ASSIGNMENTS,
                       columns=_ASSIGNMENT_COLUMNS)


def _page_sections(layout: OutputLayout, tables: dict[pa.Schema, pa.Table], templates: pa.Table,
                   missed: pa.Table | None, record: TemplateSetRecord,
                   plots: dict[str, Path]) -> list[tuple[str, str, list[Path], str]]:
    """The plots (drawn here) and tables of index.html, section by section."""
    reports = layout.reports_dir
    clusterability = tables[schemas.CLUSTERABILITY]
    kinds = label_kinds(templates)
    labels = family_label_shares(tables[schemas.LABEL_SHARES])
    family_shares = labels_with_kind(labels, kinds, ["family", "kernel_size", "kind", "label"])
    patterns = tables[schemas.PATTERN_SHARES]
    zoo_patterns = patterns.filter(pc.is_null(patterns.column("model_id")))
    zoo_patterns = with_kind(zoo_patterns, pattern_kinds(zoo_patterns), ["kernel_size", "kind"])
    sizes = sorted(set(templates.column("kernel_size").to_pylist()))
    sections = [
        ("Kinds of pattern over the zoo",
         "The first grouping of this page: a template's kind is its family x polarity (its "
         "fitted parametric family, METHOD.md section 4). Share of the valid kernels of each "
         "size on a template of each kind: with three seeds or more the median over the seeds "
         "of their own named template sets' share, and its lowest and highest beside it: how "
         "far one autoencoder's answer could have been (kernels: on a consensus template of "
         "the kind; share_consensus in pattern_shares.parquet is their share). "
         "The single templates are beneath: per model family below, in each model's details, "
         "and in the template galleries.", [],
         html_table(zoo_patterns, [
             ("kernel_size", "k", None), ("kind", "kind of pattern", None),
             ("share", "share", percent), ("share_seed_min", "seed low", percent),
             ("share_seed_max", "seed high", percent), ("n_kernels", "kernels", None)])),
        ("Kinds of pattern per model family and kernel size",
         "Each kind's share of the valid kernels, averaged over the models of a model family and "
         "kernel size (every model counts once); in the plot each kind is a hue and its single "
         "templates are shades of it. The single templates' shares are in the collapsed table "
         "below, and each model's own in its details.",
         [plot_label_shares(family_shares, reports / "label_shares.png")],
         family_kind_shares_html(family_shares)),
        ("Models",
         f"Every scanned model, all kernel sizes together; clustered = kernels within cosine "
         f"{record.threshold:g} of a template: with three seeds or more the median over the "
         "seeds of their own template sets' share, their lowest and highest beside it (the "
         "consensus templates' own share: clustered_fraction_consensus in clusterability.parquet); "
         "chance = random Gaussian kernels against the consensus templates; families and master "
         "keys = the training-free yardstick (kernels within "
         "that cosine of some member of the parametric families, and at 7x7 of the best fit "
         "a*F + b to one of the eight master-key filters), which no seed moves. Click a heading "
         "to sort (again to reverse); filter by family, pre-training data, kernel size or a "
         "search; a model's link opens its kernel sizes, kinds of pattern, layers, single "
         "template shares and accuracy rows below the table.", [],
         _model_explorer(tables, kinds, plots)),
        ("Clustered fraction against ImageNet top-1",
         "Each point is a model (all kernel sizes). Spearman and Pearson correlations over models, "
         "with bootstrap 95% intervals (models resampled); group rows compare each pre-training "
         "set's mean clustered fraction with in1k's.",
         [plot_clusterability_vs_top1(clusterability, reports / "clusterability_vs_top1.png",
                                      named=tuple(plots))],
         html_table(tables[schemas.CORRELATION], [
             ("statistic", "statistic", None), ("scope", "scope", None),
             ("kernel_size", "k", None), ("n", "models", None),
             ("n_reference", "in1k models", None), ("estimate", "estimate", number(3)),
             ("estimate_seed_min", "seed low", number(3)),
             ("estimate_seed_max", "seed high", number(3)),
             ("ci_low", "95% low", number(3)), ("ci_high", "95% high", number(3)),
             ("note", "note", None)])),
        ("Clusterability by depth", "", [plot_fraction_vs_depth(
            tables[schemas.LAYERS], reports / "clusterability_vs_depth.png")], ""),
        ("Templates", "The templates of each kernel size beside their fitted family members, "
         "with the share of clustered kernels nearest to each and how many of the seeds found "
         "it (the templates are the seeds' consensus).",
         [plot_template_gallery(templates, k, reports / f"templates_k{k}.png") for k in sizes],
         ""),
    ]
    for model_id, plot in plots.items():
        mine = clusterability.filter(pc.equal(clusterability.column("model_id"), model_id))
        sections.append((f"Model {model_id}", "Kinds of pattern in each depthwise layer, layers "
                         "by depth, each kind's single templates in shades of its hue (drawn "
                         "because the report was asked for this model).", [plot],
                         html_table(mine, _SIZE_COLUMNS_STATIC)))
    substitution = layout.table_path(schemas.SUBSTITUTION)
    if substitution.exists() and (reports / "substitution.png").exists():
        sections.append(("What the patterns do (dwscan substitute)",
                         "Top-1 agreement with the unmodified network when kernels are swapped "
                         "for their templates and controls; n_images in every row (METHOD.md "
                         "section 8).", [reports / "substitution.png"],
                         html_table(read_table_as(substitution, schemas.SUBSTITUTION), [
                             ("model_id", "model", None), ("variant", "variant", None),
                             ("status", "status", None), ("n_replaced", "replaced", None),
                             ("replaced_fraction", "share", percent),
                             ("n_images", "images", None),
                             ("top1_agreement", "agreement", number(3)),
                             ("mean_kl", "mean KL", number(4))])))
    if missed is not None and missed.num_rows:
        sections.append(("Missed patterns", "Recurring patterns that no template reaches.", [],
                         html_table(missed, [("kernel_size", "k", None),
                                             ("share", "share", percent), ("label", "label", None),
                                             ("fit_cosine", "fit cosine", number(2))])))
    return sections


def _kept_scans_section(models: pa.Table) -> list[tuple[str, str, list[Path], str]]:
    """The page's note on models whose latest scan failed: their figures are from the last good
    scan, kept (none: no section)."""
    kept = models.filter(pc.is_valid(models.column("last_error")))
    if not kept.num_rows:
        return []
    return [("Models whose latest scan failed",
             "Their latest scan failed, so everything on this page about them is from their last "
             "good scan, kept as it was; the next successful scan replaces it.", [],
             html_table(kept, [("model_id", "model", None),
                               ("scanned_at", "data from the scan of", _utc_minute),
                               ("last_attempt_at", "failed scan", _utc_minute),
                               ("last_error", "why it failed", None)]))]


def _utc_minute(value) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M} UTC"


_SIZE_COLUMNS_STATIC = [("kernel_size", "k (blank: all)", None), ("n_filters", "filters", None),
                        ("n_invalid", "invalid", None), ("n_clustered", "clustered", None),
                        ("clustered_fraction", "clustered (%)", percent),
                        ("clustered_fraction_seed_min", "seed low", percent),
                        ("clustered_fraction_seed_max", "seed high", percent),
                        ("family_fraction", "families", percent),
                        ("master_key_fraction", "master keys", percent),
                        ("chance_fraction", "chance", percent), ("top1", "top-1", number(2))]

_MODEL_COLUMNS: list[ExplorerColumn] = [
    ("model_id", "model", "text"), ("family", "family", "text"),
    ("pretrain", "pre-training", "text"), ("kernel_sizes", "kernel sizes", "sizes"),
    ("n_filters", "filters", "int"), ("n_invalid", "invalid", "int"),
    ("clustered_fraction", "clustered", "pct"), ("clustered_fraction_seed_min", "seed low", "pct"),
    ("clustered_fraction_seed_max", "seed high", "pct"), ("family_fraction", "families", "pct"),
    ("master_key_fraction", "master keys", "pct"), ("chance_fraction", "chance", "pct"),
    ("top1", "top-1", "num2"), ("top5", "top-5", "num2"), ("param_count_m", "params (M)", "num2"),
    ("accuracy_key", "timm key", "hidden")]

_DETAIL_COLUMNS: dict[pa.Schema, tuple[str, list[ExplorerColumn]]] = {
    schemas.CLUSTERABILITY: ("Clusterability per kernel size", [
        ("kernel_size", "k", "k"), ("n_filters", "filters", "int"), ("n_invalid", "invalid", "int"),
        ("n_clustered", "clustered", "int"), ("clustered_fraction", "clustered (%)", "pct"),
        ("clustered_fraction_seed_min", "seed low", "pct"),
        ("clustered_fraction_seed_max", "seed high", "pct"),
        ("family_fraction", "families", "pct"), ("master_key_fraction", "master keys", "pct"),
        ("chance_fraction", "chance", "pct")]),
    schemas.PATTERN_SHARES: ("Kinds of pattern per kernel size", [
        ("kernel_size", "k", "k"), ("kind", "kind of pattern", "text"),
        ("n_kernels", "kernels", "int"), ("share", "share", "pct"),
        ("share_seed_min", "seed low", "pct"), ("share_seed_max", "seed high", "pct")]),
    schemas.LAYERS: ("Depthwise layers", [
        ("layer_index", "#", "int"), ("layer", "layer", "text"), ("depth", "depth", "num2"),
        ("kernel_size", "k", "k"), ("n_filters", "filters", "int"),
        ("n_invalid", "invalid", "int"), ("n_clustered", "clustered", "int"),
        ("clustered_fraction", "clustered (%)", "pct")]),
    schemas.LABEL_SHARES: ("Template label shares, by kind", [
        ("kernel_size", "k", "k"), ("kind", "kind of pattern", "text"),
        ("label", "template", "text"), ("n_kernels", "kernels", "int"),
        ("share", "share", "pct")]),
    schemas.ACCURACY: ("Accuracy rows (timm, every image size)", [
        ("img_size", "image size", "int"), ("top1", "top-1", "num3"), ("top5", "top-5", "num3"),
        ("param_count_m", "params (M)", "num2"), ("crop_pct", "crop", "num3"),
        ("interpolation", "interpolation", "text")]),
}


def _model_explorer(tables: dict[pa.Schema, pa.Table], kinds: dict[str, str],
                    plots: dict[str, Path]) -> str:
    """The Models section: one row per model (its all-sizes clusterability row), and each model's
    rows of the per-size, kinds-of-pattern, layer, label-share and accuracy tables for its
    details; kinds before single labels, and the labels sorted by kind."""
    rows = _rows_by_model(tables[schemas.CLUSTERABILITY])
    models = []
    for mine in rows.values():
        overall = next(r for r in mine if r["kernel_size"] is None)
        models.append({**overall, "kernel_sizes": [r["kernel_size"] for r in mine
                                                   if r["kernel_size"] is not None]})
    patterns = tables[schemas.PATTERN_SHARES].filter(
        pc.is_valid(tables[schemas.PATTERN_SHARES].column("model_id")))
    shown = {
        **tables,
        schemas.PATTERN_SHARES: with_kind(patterns, pattern_kinds(patterns),
                                          ["model_id", "kernel_size", "kind"]),
        schemas.LABEL_SHARES: labels_with_kind(tables[schemas.LABEL_SHARES], kinds,
                                               ["model_id", "kernel_size", "kind", "label"])}
    details = [DetailTable(title, columns, {m: [r for r in mine if r["kernel_size"] is not None]
                                            for m, mine in rows.items()}
                           if schema is schemas.CLUSTERABILITY else _rows_by_model(shown[schema]))
               for schema, (title, columns) in _DETAIL_COLUMNS.items()]
    return model_explorer_html(_MODEL_COLUMNS, models, details,
                               {m: Path(str(p)).name for m, p in plots.items()})


def _rows_by_model(table: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault(row["model_id"], []).append(row)
    return out
