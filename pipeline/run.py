"""The scan, stage after stage: extract, train, templates, assign, report; one lock, one log row.

An output folder is a zoo: models scanned by earlier runs into the same `--out` stay in it, and
templates, assignments and reports cover every model there whose status is 'ok'. Every file is
written whole (temp file, then rename), and each stage redoes only what is missing or stale, so
a run killed at any point and started again ends with the outputs of a run never killed:
- a scan writes each model's new kernels beside the old ones (a pending file); only once
  models.parquet records the scan are they moved into place and the model's old assignment
  removed (a killed scan is simply scanned again; a commit cut short is finished by the next
  run). A failure to write OUT (a full disk) commits nothing: OUT stays as it was;
- an assignment file records its template set; files of another set (or none) are redone.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from dwscan import schemas
from dwscan.executor import ray_executor
from dwscan.io.accuracy import TIMM_PRETRAIN_URL, TIMM_RESULTS_URL, read_accuracy_tables
from dwscan.io.catalogue import kept_last_good_scan, model_row, ok_model_ids, scan_failures
from dwscan.io.checkpoints import DEFAULT_LIMITS, DEFAULT_MODEL_TIMEOUT, ReadLimits
from dwscan.io.lock import output_lock
from dwscan.io.storage import (
    ModelIdError,
    OutputLayout,
    OutputWriteError,
    check_model_ids,
    is_remote,
    model_stem,
    parse_pending_name,
    pending_path,
    read_table_as,
    replace_file,
    write_table,
)
from dwscan.io.template_index import DEFAULT_THRESHOLD
from dwscan.io.template_set import (
    TemplateSetRecord,
    assignment_template_set,
    read_seed_templates,
    read_template_set_record,
    template_set_of,
    write_template_set_record,
)
from dwscan.io.zoo import HUB_PREFIX, ModelSpec
from dwscan.memory import release_free_memory
from dwscan.method.autoencoder_config import AutoencoderConfig, read_training_records
from dwscan.method.families import default_master_key_filters, read_master_key_filters
from dwscan.stages.assign import assign_model_file
from dwscan.stages.extract import (
    ABANDON_GRACE_S,
    extract_hub_models_to_parquet,
    extract_model_to_parquet,
)
from dwscan.stages.report import write_reports
from dwscan.stages.templates import (
    TemplateConfig,
    build_templates,
    join_template_tables,
    templates_of_size,
)
from dwscan.stages.train import train_on_ray
from dwscan.text import one_line


@dataclass
class RunOptions:
    out: str | Path = "dwscan-out"  # folder or URI (dwscan.io.storage); a zoo, see above
    threshold: float = DEFAULT_THRESHOLD  # cosine at or above which a kernel is clustered
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    templates: TemplateConfig = field(default_factory=TemplateConfig)
    train_workers: int = 1  # Ray Train workers (DDP ranks); BENCHMARKS.md says why 1
    use_gpu: bool = False  # train on CUDA
    accuracy_csv: str = TIMM_RESULTS_URL  # timm results-imagenet.csv, path or URL
    pretrain_csv: str = TIMM_PRETRAIN_URL  # timm model_metadata-in1k.csv, path or URL
    max_in_flight: int | None = None  # models read at once, assignment tasks at once (default:
    # 1 per CPU; hub models HUB_MODELS_PER_CPU per CPU, read side by side in one worker each)
    limits: ReadLimits = field(default_factory=ReadLimits)  # what one model may cost
    model_timeout: float | None = DEFAULT_MODEL_TIMEOUT  # seconds one model may take; None: no limit
    family_yardstick: bool = False  # each kernel's closest family member (slow: METHOD.md 4e)


@dataclass
class ScanCounts:
    """How the models of a run relate to what OUT held before (the runs.parquet columns)."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    retried: int = 0


