"""Incremental re-scans: process only the hub repos that are new, changed or due a retry.

The hub listing carries each repo's commit sha, so an unchanged repo costs nothing beyond that
one listing call. A model that failed is scanned again by later re-scans until it has failed
`max_attempts` times at the same revision; then it stays failed with its last reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from dwscan import schemas
from dwscan.io.lock import output_lock
from dwscan.io.storage import OutputLayout, read_table_as
from dwscan.io.template_set import read_template_set_record
from dwscan.io.zoo import ModelSpec, hub_spec
from dwscan.run import RunOptions, RunSummary, ScanCounts, log_run, now_utc, run_pipeline

DEFAULT_MAX_ATTEMPTS = 3


@dataclass
class RescanPlan:
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)  # failed max_attempts times: left alone

    @property
    def to_scan(self) -> list[str]:
        return self.new + self.changed + self.retry

    def counts(self) -> ScanCounts:
        return ScanCounts(new=len(self.new), changed=len(self.changed),
                          unchanged=len(self.unchanged) + len(self.exhausted),
                          retried=len(self.retry))


def plan_rescan(listed: dict[str, str | None], models: pa.Table,
                max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> RescanPlan:
    """Sort listed repos (id -> commit sha) against models.parquet rows."""
    known = {r["model_id"]: r for r in models.to_pylist()}
    plan = RescanPlan()
    for repo_id, sha in listed.items():
        row = known.get(repo_id)
        if row is None:
            plan.new.append(repo_id)
        elif row["last_error"] is not None and row["failed_revision"] == sha:
            # its last good scan is kept; this revision failed: retried like a failed model
            attempts = row["failed_attempts"] or 1
            (plan.retry if attempts < max_attempts else plan.exhausted).append(repo_id)
        elif sha is None or row["revision"] != sha:
            plan.changed.append(repo_id)
        elif row["status"] == "failed":
            attempts = row["attempts"] or 1
            (plan.retry if attempts < max_attempts else plan.exhausted).append(repo_id)
        else:
            plan.unchanged.append(repo_id)
    return plan


def rescan(listed: dict[str, str | None], options: RunOptions, address: str | None = None,
           retrain: bool = False,
           max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> tuple[RescanPlan, RunSummary | None]:
    """Scan what the plan says at the listed revisions, assign the new kernels with the current
    template set (a new set with `retrain`), and rebuild the reports. Nothing to do: no run."""
    layout = OutputLayout(options.out)
    models = read_table_as(layout.models_path, schemas.MODELS, missing_ok=True)
    plan = plan_rescan(listed, models, max_attempts)
    if not plan.to_scan and not retrain:
        started = now_utc()
        with output_lock(layout.root, "rescan"):
            log_run(layout, "rescan", started, plan.counts(), schemas.MODELS.empty_table(),
                    False, read_template_set_record(layout.template_set_path).template_set)
        return plan, None
    specs: list[ModelSpec] = [hub_spec(repo_id, revision=listed[repo_id])
                              for repo_id in plan.to_scan]
    return plan, run_pipeline(specs, options, address, retrain=retrain, counts=plan.counts(),
                              command="rescan")
