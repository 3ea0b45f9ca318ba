"""`dwscan train`, `assign` and `report`: one stage over what OUT already holds."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from dwscan.cli.flags import (
    accuracy_sources,
    add_accuracy_sources,
    add_family_yardstick,
    add_method_options,
    add_out,
    finished_layout,
    ray_session,
    run_options,
)
from dwscan.reports.patterns import format_kinds
from dwscan.reports.statistics import format_correlations
from dwscan.reports.tables import format_clusterability


def add_commands(commands: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """One stage at a time over an output folder."""
    train = commands.add_parser(
        "train", help="stages 3-4 alone: a new template set from OUT's kernels",
        description="Train the autoencoders (or k-means) on the kernels of every ok model in "
                    "OUT and write a new template set (templates.parquet, template_set.json). "
                    "Assignments made with the old set are stale: run `dwscan assign` next.")
    add_out(train, address=True)
    add_method_options(train)
    assign = commands.add_parser(
        "assign", help="stage 5 alone: assign the kernels that have no current assignment",
        description="Assign, with the current template set, every ok model of OUT whose "
                    "assignment file is missing or was made with another set.")
    add_out(assign, address=True)
    assign.add_argument("--concurrency", type=int, default=None,
                        help="models assigned at once (default: one per CPU, as the cluster grows)")
    add_family_yardstick(assign)
    report = commands.add_parser(
        "report", help="rebuild OUT/reports/ (tables, statistics, plots, index.html)",
        description="Stage 6 alone, from what OUT already holds (models, templates, "
                    "assignments): per-model, per-layer and per-label tables joined to timm's "
                    "accuracy and pre-training tables, correlations, plots and index.html.")
    add_out(report)
    add_accuracy_sources(report, remembered=True)
    report.add_argument("--model", action="append", dest="show_models", default=[],
                        metavar="MODEL_ID",
                        help="also draw this model's template shares per layer and give it its own "
                             "section of index.html (a model_id of models.parquet); repeat for "
                             "several. Every model's tables are in the page's model table anyway")
    substitute = commands.add_parser(
        "substitute", help="what the patterns do: swap kernels for templates, run the network",
        description="Rebuild each ok model of OUT (timm architecture from its config.json, the "
                    "demo zoo's EfficientNet-Lite, or --arch), swap its depthwise kernels for "
                    "their templates and controls, and compare it with the unmodified network "
                    "on images: top-1 agreement, mean KL divergence, and top-1 accuracy with a "
                    "labelled --images folder. Reads each model's whole checkpoint. Writes "
                    "reports/substitution.parquet and reports/substitution.png.")
    add_out(substitute, address=True)
    substitute.add_argument("--images", default=None, metavar="DIR",
                            help="labelled images in ImageNet layout (class folders named by "
                                 "WordNet id or class index 0-999); default: 48 crops and "
                                 "mirror images of one sample photo (a smoke-scale check)")
    substitute.add_argument("--model", action="append", dest="models", default=[],
                            metavar="MODEL_ID", help="measure this model of OUT (repeat for "
                                                     "several; default: every ok model)")
    substitute.add_argument("--arch", default=None, metavar="NAME",
                            help="timm architecture to rebuild the models with (for local "
                                 "checkpoints without a timm config.json)")
    substitute.add_argument("--concurrency", type=int, default=None,
                            help="models measured at once (default: one per CPU)")
    return {"train": command_train, "assign": command_assign, "report": command_report,
            "substitute": command_substitute}


def command_train(args: argparse.Namespace) -> int:
    from dwscan import schemas
    from dwscan.executor import ray_executor
    from dwscan.io.catalogue import ok_model_ids
    from dwscan.io.lock import output_lock
    from dwscan.io.storage import read_table_as
    from dwscan.io.template_set import template_set_of
    from dwscan.run import train_templates, uses_ray_train

    layout = finished_layout(args.out, needs_templates=False)
    options = run_options(args)
    with output_lock(layout.root, "train"), ray_session():
        ray_executor.init_ray(args.address, out=layout.root, ray_train=uses_ray_train(options))
        ok = ok_model_ids(read_table_as(layout.models_path, schemas.MODELS))
        if not ok:
            raise SystemExit(f"dwscan: error: no ok model in {args.out} to train on")
        templates, _ = train_templates(layout, options, ok, {})
    if args.templates == "autoencoder":
        from dwscan.cli.scan import format_training_record
        from dwscan.io.kernels import kernel_sizes_of
        from dwscan.method.autoencoder_config import read_training_records

        # every size trained, not only those that kept a template: a short run may keep none
        sizes = kernel_sizes_of([layout.kernels_path(m) for m in ok])
        for k, record in read_training_records(layout.autoencoders_dir, sizes).items():
            print(format_training_record(k, record))
    if not templates.num_rows:
        print("WARNING: no template holds 2% of the clustered kernels of any size; a run this "
              "short (--epochs) may not have learnt any pattern yet", file=sys.stderr)
    print(f"template set {template_set_of(templates)}: {templates.num_rows} templates "
          f"from {len(ok)} models; assignments are stale until `dwscan assign --out {args.out}`")
    return 0


def command_assign(args: argparse.Namespace) -> int:
    from dwscan import schemas
    from dwscan.executor import ray_executor
    from dwscan.io.catalogue import ok_model_ids
    from dwscan.io.lock import output_lock
    from dwscan.io.storage import read_table_as
    from dwscan.run import assign_stale

    layout = finished_layout(args.out)
    with output_lock(layout.root, "assign"), ray_session():
        ray_executor.init_ray(args.address, out=layout.root)
        ok = ok_model_ids(read_table_as(layout.models_path, schemas.MODELS))
        done = assign_stale(layout, ok, read_table_as(layout.templates_path, schemas.TEMPLATES),
                            args.concurrency, args.family_yardstick)
    print(f"assigned {len(done)} models; {len(ok) - len(done)} were already current")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from dwscan.io.lock import output_lock
    from dwscan.stages.report import write_reports

    layout = finished_layout(args.out)
    with output_lock(layout.root, "report"):
        accuracy_csv, pretrain_csv = accuracy_sources(args)
        reports = write_reports(layout, accuracy_csv=accuracy_csv, pretrain_csv=pretrain_csv,
                                show_models=args.show_models)
    for model_id in reports.unknown_models:
        print(f"dwscan report: --model {model_id}: no model of that id was scanned ok in "
              f"{args.out} (see models.parquet); not drawn", file=sys.stderr)
    print(format_clusterability(reports.clusterability))
    print()
    print(format_correlations(reports.correlation))
    print()
    print(format_kinds(reports.pattern_shares, reports.templates))
    for model_id, plot in reports.layer_share_plots.items():
        print(f"wrote {plot} ({model_id})")
    print(f"\nwrote {reports.index_html}")
    return 0


def command_substitute(args: argparse.Namespace) -> int:
    from dwscan import schemas
    from dwscan.executor import ray_executor
    from dwscan.io.lock import output_lock
    from dwscan.stages.substitute import format_substitution, substitute, summary_lines

    layout = finished_layout(args.out)
    with output_lock(layout.root, "substitute"), ray_session():
        ray_executor.init_ray(args.address, out=layout.root)
        result = substitute(layout, args.models, args.images, args.arch, args.concurrency)
    print(format_substitution(result.table))
    print()
    for line in summary_lines(result.table):
        print(line)
    print(f"\nwrote {layout.table_path(schemas.SUBSTITUTION)} and {result.plot}")
    failed = [r for r in result.table.to_pylist() if r["status"] == "failed"]
    return 1 if failed else 0