@dataclass
class RunSummary:
    models: pa.Table  # MODELS rows of this run
    templates: pa.Table
    clusterability: pa.Table
    correlation: pa.Table = field(default_factory=schemas.CORRELATION.empty_table)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    missed_patterns: pa.Table = field(default_factory=schemas.MISSED_PATTERNS.empty_table)
    training: dict[int, dict] = field(default_factory=dict)  # autoencoders/k*.json, if trained
    system_retries: int = 0  # tasks run again after Ray lost their worker or node
    pattern_shares: pa.Table = field(default_factory=schemas.PATTERN_SHARES.empty_table)

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(model id, reason) of the models whose scan failed, kept last good scans included."""
        return scan_failures(self.models.to_pylist())


def run_pipeline(specs: list[ModelSpec], options: RunOptions, address: str | None = None,
                 retrain: bool = True, counts: ScanCounts | None = None,
                 command: str = "run") -> RunSummary:
    """Scan `specs`, then (re)train templates when `retrain` or none exist, assign what is
    stale, report, and log the run. `dwscan run` retrains; a re-scan keeps the template set."""
    layout = OutputLayout(options.out)  # absolute, or a URI: Ray workers run elsewhere
    timings: dict[str, float] = {}
    started = now_utc()
    retries_before = ray_executor.system_failure_retries()
    # read first: a wrong path or an unreachable URL fails now, not after training
    accuracy = read_accuracy_tables(options.accuracy_csv, options.pretrain_csv)
    with output_lock(layout.root, command):
        remove_partial_writes(layout)
        check_scan_ids(layout, specs)  # before Ray starts
        with _timed(timings, "ray start"):
            ray_executor.init_ray(address, out=layout.root,
                                  ray_train=uses_ray_train(options))
        counts = counts or _counts_before_scan(layout, specs)
        with _timed(timings, "extract"):
            run_models, models = scan_models(specs, layout, options.max_in_flight,
                                             options.limits, options.model_timeout)
        ok = ok_model_ids(models)
        if not ok:
            retries = ray_executor.system_failure_retries() - retries_before
            log_run(layout, command, started, counts, run_models, False, None, retries)
            return RunSummary(run_models, schemas.TEMPLATES.empty_table(),
                              schemas.CLUSTERABILITY.empty_table(), timings=timings,
                              system_retries=retries)
        retrain = retrain or not layout.templates_path.exists()
        training: dict[int, dict] = {}
        if retrain:
            templates, missed = train_templates(layout, options, ok, timings)
            if options.templates.method == "autoencoder":
                training = read_training_records(
                    layout.autoencoders_dir,
                    sorted(set(templates.column("kernel_size").to_pylist())))
        else:
            templates = read_table_as(layout.templates_path, schemas.TEMPLATES)
            missed = read_table_as(layout.missed_patterns_path, schemas.MISSED_PATTERNS)
        with _timed(timings, "assign"):
            assign_stale(layout, ok, templates, options.max_in_flight, options.family_yardstick)
        with _timed(timings, "report"):
            report = write_reports(layout, accuracy, seed=options.autoencoder.seed)
        retries = ray_executor.system_failure_retries() - retries_before
        log_run(layout, command, started, counts, run_models, retrain, template_set_of(templates),
                retries)
    return RunSummary(run_models, templates, report.clusterability, report.correlation, timings,
                      missed, training, retries, report.pattern_shares)


def _counts_before_scan(layout: OutputLayout, specs: list[ModelSpec]) -> ScanCounts:
    """For `dwscan run`, which scans every model it is given: new, or known before (changed)."""
    known = set(read_table_as(layout.models_path, schemas.MODELS, missing_ok=True)
                .column("model_id").to_pylist())
    new = sum(spec.model_id not in known for spec in specs)
    return ScanCounts(new=new, changed=len(specs) - new)


def uses_ray_train(options: RunOptions) -> bool:
    """Training goes through Ray Train (several workers), not one Ray task."""
    return options.templates.method == "autoencoder" and options.train_workers > 1


def train_templates(layout: OutputLayout, options: RunOptions, ok: list[str],
                    timings: dict[str, float]) -> tuple[pa.Table, pa.Table]:
    """Stages 3 and 4: a new template set from the kernels of every ok model, with its record.
    By default each size's templates are built in the task that trained it, on the kernels it
    trained on, while other sizes still train (one stage time: "train + templates"); k-means
    and Ray Train's ranks build them here, one size after another."""
    kernel_paths = [layout.kernels_path(m) for m in ok]
    template_options = {"autoencoders_dir": layout.autoencoders_dir,
                        "config": options.templates, "seed": options.autoencoder.seed,
                        "threshold": options.threshold, "n_seeds": options.autoencoder.seeds}
    if options.templates.method == "autoencoder" and not uses_ray_train(options):
        with _timed(timings, "train + templates"):
            sizes = train_on_ray(kernel_paths, layout.autoencoders_dir, options.autoencoder,
                                 use_gpu=options.use_gpu,
                                 then=partial(templates_of_size, **template_options))
            found = join_template_tables([sizes[k] for k in sorted(sizes)])
    else:
        if options.templates.method == "autoencoder":
            with _timed(timings, "train"):
                train_on_ray(kernel_paths, layout.autoencoders_dir, options.autoencoder,
                             num_workers=options.train_workers, use_gpu=options.use_gpu)
        with _timed(timings, "templates"):
            found = build_templates(kernel_paths, **template_options)
    templates, seed_templates, missed = found
    write_table(missed, layout.missed_patterns_path, schemas.MISSED_PATTERNS)
    write_table(seed_templates, layout.seed_templates_path, schemas.SEED_TEMPLATES)
    # the record goes first: templates.parquet existing means a complete set
    write_template_set_record(layout.template_set_path, TemplateSetRecord(
        template_set=template_set_of(templates), method=options.templates.method,
        threshold=options.threshold, sign_invariant=options.templates.sign_invariant,
        n_templates=templates.num_rows))
    write_table(templates, layout.templates_path, schemas.TEMPLATES)
    return templates, missed


