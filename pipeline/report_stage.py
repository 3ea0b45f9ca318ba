"""Stage 6 over files: every analyst table, plot and the index page under OUT/reports/.

It reads only what OUT holds (models, templates, assignments, template_set.json), so
`dwscan report` can rebuild the reports at any time, for example with another accuracy table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

import schemas
from pipeline.accuracy import (
    AccuracyTables,
    accuracy_rows_table,
    model_metadata_table,
    read_accuracy_tables,
)
from pipeline.assign import chance_clustered_fraction, template_set_of
from pipeline.html_report import html_table, label_shares_html, number, percent, write_index_html
from pipeline.plots import (
    plot_clusterability_vs_top1,
    plot_fraction_vs_depth,
    plot_label_shares,
    plot_layer_shares,
    plot_template_gallery,
)
from pipeline.report import (
    clusterability_table,
    label_shares_table,
    layer_clusterability_table,
    threshold_sweep_table,
)
from pipeline.statistics import correlation_table
from pipeline.storage import OutputLayout, read_table_as, read_tables, write_table
from pipeline.template_index import template_indexes
from pipeline.templates import TemplateSetRecord, read_template_set_record


@dataclass
class Reports:
    clusterability: pa.Table
    correlation: pa.Table
    index_html: Path


def ok_model_ids(models: pa.Table) -> list[str]:
    """Models whose kernels are in OUT: scanned without error, at least one depthwise filter."""
    return [r["model_id"] for r in models.to_pylist() if r["status"] == "ok" and r["n_filters"] > 0]


def write_reports(layout: OutputLayout, accuracy: AccuracyTables | None = None,
                  accuracy_csv: str | None = None, pretrain_csv: str | None = None,
                  seed: int = 0) -> Reports:
    """Every table, plot and index.html from OUT; accuracy from `accuracy` or the two sources."""
    models = read_table_as(layout.models_path, schemas.MODELS)
    templates = read_table_as(layout.templates_path, schemas.TEMPLATES)
    record = read_template_set_record(layout.template_set_path)
    missed = (read_table_as(layout.missed_patterns_path, schemas.MISSED_PATTERNS)
              if layout.missed_patterns_path.exists() else None)
    ok = ok_model_ids(models)
    assignments = read_tables([layout.assignments_path(m) for m in ok], schemas.ASSIGNMENTS)
    if accuracy is None:
        accuracy = read_accuracy_tables(accuracy_csv, pretrain_csv)
    scanned = models.filter(pc.is_in(models.column("model_id"), pa.array(ok, pa.string())))
    metadata = model_metadata_table(scanned, accuracy)
    chance = {k: chance_clustered_fraction(index, record.threshold, seed=seed)
              for k, index in template_indexes(templates, record.sign_invariant).items()}
    tables = {
        schemas.MODEL_METADATA: metadata,
        schemas.ACCURACY: accuracy_rows_table(scanned, accuracy),
        schemas.CLUSTERABILITY: clusterability_table(
            assignments, record.threshold, chance, metadata, record.sign_invariant,
            template_set_of(templates)),
        schemas.LAYERS: layer_clusterability_table(assignments, metadata),
        schemas.LABEL_SHARES: label_shares_table(assignments, templates, metadata),
        schemas.THRESHOLD_SWEEP: threshold_sweep_table(assignments),
    }
    tables[schemas.CORRELATION] = correlation_table(tables[schemas.CLUSTERABILITY], seed=seed)
    for schema, table in tables.items():
        write_table(table, layout.table_path(schema), schema)
    sections = _page_sections(layout, tables, templates, assignments, ok, missed, record)
    about = (f"{len(ok)} models; template set {record.template_set} ({record.method}, cosine "
             f">= {record.threshold:g}{', sign-invariant' if record.sign_invariant else ''}); "
             f"accuracy from {accuracy.sources[0]}, pre-training from {accuracy.sources[1]}.")
    return Reports(tables[schemas.CLUSTERABILITY], tables[schemas.CORRELATION],
                   write_index_html(layout.reports_dir, sections, about))


def _page_sections(layout: OutputLayout, tables: dict[pa.Schema, pa.Table], templates: pa.Table,
                   assignments: pa.Table, ok: list[str], missed: pa.Table | None,
                   record: TemplateSetRecord) -> list[tuple[str, str, list[Path], str]]:
    """The plots (drawn here) and tables of index.html, section by section."""
    reports = layout.reports_dir
    clusterability = tables[schemas.CLUSTERABILITY]
    sizes = sorted(set(templates.column("kernel_size").to_pylist()))
    sections = [
        ("Clustered fraction against ImageNet top-1",
         "Each point is a model (all kernel sizes). Spearman and Pearson correlations over models, "
         "with bootstrap 95% intervals (models resampled); group rows compare each pre-training "
         "set's mean clustered fraction with in1k's.",
         [plot_clusterability_vs_top1(clusterability, reports / "clusterability_vs_top1.png")],
         html_table(tables[schemas.CORRELATION], [
             ("statistic", "statistic", None), ("scope", "scope", None),
             ("kernel_size", "k", None), ("n", "models", None),
             ("n_reference", "in1k models", None), ("estimate", "estimate", number(3)),
             ("ci_low", "95% low", number(3)), ("ci_high", "95% high", number(3)),
             ("note", "note", None)])),
        ("Clusterability per model",
         f"Kernels within cosine {record.threshold:g} of a template; chance = random Gaussian "
         "kernels against the same templates.", [],
         html_table(clusterability, [
             ("model_id", "model", None), ("kernel_size", "k", None),
             ("n_filters", "filters", None), ("n_invalid", "invalid", None),
             ("clustered_fraction", "clustered", percent), ("chance_fraction", "chance", percent),
             ("top1", "top-1", number(2)), ("family", "family", None),
             ("pretrain", "pre-training", None), ("param_count_m", "params (M)", number(2))])),
        ("Template labels per model", "",
         [plot_label_shares(tables[schemas.LABEL_SHARES], reports / "label_shares.png")],
         label_shares_html(tables[schemas.LABEL_SHARES])),
        ("Clusterability by depth", "", [plot_fraction_vs_depth(
            tables[schemas.LAYERS], reports / "clusterability_vs_depth.png")], ""),
        ("Templates", "The templates of each kernel size beside their fitted family members, "
         "with the share of clustered kernels nearest to each; * marks a template a second "
         "seed did not reproduce.", [plot_template_gallery(templates, k, reports / f"templates_k{k}.png")
                   for k in sizes], ""),
        ("Template shares per layer", "",
         [plot_layer_shares(assignments, templates, m, layout.layer_shares_plot_path(m))
          for m in ok], ""),
    ]
    if missed is not None and missed.num_rows:
        sections.append(("Missed patterns", "Recurring patterns that no template reaches.", [],
                         html_table(missed, [("kernel_size", "k", None),
                                             ("share", "share", percent), ("label", "label", None),
                                             ("fit_cosine", "fit cosine", number(2))])))
    return sections
