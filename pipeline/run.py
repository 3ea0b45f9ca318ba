"""The whole scan, stage after stage: extract, train, templates, assign, report.

An output folder is a zoo: models scanned by earlier runs into the same `--out` stay in it, and
templates, assignments and reports are rebuilt over every model there whose status is 'ok'.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

import schemas
from pipeline import ray_executor
from pipeline.accuracy import (
    TIMM_PRETRAIN_URL,
    TIMM_RESULTS_URL,
    AccuracyTables,
    accuracy_rows_table,
    model_metadata_table,
    read_accuracy_tables,
)
from pipeline.assign import (
    DEFAULT_THRESHOLD,
    assign_model_file,
    chance_clustered_fraction,
    template_indexes,
)
from pipeline.autoencoder import AutoencoderConfig
from pipeline.extract import extract_model_to_parquet, model_row
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
from pipeline.templates import TemplateConfig, build_templates
from pipeline.zoo import ModelSpec


@dataclass
class RunOptions:
    out: Path = Path("dwscan-out")  # the output folder (a zoo; see module docstring)
    threshold: float = DEFAULT_THRESHOLD  # cosine at or above which a kernel is clustered
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    templates: TemplateConfig = field(default_factory=TemplateConfig)
    train_workers: int = 2  # Ray Train workers (DDP ranks)
    use_gpu: bool = False  # train on CUDA
    accuracy_csv: str = TIMM_RESULTS_URL  # timm results-imagenet.csv, path or URL
    pretrain_csv: str = TIMM_PRETRAIN_URL  # timm model_metadata-in1k.csv, path or URL
    max_in_flight: int | None = None  # extraction/assignment tasks at once (default: CPUs)


@dataclass
class RunSummary:
    models: pa.Table  # MODELS rows of this run
    templates: pa.Table
    clusterability: pa.Table
    correlation: pa.Table = field(default_factory=schemas.CORRELATION.empty_table)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    missed_patterns: pa.Table = field(default_factory=schemas.MISSED_PATTERNS.empty_table)

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(r["model_id"], r["error"]) for r in self.models.to_pylist()
                if r["status"] == "failed"]


def run_pipeline(specs: list[ModelSpec], options: RunOptions,
                 address: str | None = None) -> RunSummary:
    layout = OutputLayout(Path(options.out).resolve())  # Ray workers run in other folders
    timings: dict[str, float] = {}
    # read first: a wrong path or an unreachable URL fails now, not after training
    accuracy = read_accuracy_tables(options.accuracy_csv, options.pretrain_csv)
    with _timed(timings, "ray start"):
        ray_executor.init_ray(address)

    with _timed(timings, "extract"):
        run_models, models = scan_models(specs, layout, options.max_in_flight)

    ok = [r["model_id"] for r in models.to_pylist() if r["status"] == "ok" and r["n_filters"] > 0]
    for r in models.to_pylist():
        if r["model_id"] not in ok:
            layout.assignments_path(r["model_id"]).unlink(missing_ok=True)
    kernel_paths = [layout.kernels_path(m) for m in ok]
    if not kernel_paths:
        return RunSummary(run_models, schemas.TEMPLATES.empty_table(),
                          schemas.CLUSTERABILITY.empty_table(), timings)

    if options.templates.method == "autoencoder":
        with _timed(timings, "train"):
            ray_executor.train_with_ray_train(
                kernel_paths, layout.autoencoders_dir, options.autoencoder,
                num_workers=options.train_workers, use_gpu=options.use_gpu)
    with _timed(timings, "templates"):
        templates, missed = build_templates(kernel_paths, layout.autoencoders_dir,
                                            options.templates, seed=options.autoencoder.seed,
                                            threshold=options.threshold)
        write_table(templates, layout.templates_path, schemas.TEMPLATES)
        write_table(missed, layout.missed_patterns_path, schemas.MISSED_PATTERNS)

    with _timed(timings, "assign"):
        assigned = ray_executor.run_tasks(
            assign_model_file,
            [(layout.kernels_path(m), templates, options.threshold, layout.assignments_path(m),
              options.templates.sign_invariant) for m in ok],
            desc="assign", max_in_flight=options.max_in_flight)
        for model_id, result in zip(ok, assigned):
            if isinstance(result, BaseException):
                raise RuntimeError(f"assignment of {model_id} failed: {result}") from result

    with _timed(timings, "report"):
        report = write_reports(layout, options, models, templates, missed, accuracy)
    return RunSummary(run_models, templates, report.clusterability, report.correlation, timings,
                      missed)


@dataclass
class Reports:
    clusterability: pa.Table
    correlation: pa.Table
    index_html: Path


def write_reports(layout: OutputLayout, options: RunOptions, models: pa.Table | None = None,
                  templates: pa.Table | None = None, missed: pa.Table | None = None,
                  accuracy: AccuracyTables | None = None) -> Reports:
    """Stage 6: every table, plot and the index page under OUT/reports/, from what OUT holds."""
    models = read_table_as(layout.models_path, schemas.MODELS) if models is None else models
    templates = read_table_as(layout.templates_path, schemas.TEMPLATES) if templates is None \
        else templates
    if missed is None and layout.missed_patterns_path.exists():
        missed = read_table_as(layout.missed_patterns_path, schemas.MISSED_PATTERNS)
    ok = [r["model_id"] for r in models.to_pylist() if r["status"] == "ok" and r["n_filters"] > 0]
    assignments = read_tables([layout.assignments_path(m) for m in ok], schemas.ASSIGNMENTS)
    if accuracy is None:
        accuracy = read_accuracy_tables(options.accuracy_csv, options.pretrain_csv)
    scanned = models.filter(pc.is_in(models.column("model_id"), pa.array(ok, pa.string())))
    metadata = model_metadata_table(scanned, accuracy)
    tables = {
        schemas.MODEL_METADATA: metadata,
        schemas.ACCURACY: accuracy_rows_table(scanned, accuracy),
        schemas.CLUSTERABILITY: build_clusterability(assignments, templates, metadata, options),
        schemas.LAYERS: layer_clusterability_table(assignments, metadata),
        schemas.LABEL_SHARES: label_shares_table(assignments, templates, metadata),
        schemas.THRESHOLD_SWEEP: threshold_sweep_table(assignments),
    }
    tables[schemas.CORRELATION] = correlation_table(tables[schemas.CLUSTERABILITY],
                                                    seed=options.autoencoder.seed)
    for schema, table in tables.items():
        write_table(table, layout.table_path(schema), schema)

    reports = layout.reports_dir
    sizes = sorted(set(templates.column("kernel_size").to_pylist()))
    galleries = [plot_template_gallery(templates, k, reports / f"templates_k{k}.png") for k in sizes]
    per_model = [plot_layer_shares(assignments, templates, m, layout.layer_shares_plot_path(m))
                 for m in ok]
    clusterability = tables[schemas.CLUSTERABILITY]
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
         f"Kernels within cosine {options.threshold:g} of a template; chance = random Gaussian "
         "kernels against the same templates.", [],
         html_table(clusterability, [
             ("model_id", "model", None), ("kernel_size", "k", None),
             ("n_filters", "filters", None), ("n_invalid", "invalid", None),
             ("clustered_fraction", "clustered", percent), ("chance_fraction", "chance", percent),
             ("top1", "top-1", number(2)), ("family", "family", None),
             ("pretrain", "pre-training", None), ("param_count_m", "params (M)", number(2))])),
        ("Template labels per model", "", [plot_label_shares(
            tables[schemas.LABEL_SHARES], reports / "label_shares.png")],
         label_shares_html(tables[schemas.LABEL_SHARES])),
        ("Clusterability by depth", "", [plot_fraction_vs_depth(
            tables[schemas.LAYERS], reports / "clusterability_vs_depth.png")], ""),
        ("Templates", "The templates of each kernel size, with the share of kernels nearest to "
         "each.", galleries, ""),
        ("Template shares per layer", "", per_model, ""),
    ]
    if missed is not None and missed.num_rows:
        sections.append(("Missed patterns", "Recurring patterns that no template reaches.", [],
                         html_table(missed, [("kernel_size", "k", None),
                                             ("share", "share", percent), ("label", "label", None),
                                             ("label_cosine", "cosine", number(2))])))
    about = (f"{len(ok)} models; accuracy from {accuracy.sources[0]}, pre-training from "
             f"{accuracy.sources[1]}.")
    return Reports(clusterability, tables[schemas.CORRELATION],
                   write_index_html(reports, sections, about))


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = time.perf_counter() - start


def scan_models(specs: list[ModelSpec], layout: OutputLayout,
                max_in_flight: int | None = None) -> tuple[pa.Table, pa.Table]:
    """Stage 1 over Ray, one task per model: (this run's MODELS rows, the whole models.parquet)."""
    results = ray_executor.run_tasks(extract_model_to_parquet,
                                     [(spec, str(layout.root)) for spec in specs],
                                     desc="extract", max_in_flight=max_in_flight,
                                     summarise=_scan_progress)
    rows = [model_row(spec, f"{type(r).__name__}: {r}") if isinstance(r, BaseException) else r
            for spec, r in zip(specs, results)]
    run_models = pa.Table.from_pylist(rows, schema=schemas.MODELS)
    return run_models, _merge_models(layout, run_models)


def _scan_progress(results: list) -> str:
    rows = [r for r in results if isinstance(r, dict)]
    status = [r["status"] for r in rows]
    fetched = sum(r["bytes_fetched"] or 0 for r in rows)
    return (f"ok {status.count('ok')} skipped {status.count('skipped')} "
            f"failed {status.count('failed') + len(results) - len(rows)} "
            f"fetched {fetched / 1e6:.1f} MB")


def build_clusterability(assignments: pa.Table, templates: pa.Table, metadata: pa.Table,
                         options: RunOptions) -> pa.Table:
    sign_invariant = options.templates.sign_invariant
    chance = {k: chance_clustered_fraction(index, options.threshold, seed=options.autoencoder.seed)
              for k, index in template_indexes(templates, sign_invariant).items()}
    return clusterability_table(assignments, options.threshold, chance, metadata, sign_invariant)


def _merge_models(layout: OutputLayout, run_models: pa.Table) -> pa.Table:
    """models.parquet = this run's rows + earlier rows of models this run did not touch."""
    merged = run_models
    if layout.models_path.exists():
        earlier = read_table_as(layout.models_path, schemas.MODELS)
        keep = pc.invert(pc.is_in(earlier.column("model_id"), run_models.column("model_id")))
        merged = pa.concat_tables([earlier.filter(keep), run_models])
    write_table(merged, layout.models_path, schemas.MODELS)
    return merged