def assign_stale(layout: OutputLayout, ok: list[str], templates: pa.Table,
                 max_in_flight: int | None = None, families: bool = False) -> list[str]:
    """Stage 5 for the ok models whose assignment file is missing or of another template set;
    returns their ids."""
    record = read_template_set_record(layout.template_set_path)
    current = template_set_of(templates)
    stale = [m for m in ok if assignment_template_set(layout.assignments_path(m)) != current]
    # read here, where $DWSCAN_MASTER_KEY_FILTERS is set, not in each worker
    master_keys = read_master_key_filters(default_master_key_filters())
    seed_templates = read_seed_templates(layout, current)
    assigned = ray_executor.run_tasks(
        assign_model_file,
        [(layout.kernels_path(m), templates, record.threshold, layout.assignments_path(m),
          record.sign_invariant, 262_144, master_keys, families, seed_templates)
         for m in stale],
        desc="assign", max_in_flight=max_in_flight)
    for model_id, result in zip(stale, assigned):
        if isinstance(result, BaseException):
            raise RuntimeError(f"assignment of {model_id} failed: {result}") from result
    return stale


def remove_partial_writes(layout: OutputLayout) -> None:
    """Temp files that a killed run left behind (never read: their names start with '.').
    An object store has none: an interrupted upload never becomes an object."""
    if is_remote(layout.root):
        return
    for path in layout.root.glob("**/.*.tmp"):
        path.unlink(missing_ok=True)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Time a stage; then hand back the memory it freed, so the next stage starts from what
    the run holds, not from the last stage's peak (the templates stage reads 1M kernels)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = time.perf_counter() - start
        release_free_memory()


def check_scan_ids(layout: OutputLayout, specs: list[ModelSpec]) -> None:
    """Refuse (ModelIdError) ids that cannot name a file or would share one with another id of
    this run or of OUT: one model's kernels would silently replace another's."""
    known = read_table_as(layout.models_path, schemas.MODELS, missing_ok=True)
    check_model_ids([s.model_id for s in specs], known.column("model_id").to_pylist())


def scan_models(specs: list[ModelSpec], layout: OutputLayout, max_in_flight: int | None = None,
                limits: ReadLimits | None = None, model_timeout: float | None = None
                ) -> tuple[pa.Table, pa.Table]:
    """Stage 1 over Ray: (this run's MODELS rows, the whole models.parquet). A local
    checkpoint is one task; hub models go in batches, many read side by side in one worker
    (`hub_batches`). `max_in_flight`: models read at once.

    Replace, never delete-then-write: tasks write pending files; models.parquet is written, and
    only then are the pending files moved into place (`commit_pending_kernels`). A failure to
    write OUT raises OutputWriteError with OUT as it was. A model over `model_timeout` seconds is
    cancelled and recorded as failed."""
    check_scan_ids(layout, specs)
    commit_pending_kernels(layout)  # a commit an earlier run did not finish
    scanned_at = now_utc()
    token = scan_token(scanned_at)
    shared = (str(layout.root), limits or DEFAULT_LIMITS, token)
    on_hub = [spec.source.startswith(HUB_PREFIX) for spec in specs]
    results: list = [None] * len(specs)
    local = [i for i, hub in enumerate(on_hub) if not hub]
    if local:
        done = ray_executor.run_tasks(extract_model_to_parquet,
                                      [(specs[i], *shared) for i in local],
                                      desc="extract", max_in_flight=max_in_flight,
                                      summarise=_scan_progress, timeout=model_timeout)
        for i, result in zip(local, done):
            results[i] = result
    hub = [i for i, on in enumerate(on_hub) if on]
    if hub:
        done = _scan_hub_models([specs[i] for i in hub], shared, max_in_flight, model_timeout)
        for i, result in zip(hub, done):
            results[i] = result
    write_errors = [r for r in results if isinstance(r, OutputWriteError)]
    rows = [model_row(spec, error_line(r)) if isinstance(r, BaseException) else r
            for spec, r in zip(specs, results)]
    run_models = pa.Table.from_pylist(rows, schema=schemas.MODELS)
    try:
        if write_errors:
            raise write_errors[0]
        run_models, merged = _merge_models(layout, run_models, scanned_at)
    except OSError as exc:  # the disk filled, OUT turned read-only, ...: commit nothing
        for spec in specs:
            pending_path(layout.kernels_path(spec.model_id), token).unlink(missing_ok=True)
        raise OutputWriteError(f"{one_line(str(exc), 300)}; nothing of this scan was committed, "
                               f"{layout.root} is as it was before it") from None
    commit_pending_kernels(layout, merged)
    return run_models, merged


