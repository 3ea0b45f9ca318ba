"""Stage 5: nearest template of every kernel by cosine, through the template index
(`dwscan.io.template_index`, FAISS exact inner-product search), and the training-free yardstick
of every kernel (`dwscan.method.yardstick`): the closest family member and, at 7x7, the best
master-key fit. The yardstick is computed here because this stage reads every kernel anyway;
the report stage reads only assignments, so there it would read every kernel file again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from dwscan import schemas
from dwscan.io.arrays import list_column_to_matrix
from dwscan.io.storage import iter_tables, write_tables
from dwscan.io.template_index import (
    DEFAULT_THRESHOLD,
    TemplateIndex,
    seed_template_indexes,
    template_indexes,
)
from dwscan.io.template_set import TEMPLATE_SET_KEY, template_set_of
from dwscan.method.families import MASTER_KEY_SIZE
from dwscan.method.preprocess import INVALID_REASONS, VALID, centre_and_normalise
from dwscan.method.yardstick import family_cosines, master_key_fits


def assign_kernels(kernels: pa.Table, indexes: dict[int, TemplateIndex],
                   threshold: float = DEFAULT_THRESHOLD, template_set: str | None = None,
                   master_keys: np.ndarray | None = None, families: bool = False,
                   seed_indexes: dict[int, list[TemplateIndex | None]] | None = None
                   ) -> pa.Table:
    """ASSIGNMENTS rows for a KERNELS table (any mix of kernel sizes). A size with no index (no
    kernel of it reached the threshold when the templates were made) has its valid kernels
    unclustered, with no nearest template. `master_keys` (the 7x7 filters, centred, unit norm)
    give the 7x7 kernels their best master-key fit; without them those columns are null.
    `families`: also each valid kernel's closest family member (`family_cosine`; the search
    costs about 2 s per 10,000 kernels on a core, so it is asked for with --family-yardstick).
    `seed_indexes`: per size, each seed's own template set, for `seed_template_ids`."""
    n = kernels.num_rows
    seed_indexes = seed_indexes or {}
    n_seeds = max((len(v) for v in seed_indexes.values()), default=0)
    seed_ids = np.full((n, n_seeds), -1, dtype=np.int32)  # -1: unclustered under that seed
    seed_slots = np.zeros(n, dtype=np.int32)  # seeds of the row's size (0: none recorded)
    yardstick = _Yardstick(n)
    nearest = np.full(n, -1, dtype=np.int64)
    cosine = np.zeros(n, dtype=np.float32)
    sign = np.ones(n, dtype=np.int8)
    codes = np.zeros(n, dtype=np.uint8)
    sizes = kernels.column("kernel_size").to_numpy()
    no_template = np.zeros(n, dtype=bool)  # a size where no kernel reached the threshold
    for k in np.unique(sizes):
        rows = np.flatnonzero(sizes == k)
        weights = kernels.column("weights")
        matrix = list_column_to_matrix(weights if len(rows) == n else weights.take(rows),
                                       int(k) * int(k))
        normalised, why = centre_and_normalise(matrix)
        codes[rows] = why
        valid = why == VALID
        yardstick.measure(rows[valid], normalised[valid], int(k), threshold, master_keys,
                          families)
        seed_slots[rows[valid]] = len(seed_indexes.get(int(k), []))
        for i, index in enumerate(seed_indexes.get(int(k), [])):
            if index is None:  # this seed has no template of this size: all unclustered
                continue
            ids, cos = index.nearest(normalised[valid])
            seed_ids[rows[valid], i] = np.where(cos >= threshold, ids, -1)
        if int(k) not in indexes:
            no_template[rows[valid]] = True
            continue
        ids, cos, signs = indexes[int(k)].nearest_with_sign(normalised[valid])
        nearest[rows[valid]] = ids
        cosine[rows[valid]] = cos
        sign[rows[valid]] = signs
    invalid = codes != VALID
    unmatched = invalid | no_template
    clustered = ~unmatched & (cosine >= threshold)
    return pa.table({
        "model_id": kernels.column("model_id"),
        "layer": kernels.column("layer"),
        "layer_index": kernels.column("layer_index"),
        "depth": kernels.column("depth"),
        "channel": kernels.column("channel"),
        "kernel_size": kernels.column("kernel_size"),
        "template_id": pa.array(np.where(clustered, nearest, 0), pa.int32(), mask=~clustered),
        "nearest_template_id": pa.array(np.where(unmatched, 0, nearest), pa.int32(),
                                        mask=unmatched),
        "cosine": pa.array(cosine, pa.float32(), mask=unmatched),
        "sign": pa.array(sign, pa.int8(), mask=unmatched),
        "invalid_reason": pa.array(INVALID_REASONS, pa.string()).take(pa.array(codes)),
        # one string for every row, without a Python object per row
        "template_set": pa.array([template_set], pa.string()).take(
            pa.array(np.zeros(len(codes), np.int32))),
        **yardstick.columns(),
        "seed_template_ids": _seed_template_ids(seed_ids, seed_slots),
    }, schema=schemas.ASSIGNMENTS)


