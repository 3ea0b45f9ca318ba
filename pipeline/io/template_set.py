"""The template set as every stage after training reads it: its id (a hash of the templates),
how it was made (OUT/template_set.json), and which set an assignment file was made with."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from dwscan import schemas
from dwscan.io.storage import (
    OutputLayout,
    as_location,
    file_metadata,
    read_table_as,
    write_bytes_atomic,
)
from dwscan.io.template_index import DEFAULT_THRESHOLD


def with_template_set_id(templates: pa.Table) -> pa.Table:
    """Stamp the set's id: a hash of every template's size, id and weights, so the same training
    gives the same id (a resumed run matches an uninterrupted one) and any change a new one."""
    digest = hashlib.sha256()
    for k, t, w in sorted(zip(templates.column("kernel_size").to_pylist(),
                              templates.column("template_id").to_pylist(),
                              templates.column("weights").to_pylist())):
        digest.update(f"{k}:{t}:".encode() + np.asarray(w, np.float32).tobytes())
    ids = pa.array([digest.hexdigest()[:12]] * templates.num_rows, pa.string())
    return templates.set_column(templates.schema.get_field_index("template_set"), "template_set",
                                ids)


@dataclass
class TemplateSetRecord:
    """How the current template set was made; assign and report read it back from
    OUT/template_set.json so every stage of later runs uses the same settings."""

    template_set: str | None = None
    method: str = "autoencoder"
    threshold: float = DEFAULT_THRESHOLD
    sign_invariant: bool = False
    n_templates: int = 0


def write_template_set_record(path: str | os.PathLike, record: TemplateSetRecord) -> None:
    write_bytes_atomic(as_location(path), json.dumps(asdict(record), indent=1).encode())


def read_template_set_record(path: str | os.PathLike) -> TemplateSetRecord:
    """The record, or defaults for an output folder written before records existed."""
    try:
        return TemplateSetRecord(**json.loads(as_location(path).read_text()))
    except FileNotFoundError:
        return TemplateSetRecord()


TEMPLATE_SET_KEY = b"dwscan.template_set"


def template_set_of(templates: pa.Table) -> str | None:
    if "template_set" not in templates.column_names or not templates.num_rows:
        return None
    return templates.column("template_set")[0].as_py()


def assignment_template_set(path: Path) -> str | None:
    """The template set an assignment file was made with (from its Parquet metadata, not its
    rows); None when the file is missing or unreadable, so it is redone."""
    try:
        value = file_metadata(path).get(TEMPLATE_SET_KEY)
    except (OSError, pa.ArrowException):
        return None
    return value.decode() if value else None


def read_seed_templates(layout: OutputLayout, template_set: str | None) -> pa.Table | None:
    """The seeds' own template sets of `template_set`; None where there are none (a folder
    written before schema 2.0, or templates made elsewhere), so no seed range is reported."""
    if not layout.seed_templates_path.exists():
        return None
    seeds = read_table_as(layout.seed_templates_path, schemas.SEED_TEMPLATES)
    if seeds.num_rows and template_set_of(seeds) != template_set:
        return None
    return seeds