# Hub models in flight per CPU by default: a hub model waits on round trips nearly all its time
# (16 at once keep one CPU busy at 30 ms a round trip); what they hold is bounded per worker
# (stages.extract.HUB_BUDGET_BYTES), not by their number.
HUB_MODELS_PER_CPU = 16


def hub_batches(n_models: int, max_in_flight: int | None, cpus: int) -> tuple[int, int | None]:
    """(models per batch task, batch tasks at once) for `n_models` hub models: a batch is what
    one worker, holding one CPU, reads side by side. `max_in_flight` (`--concurrency`) is the
    models in flight over the cluster: spread over at most one worker per CPU. By default a
    batch is HUB_MODELS_PER_CPU models, fewer where that spreads a small zoo over the CPUs; as
    many batches run as the cluster has CPUs, and the rest wait as pending tasks the
    autoscaler sees. A cluster that reports no CPU (every worker autoscaled, none up yet, no
    maximum it tells) caps nothing: `max_in_flight` workers of one model each."""
    if not max_in_flight:
        return max(1, min(HUB_MODELS_PER_CPU, -(-n_models // max(1, cpus)))), None
    workers = max(1, min(max_in_flight, cpus or max_in_flight, n_models))
    return -(-max_in_flight // workers), workers


def _scan_hub_models(specs: list[ModelSpec], shared: tuple, max_in_flight: int | None,
                     model_timeout: float | None) -> list:
    """Hub models in batch tasks (`extract_hub_models_to_parquet`): one result per spec, a
    batch's exception (its worker lost for good, OUT unwritable) standing for each of its
    models. The batch's own time limit is a backstop: each model keeps its own deadline."""
    size, workers = hub_batches(len(specs), max_in_flight, ray_executor.cluster_max_cpus())
    batches = [specs[j:j + size] for j in range(0, len(specs), size)]
    backstop = model_timeout + ABANDON_GRACE_S + 60 if model_timeout else None
    done = ray_executor.run_tasks(
        extract_hub_models_to_parquet,
        [(batch, *shared, size, model_timeout) for batch in batches],
        desc=f"extract ({len(specs)} hub models, {size} a batch)", unit="batch",
        max_in_flight=workers,
        summarise=lambda results: _scan_progress(_flat(results)), timeout=backstop)
    return _flat(done, [len(batch) for batch in batches])


def _flat(results: list, sizes: list[int] | None = None) -> list:
    """Batch results as one list of per-model results (an exception repeated for its batch)."""
    flat = []
    for j, result in enumerate(results):
        if isinstance(result, list):
            flat += result
        else:
            flat += [result] * (sizes[j] if sizes else 1)
    return flat


def scan_token(scanned_at: datetime.datetime) -> str:
    """The name a scan gives its pending files: its models.parquet `scanned_at`, compact."""
    return scanned_at.strftime("%Y%m%dT%H%M%SZ")


def commit_pending_kernels(layout: OutputLayout, models: pa.Table | None = None) -> None:
    """Finish the commit of every scan that models.parquet records: move each pending kernels
    file whose model's row is 'ok' with that scan's `scanned_at` into place (removing the
    assignment made from the old kernels first), and delete pending files of scans never
    committed. Kernels and assignments of models that are not 'ok' are removed (no query
    should see them)."""
    if models is None:
        models = read_table_as(layout.models_path, schemas.MODELS, missing_ok=True)
    rows = {}
    for row in models.to_pylist():
        try:
            rows[model_stem(row["model_id"])] = row
        except ModelIdError:
            continue
    for pending in layout.kernels_dir.glob(".*.pending"):
        parsed = parse_pending_name(pending.name)
        row = rows.get(parsed[0].removesuffix(".parquet")) if parsed else None
        if (row is not None and row["status"] == "ok" and row["scanned_at"] is not None
                and scan_token(row["scanned_at"]) == parsed[1]):
            layout.assignments_path(row["model_id"]).unlink(missing_ok=True)
            replace_file(pending, layout.kernels_path(row["model_id"]))
        else:
            pending.unlink(missing_ok=True)
    for row in rows.values():
        if row["status"] != "ok":
            layout.assignments_path(row["model_id"]).unlink(missing_ok=True)
            layout.kernels_path(row["model_id"]).unlink(missing_ok=True)


def error_line(error: BaseException) -> str:
    """A task's exception as the one line recorded for its model (a timeout is its message)."""
    if isinstance(error, ray_executor.TaskTimeout):
        return str(error)
    return one_line(f"{type(error).__name__}: {error}", 300)


def _scan_progress(results: list) -> str:
    rows = [r for r in results if isinstance(r, dict)]
    status = [r["status"] for r in rows]
    fetched = sum(r["bytes_fetched"] or 0 for r in rows)
    return (f"ok {status.count('ok')} skipped {status.count('skipped')} "
            f"failed {status.count('failed') + len(results) - len(rows)} "
            f"fetched {fetched / 1e6:.1f} MB")


def _merge_models(layout: OutputLayout, run_models: pa.Table,
                  now: datetime.datetime) -> tuple[pa.Table, pa.Table]:
    """models.parquet = this run's rows (see `_recorded_row`) + earlier rows of models this run
    did not touch. Returns (this run's rows as recorded, the merged table)."""
    earlier = read_table_as(layout.models_path, schemas.MODELS, missing_ok=True)
    before = {r["model_id"]: r for r in earlier.to_pylist()}
    rows = [_recorded_row(row, before.get(row["model_id"]), now) for row in run_models.to_pylist()]
    run_models = pa.Table.from_pylist(rows, schema=schemas.MODELS)
    keep = pc.invert(pc.is_in(earlier.column("model_id"), run_models.column("model_id")))
    merged = pa.concat_tables([earlier.filter(keep), run_models])
    write_table(merged, layout.models_path, schemas.MODELS)
    return run_models, merged


def _recorded_row(row: dict, previous: dict | None, now: datetime.datetime) -> dict:
    """A scan's row as models.parquet records it: attempts counted per revision, time stamped.
    A failed scan of a model whose last scan was good keeps that scan's row (so its kernels and
    assignment stay, `commit_pending_kernels`) with the failure beside it; only a successful
    scan replaces data."""
    if kept_last_good_scan(row, previous):
        again = previous["last_error"] is not None and previous["failed_revision"] == row["revision"]
        return {**previous, "last_error": row["error"], "last_attempt_at": now,
                "failed_revision": row["revision"],
                "failed_attempts": (previous["failed_attempts"] or 1) + 1 if again else 1}
    same_revision = previous is not None and previous["revision"] == row["revision"]
    return {**row, "attempts": (previous["attempts"] or 1) + 1 if same_revision else 1,
            "scanned_at": now}


def log_run(layout: OutputLayout, command: str, started: datetime.datetime, counts: ScanCounts,
            run_models: pa.Table, retrained: bool, template_set: str | None,
            system_retries: int = 0) -> None:
    """Append this run's row to runs.parquet."""
    row = {"run_id": uuid.uuid4().hex[:12], "command": command, "started": started,
           "ended": now_utc(), "n_new": counts.new, "n_changed": counts.changed,
           "n_unchanged": counts.unchanged, "n_retried": counts.retried,
           "n_failed": len(scan_failures(run_models.to_pylist())),
           "retrained": retrained, "template_set": template_set,
           "n_system_retries": system_retries}
    earlier = read_table_as(layout.runs_path, schemas.RUNS, missing_ok=True)
    write_table(pa.concat_tables([earlier, pa.Table.from_pylist([row], schema=schemas.RUNS)]),
                layout.runs_path, schemas.RUNS)


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