def _seed_template_ids(seed_ids: np.ndarray, seed_slots: np.ndarray) -> pa.Array:
    """list<int32> per row: each seed of its size's template id (the first `seed_slots` of the
    row's), null where unclustered under it; a null list where the row has no seed sets
    (invalid kernel, or one seed)."""
    values = seed_ids[np.arange(seed_ids.shape[1]) < seed_slots[:, None]]  # row by row
    offsets = np.zeros(len(seed_ids) + 1, np.int32)
    offsets[1:] = np.cumsum(seed_slots)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32(),
                                                                mask=values < 0),
                                    mask=pa.array(seed_slots == 0))


class _Yardstick:
    """The yardstick columns of one ASSIGNMENTS batch, filled kernel size by kernel size."""

    def __init__(self, n: int):
        self.family_cosine = np.zeros(n, np.float32)
        self.master_key = np.zeros(n, np.int32)
        self.master_key_cosine = np.zeros(n, np.float32)
        self.has_family = np.zeros(n, bool)
        self.has_key = np.zeros(n, bool)

    def measure(self, rows: np.ndarray, kernels: np.ndarray, k: int, threshold: float,
                master_keys: np.ndarray | None, families: bool) -> None:
        """Score the valid kernels `rows` of size k (centred, unit norm)."""
        if families:
            self.family_cosine[rows] = family_cosines(kernels, k, threshold)
            self.has_family[rows] = True
        if master_keys is not None and k == MASTER_KEY_SIZE:
            self.master_key[rows], self.master_key_cosine[rows] = master_key_fits(kernels,
                                                                                  master_keys)
            self.has_key[rows] = True

    def columns(self) -> dict[str, pa.Array]:
        return {
            "family_cosine": pa.array(self.family_cosine, pa.float32(), mask=~self.has_family),
            "master_key": pa.array(self.master_key, pa.int32(), mask=~self.has_key),
            "master_key_cosine": pa.array(self.master_key_cosine, pa.float32(),
                                          mask=~self.has_key),
        }


def assign_model_file(kernels_path: Path, templates: pa.Table, threshold: float,
                      out_path: Path, sign_invariant: bool = False,
                      batch_size: int = 262_144, master_keys: np.ndarray | None = None,
                      families: bool = False, seed_templates: pa.Table | None = None) -> int:
    """Assign one model's kernel file, streaming it in batches so memory stays bounded; writes
    its assignment file whole (atomically) and returns its row count."""
    template_set = template_set_of(templates)
    indexes, seed_indexes = _indexes_of(templates, seed_templates, sign_invariant)

    return write_tables((assign_kernels(batch, indexes, threshold, template_set, master_keys,
                                        families, seed_indexes)
                         for batch in iter_tables(kernels_path, batch_size)),
                        out_path, schemas.ASSIGNMENTS,
                        metadata={TEMPLATE_SET_KEY: template_set or ""})


# A Ray worker assigns model after model against one template set: its indexes are built once
# per process (a third of a 4,600-kernel model's assignment was building them again)
_INDEXES: dict[tuple, tuple] = {}


def _indexes_of(templates: pa.Table, seed_templates: pa.Table | None, sign_invariant: bool
                ) -> tuple[dict[int, TemplateIndex], dict[int, list[TemplateIndex | None]]]:
    """template_indexes and seed_template_indexes of a set, kept for the set's next model (the
    set's id is a hash of its templates, and its seed templates carry it)."""
    template_set = template_set_of(templates)
    with_seeds = seed_templates is not None and seed_templates.num_rows > 0
    key = (template_set, with_seeds, sign_invariant)
    if template_set is None or (with_seeds and template_set_of(seed_templates) != template_set):
        return (template_indexes(templates, sign_invariant),
                seed_template_indexes(seed_templates, sign_invariant))
    if key not in _INDEXES:
        _INDEXES.clear()
        _INDEXES[key] = (template_indexes(templates, sign_invariant),
                         seed_template_indexes(seed_templates, sign_invariant))
    return _INDEXES[key]

