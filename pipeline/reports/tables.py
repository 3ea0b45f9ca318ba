"""The analyst tables, from the assignments: clusterability per model (and size), per
layer, and per template label, each carrying the model's accuracy, family and pre-training."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dwscan import schemas


def clusterability_table(assignments: pa.Table, threshold: float,
                         chance: dict[int, float] | None = None,
                         metadata: pa.Table | None = None,
                         sign_invariant: bool = False, template_set: str | None = None,
                         seed_lists: dict[int, tuple[int | None, ...]] | None = None
                         ) -> pa.Table:
    """CLUSTERABILITY rows from ASSIGNMENTS rows: one per (model, size), one per model (size null).

    `clustered_fraction` is over valid kernels only; `chance_fraction` is the same measure for
    random Gaussian kernels against the same templates (a per-size figure, averaged with the
    model's valid counts as weights on the all-sizes row). `metadata` (MODEL_METADATA rows) adds
    accuracy, family and pre-training. The training-free yardstick (`family_fraction`,
    `master_key_*`) is counted from the assignments' per-kernel yardstick columns at the same
    threshold. `seed_lists` (seeds_by_size) pairs the seeds of a model's sizes by seed, not by
    place, for its all-sizes row: sizes whose kept seeds differ are summed as an envelope.
    """
    chance = chance or {}
    grouped = _counts(assignments, ["model_id", "kernel_size"])
    yardstick = _yardstick_counts(assignments, threshold)
    seeds = seed_clustered_counts(assignments)
    rows = []
    per_model: dict[str, list[dict]] = {}
    for g in grouped.sort_by([("model_id", "ascending"), ("kernel_size", "ascending")]).to_pylist():
        g["chance_fraction"] = chance.get(g["kernel_size"])
        g.update(yardstick.get((g["model_id"], g["kernel_size"]), _NO_YARDSTICK))
        g["seed_counts"] = seeds.get((g["model_id"], g["kernel_size"]))
        per_model.setdefault(g["model_id"], []).append(g)
    for model_id, size_rows in per_model.items():
        total = _with_fraction({"model_id": model_id, "kernel_size": None, "chance_fraction": None,
                                **{c: sum(r[c] for r in size_rows) for c in _COUNT_COLUMNS},
                                **_summed_yardstick(size_rows)})
        counted = [r["seed_counts"] for r in size_rows if r["seed_counts"] is not None]
        every_size = len(counted) == len(size_rows)
        paired = (every_size and len({len(c) for c in counted}) == 1
                  and _same_seeds([(seed_lists or {}).get(r["kernel_size"]) for r in size_rows]))
        total["seed_counts"] = np.sum(counted, axis=0) if paired else None
        weights = [r["n_filters"] - r["n_invalid"] for r in size_rows]
        if all(r["chance_fraction"] is not None for r in size_rows) and sum(weights):
            total["chance_fraction"] = float(np.average(
                [r["chance_fraction"] for r in size_rows], weights=weights))
        for row in (*size_rows, total):
            _with_yardstick_fractions(row)
            _with_seed_range(row)
        if every_size and not paired:
            _with_sizes_seed_range(total, size_rows)
        for row in (total, *size_rows):
            row.update(threshold=threshold, sign_invariant=sign_invariant,
                       template_set=template_set)
            rows.append(row)
    return with_model_metadata(rows, metadata, schemas.CLUSTERABILITY)


def seed_template_id_matrix(assignments: pa.Table) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, seeds) of the assignments' seed_template_ids, each seed's template: -1 where
    unclustered under it or where a row has no list (invalid kernels), -2 past the seeds of the
    row's size (sizes can have different numbers of seeds: untrained_members); and each row's
    number of seeds. None where no row has a list."""
    if "seed_template_ids" not in assignments.column_names:
        return None
    lists = assignments.column("seed_template_ids").combine_chunks()
    present = np.asarray(lists.is_valid())
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    if not present.any():
        return None
    ids = np.full((len(lengths), int(lengths.max())), -2, np.int64)
    ids[np.arange(ids.shape[1]) < lengths[:, None]] = pc.fill_null(lists.flatten(), -1).to_numpy()
    ids[~present] = -1
    return ids, lengths


def seed_clustered_counts(assignments: pa.Table) -> dict[tuple[str, int], np.ndarray]:
    """Per (model, size): valid kernels clustered under each seed's own template set (each seed
    of that size), from the assignments' seed_template_ids; none where the sets were not
    recorded."""
    found = seed_template_id_matrix(assignments)
    if found is None:
        return {}
    ids, lengths = found
    present = pc.is_valid(assignments.column("seed_template_ids"))
    rows = assignments.filter(present)
    clustered = ids[np.asarray(present)] >= 0
    table = pa.table({"model_id": rows.column("model_id"),
                      "kernel_size": rows.column("kernel_size"),
                      "n_seeds": lengths[np.asarray(present)],
                      **{f"s{i}": clustered[:, i] for i in range(ids.shape[1])}})
    grouped = table.group_by(["model_id", "kernel_size"], use_threads=False).aggregate(
        [("n_seeds", "max"), *[(f"s{i}", "sum") for i in range(ids.shape[1])]])
    return {(g["model_id"], g["kernel_size"]):
            np.array([g[f"s{i}_sum"] for i in range(g["n_seeds_max"])])
            for g in grouped.to_pylist()}


# From this many seeds on, a headline (the clustered fraction, a kind's share) is the median
# of the seeds' own.
MEDIAN_MIN_SEEDS = 3


def seed_headline(per_seed: np.ndarray | list | None, consensus: float, n_valid: int) -> float:
    """The headline share of `n_valid` kernels: with MEDIAN_MIN_SEEDS seeds or more the median
    of the seeds' own counts, else the consensus's share (a median of one or two is a mean)."""
    if per_seed is not None and n_valid and len(per_seed) >= MEDIAN_MIN_SEEDS:
        return float(np.median(per_seed)) / n_valid
    return consensus


def _with_seed_range(row: dict) -> dict:
    """The headline clustered fraction and its seed range from the row's per-seed clustered
    counts. With MEDIAN_MIN_SEEDS seeds or more the headline is the median of the seeds' own
    fractions: on real kernels (a continuum) the consensus's own fraction moves by points with
    its template count, the median by about one (METHOD.md 4b); and a seed that misses a
    pattern, as a lone autoencoder can on a planted zoo, does not move it. With fewer, a
    median is a mean, so the headline stays the consensus's own."""
    counts = row.pop("seed_counts", None)
    n_valid = row["n_filters"] - row["n_invalid"]
    found = counts is not None and n_valid
    row["clustered_fraction_consensus"] = row["clustered_fraction"]
    row["clustered_fraction"] = seed_headline(counts, row["clustered_fraction"], n_valid)
    row["clustered_fraction_seed_min"] = float(np.min(counts)) / n_valid if found else None
    row["clustered_fraction_seed_max"] = float(np.max(counts)) / n_valid if found else None
    row["clustered_fraction_by_seed"] = (np.asarray(counts, float) / n_valid).tolist() if found \
        else None
    return row


def seeds_by_size(seed_templates: pa.Table | None) -> dict[int, tuple[int | None, ...]]:
    """Per kernel size, the seed at each seed_index (None where that seed has no template of
    the size); empty without SEED_TEMPLATES."""
    if seed_templates is None or not seed_templates.num_rows:
        return {}
    found: dict[int, dict[int, int]] = {}
    n_seeds: dict[int, int] = {}
    for k, index, seed, n in zip(*(seed_templates.column(c).to_pylist() for c in
                                   ("kernel_size", "seed_index", "seed", "n_seeds"))):
        found.setdefault(k, {})[index] = seed
        n_seeds[k] = max(n_seeds.get(k, 0), n)
    return {k: tuple(found[k].get(i) for i in range(n_seeds[k])) for k in found}


def _same_seeds(lists: list[tuple[int | None, ...] | None]) -> bool:
    """Whether seed lists of a model's sizes name the same seed at every place (a place with
    None, or a size with no list, agrees with any)."""
    known = [s for s in lists if s is not None]
    return all(len({s[i] for s in known if s[i] is not None}) <= 1
               for i in range(min((len(s) for s in known), default=0)))


def _with_sizes_seed_range(total: dict, size_rows: list[dict]) -> dict:
    """The all-sizes row of a model whose sizes kept different seeds (a seed that did not train
    is left out of its size only: untrained_members). No seed has a total over the sizes then,
    so the headline is the sizes' headlines summed and the range their lows and highs summed
    (an envelope)."""
    sizes = [(r, r["n_filters"] - r["n_invalid"]) for r in size_rows]
    sizes = [(r, n) for r, n in sizes if n]
    n_valid = sum(n for _, n in sizes)
    if not n_valid:
        return total
    for column in ("clustered_fraction", "clustered_fraction_seed_min",
                   "clustered_fraction_seed_max"):
        total[column] = sum(r[column] * n for r, n in sizes) / n_valid
    return total


# Per (model, size): valid kernels the family yardstick scored and of those at the threshold;
# the same for the master keys (7x7), and the master-key hits per filter number.
_NO_YARDSTICK = {"n_family_scored": 0, "n_family": 0, "n_key_scored": 0, "n_key": 0,
                 "key_counts": {}}


def _yardstick_counts(assignments: pa.Table, threshold: float) -> dict[tuple[str, int], dict]:
    """The yardstick counts of every (model, size) with a valid kernel (see _NO_YARDSTICK)."""
    if "family_cosine" not in assignments.column_names:
        return {}
    keys = {"model_id": assignments.column("model_id"),
            "kernel_size": assignments.column("kernel_size")}
    family = pc.greater_equal(assignments.column("family_cosine"), threshold)  # null: unscored
    key = pc.greater_equal(assignments.column("master_key_cosine"), threshold)
    grouped = pa.table({**keys, "family": family, "key": key}).group_by(
        list(keys), use_threads=False).aggregate(
        [("family", "count"), ("family", "sum"), ("key", "count"), ("key", "sum")])
    out = {(g["model_id"], g["kernel_size"]): {
        "n_family_scored": g["family_count"], "n_family": g["family_sum"] or 0,
        "n_key_scored": g["key_count"], "n_key": g["key_sum"] or 0, "key_counts": {}}
        for g in grouped.to_pylist()}
    hits = pa.table({**keys, "master_key": assignments.column("master_key")}).filter(
        pc.fill_null(key, False))
    for g in hits.group_by([*keys, "master_key"], use_threads=False).aggregate(
            [([], "count_all")]).to_pylist():
        out[g["model_id"], g["kernel_size"]]["key_counts"][g["master_key"]] = g["count_all"]
    return out


def _summed_yardstick(size_rows: list[dict]) -> dict:
    """The all-sizes row's yardstick counts: the sum over the model's sizes."""
    total = {name: sum(r[name] for r in size_rows) for name in _NO_YARDSTICK if name != "key_counts"}
    counts: dict[int, int] = {}
    for r in size_rows:
        for number, n in r["key_counts"].items():
            counts[number] = counts.get(number, 0) + n
    return {**total, "key_counts": counts}


def _with_yardstick_fractions(row: dict) -> dict:
    """family_fraction where every valid kernel was scored (assignments before schema 1.6 have
    no score); the master-key columns where any 7x7 kernel was."""
    n_valid = row["n_filters"] - row["n_invalid"]
    row["family_fraction"] = (row["n_family"] / n_valid
                              if n_valid and row["n_family_scored"] == n_valid else None)
    scored = row["n_key_scored"]
    row["master_key_fraction"] = row["n_key"] / scored if scored else None
    row["master_key_counts"] = sorted(row["key_counts"].items()) if scored else None
    return row


def layer_clusterability_table(assignments: pa.Table, metadata: pa.Table | None = None) -> pa.Table:
    """LAYERS rows: clusterability of every depthwise layer, for the fraction-vs-depth view."""
    keys = ["model_id", "layer_index", "layer", "depth", "kernel_size"]
    grouped = _counts(assignments, keys).sort_by([("model_id", "ascending"),
                                                   ("layer_index", "ascending")])
    return with_model_metadata(grouped.to_pylist(), metadata, schemas.LAYERS)


UNCLUSTERED = "unclustered"


def label_shares_table(assignments: pa.Table, templates: pa.Table,
                       metadata: pa.Table | None = None) -> pa.Table:
    """LABEL_SHARES rows: each template label's share of a model's valid kernels, per size and
    over all sizes; kernels under the threshold count as 'unclustered'."""
    labels = {(r["kernel_size"], r["template_id"]): r["label"] for r in templates.to_pylist()}
    valid = assignments.filter(pc.is_null(assignments.column("invalid_reason")))
    counts = pa.table({"model_id": valid.column("model_id"),
                       "kernel_size": valid.column("kernel_size"),
                       "template_id": valid.column("template_id")}).group_by(
        ["model_id", "kernel_size", "template_id"], use_threads=False).aggregate(
        [([], "count_all")])
    tally: dict[tuple[str, int | None, str], int] = {}
    for g in counts.to_pylist():
        label = UNCLUSTERED if g["template_id"] is None else labels.get(
            (g["kernel_size"], g["template_id"]), f"template {g['template_id']}")
        for k in (g["kernel_size"], None):
            key = (g["model_id"], k, label)
            tally[key] = tally.get(key, 0) + g["count_all"]
    totals: dict[tuple[str, int | None], int] = {}
    for (model_id, k, _), n in tally.items():
        totals[model_id, k] = totals.get((model_id, k), 0) + n
    order = sorted(tally, key=lambda t: (t[0], -1 if t[1] is None else t[1], t[2]))
    rows = [{"model_id": m, "kernel_size": k, "label": label, "n_kernels": tally[m, k, label],
             "share": tally[m, k, label] / totals[m, k]} for m, k, label in order]
    return with_model_metadata(rows, metadata, schemas.LABEL_SHARES)


def family_label_shares(label_shares: pa.Table) -> pa.Table:
    """Each label's mean share over the models of each family and kernel size (a model without
    the label counts as 0): the label-share view that keeps its size at any zoo. Columns:
    family ('unknown' when none), kernel_size, n_models, label, share."""
    per_size = label_shares.filter(pc.is_valid(label_shares.column("kernel_size")))
    family = pc.fill_null(per_size.column("family"), "unknown")
    keyed = pa.table({"family": family, "kernel_size": per_size.column("kernel_size"),
                      "model_id": per_size.column("model_id"), "label": per_size.column("label"),
                      "share": per_size.column("share")})
    models = keyed.group_by(["family", "kernel_size"], use_threads=False).aggregate(
        [("model_id", "count_distinct")])
    n_models = {(r["family"], r["kernel_size"]): r["model_id_count_distinct"]
                for r in models.to_pylist()}
    sums = keyed.group_by(["family", "kernel_size", "label"], use_threads=False).aggregate(
        [("share", "sum")]).sort_by([("family", "ascending"), ("kernel_size", "ascending"),
                                     ("label", "ascending")])
    rows = [{"family": r["family"], "kernel_size": r["kernel_size"],
             "n_models": n_models[r["family"], r["kernel_size"]], "label": r["label"],
             "share": r["share_sum"] / n_models[r["family"], r["kernel_size"]]}
            for r in sums.to_pylist()]
    return pa.Table.from_pylist(rows, schema=FAMILY_LABEL_SHARES)


FAMILY_LABEL_SHARES = pa.schema([("family", pa.string()), ("kernel_size", pa.int32()),
                                 ("n_models", pa.int64()), ("label", pa.string()),
                                 ("share", pa.float64())])


def with_model_metadata(rows: list[dict], metadata: pa.Table | None,
                        schema: pa.Schema) -> pa.Table:
    """`rows` as a `schema` table, with the MODEL_METADATA columns `schema` names filled in."""
    if metadata is not None and metadata.num_rows:
        columns = [c for c in schema.names if c in metadata.column_names and c != "model_id"]
        by_model = {r["model_id"]: r for r in metadata.to_pylist()}
        for row in rows:
            info = by_model.get(row["model_id"], {})
            for c in columns:
                row.setdefault(c, info.get(c))
    return pa.Table.from_pylist(rows, schema=schema)


_COUNT_COLUMNS = ("n_filters", "n_invalid", "n_clustered")


def _counts(assignments: pa.Table, keys: list[str]) -> pa.Table:
    """Filters, invalid and clustered kernels per group of `keys`, with the clustered fraction."""
    flags = pa.table({
        **{k: assignments.column(k) for k in keys},
        "invalid": pc.is_valid(assignments.column("invalid_reason")),
        "clustered": pc.is_valid(assignments.column("template_id")),
    })
    grouped = flags.group_by(keys, use_threads=False).aggregate(
        [("invalid", "count"), ("invalid", "sum"), ("clustered", "sum")])
    rows = [_with_fraction({**{k: g[k] for k in keys}, "n_filters": g["invalid_count"],
                            "n_invalid": g["invalid_sum"], "n_clustered": g["clustered_sum"]})
            for g in grouped.to_pylist()]
    return pa.Table.from_pylist(rows, schema=pa.schema(
        [grouped.schema.field(k) for k in keys]
        + [pa.field(c, pa.int64()) for c in _COUNT_COLUMNS]
        + [pa.field("clustered_fraction", pa.float64())]))


def _with_fraction(row: dict) -> dict:
    n_valid = row["n_filters"] - row["n_invalid"]
    row["clustered_fraction"] = row["n_clustered"] / n_valid if n_valid else None
    return row


# Cosine thresholds of the sweep: 0.50, 0.55, ..., 0.95.
SWEEP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def threshold_sweep_table(assignments: pa.Table,
                          thresholds: tuple[float, ...] = SWEEP_THRESHOLDS) -> pa.Table:
    """THRESHOLD_SWEEP rows: how a model's clustered fraction moves with the threshold."""
    encoded = pc.dictionary_encode(assignments.column("model_id")).combine_chunks()
    names = encoded.dictionary.to_pylist()
    model_index = encoded.indices.to_numpy()  # one int per row: no Python strings per kernel
    sizes = assignments.column("kernel_size").to_numpy()
    valid = pc.is_null(assignments.column("invalid_reason")).to_numpy(zero_copy_only=False)
    cosine = pc.fill_null(assignments.column("cosine"), -2.0).to_numpy()
    by_model = np.argsort(model_index, kind="stable")  # each model's rows, one slice apiece
    starts = np.searchsorted(model_index[by_model], np.arange(len(names) + 1))
    rows = []
    for index in np.argsort(names, kind="stable"):
        mine = by_model[starts[index]:starts[index + 1]]
        for k in [None, *sorted(set(np.unique(sizes[mine]).tolist()))]:
            rows_of = mine[valid[mine] & (True if k is None else sizes[mine] == k)]
            cos = np.sort(cosine[rows_of])
            n_valid = len(cos)
            for t in thresholds:
                n = int(n_valid - np.searchsorted(cos, np.float32(t), side="left"))
                rows.append({"model_id": names[index], "kernel_size": k, "threshold": t,
                             "n_valid": n_valid, "n_clustered": n,
                             "clustered_fraction": n / n_valid if n_valid else None})
    return pa.Table.from_pylist(rows, schema=schemas.THRESHOLD_SWEEP)


def format_clusterability(table: pa.Table, max_models: int = 20) -> str:
    """The table as text, models in rows; the all-sizes row first for each model. Above
    `max_models` models (a zoo, where a terminal or a job log cannot hold every row), only the
    all-sizes rows of the most and the least clustered max_models/2 each, and where the rest are.
    Beside the clustered fraction stand the training-free yardstick's shares (families, master
    keys), which no seed moves, and the clustered fraction's range over the seeds' own
    template sets."""
    header = ["model", "k", "filters", "invalid", "clustered", "seed range", "families",
              "master keys", "chance", "top1"]
    lines = [header]
    rows = table.to_pylist()
    n_models = len({r["model_id"] for r in rows})
    note = ""
    if n_models > max_models:
        overall = sorted((r for r in rows if r["kernel_size"] is None),
                         key=lambda r: -(r["clustered_fraction"] or 0.0))
        half = max_models // 2
        rows = overall[:half] + overall[-half:]
        note = (f"\n({n_models} models: the {half} most and the {half} least clustered, all kernel "
                f"sizes; every row is in reports/clusterability.parquet and on the report page)")
    for r in rows:
        lines.append([
            r["model_id"], "all" if r["kernel_size"] is None else f"{r['kernel_size']}x"
            f"{r['kernel_size']}", str(r["n_filters"]), str(r["n_invalid"]),
            pct_text(r["clustered_fraction"]),
            range_text(r.get("clustered_fraction_seed_min"), r.get("clustered_fraction_seed_max")),
            pct_text(r["family_fraction"]),
            pct_text(r["master_key_fraction"]), pct_text(r["chance_fraction"]),
            "-" if r["top1"] is None else f"{r['top1']:.3f}"])
    return format_text_table(lines) + note


def format_text_table(lines: list[list[str]], left_aligned: int | set[int] = 1) -> str:
    """Rows of cells as aligned text: the first `left_aligned` columns (or those whose indices
    it holds) to the left, the rest right."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    left = set(range(left_aligned)) if isinstance(left_aligned, int) else left_aligned
    return "\n".join("  ".join(c.ljust(w) if i in left else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths))).rstrip()
                     for line in lines)


def range_text(low: float | None, high: float | None) -> str:
    """'60.1-64.0%': a seed range, '-' where there is none."""
    if low is None or high is None:
        return "-"
    return f"{100 * low:.1f}-{100 * high:.1f}%"


def pct_text(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# (model_id, kernel_size) -> valid kernels, and per (family, polarity): kernels on such a
# template under the consensus, and under each seed's own set (None without seed sets)
PatternCounts = dict[tuple[str, int], tuple[int, dict[tuple[str, str | None],
                                                      tuple[int, np.ndarray | None]]]]


def pattern_counts(assignments: pa.Table, templates: pa.Table,
                   seed_templates: pa.Table | None) -> PatternCounts:
    """Kernels per family x polarity of their template, consensus and per seed, per model and
    size. Counted model by model so the report can add the zoo's rows over its batches; with
    array counts (one bincount per seed), not a Python step per kernel."""
    names = _pattern_lookup(templates, None)
    seed_names = _pattern_lookup(seed_templates, "seed_index") if seed_templates else {}
    patterns = sorted(set(names.values()) | set(seed_names.values()),
                      key=lambda p: (p[0], p[1] or ""))
    index = {p: i for i, p in enumerate(patterns)}
    # hashed, not sorted: np.unique over 1.4M strings and (size, id) pairs was most of the
    # report stage of a 300-model zoo (9.8 of 16.7 s)
    encoded = pc.dictionary_encode(assignments.column("model_id").combine_chunks())
    model_ids = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    model_of = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    sizes = assignments.column("kernel_size").to_numpy()
    size_values, size_of = np.unique(sizes, return_inverse=True)
    group = model_of * len(size_values) + size_of
    n_groups = len(model_ids) * len(size_values)
    valid = np.asarray(pc.is_null(assignments.column("invalid_reason")))
    n_valid = np.bincount(group[valid], minlength=n_groups)
    template = pc.fill_null(assignments.column("template_id"), -1).to_numpy()
    found = seed_template_id_matrix(assignments) if seed_names else None
    seed_ids = found[0] if found is not None else None
    if found is not None:  # each (model, size)'s number of seeds
        group_seeds = np.zeros(n_groups, np.int64)
        np.maximum.at(group_seeds, group, found[1])

    def counted(ids: np.ndarray, seed: int | None) -> np.ndarray:
        """(groups, patterns) counts of the valid kernels whose template `ids` names."""
        which = valid & (ids >= 0)
        pattern = (_pattern_of(sizes[which], ids[which], seed,
                               names if seed is None else seed_names, index)
                   if which.any() else np.zeros(0, np.int64))
        return np.bincount(group[which] * len(patterns) + pattern,
                           minlength=n_groups * len(patterns)).reshape(n_groups, -1)

    consensus = counted(template, None)
    per_seed = (np.stack([counted(seed_ids[:, i], i) for i in range(seed_ids.shape[1])], axis=2)
                if seed_ids is not None else None)
    present = np.bincount(group, minlength=n_groups) > 0  # (model, size) pairs with a kernel
    counts: PatternCounts = {}
    for g in np.flatnonzero(present):
        model_id, k = model_ids[g // len(size_values)], size_values[g % len(size_values)]
        seen = consensus[g] > 0
        if per_seed is not None:
            seen |= per_seed[g].any(axis=1)
        counts[(str(model_id), int(k))] = (int(n_valid[g]), {
            patterns[p]: (int(consensus[g, p]),
                          None if per_seed is None or not group_seeds[g]
                          else per_seed[g, p, :group_seeds[g]])
            for p in np.flatnonzero(seen)})
    return counts


def _pattern_of(sizes: np.ndarray, ids: np.ndarray, seed: int | None, names: dict,
                index: dict) -> np.ndarray:
    """Pattern index of each (size, template id) of seed `seed` (None: the consensus), looked
    up in a dense table over the (size, id) pairs: O(n), where np.unique sorted the pairs."""
    width = int(ids.max()) + 1
    keys = sizes.astype(np.int64) * width + ids
    table = np.full(int(sizes.max()) * width + width, -1, np.int64)
    for (k, s, t), pattern in names.items():
        if s == seed and t < width and k * width + t < len(table):
            table[k * width + t] = index[pattern]
    looked_up = table[keys]
    if (looked_up < 0).any():  # a kernel on a template the table does not hold
        bad = int(np.flatnonzero(looked_up < 0)[0])
        raise KeyError((int(sizes[bad]), seed, int(ids[bad])))
    return looked_up


def _pattern_lookup(templates: pa.Table, seed_column: str | None
                    ) -> dict[tuple[int, int | None, int], tuple[str, str | None]]:
    """(kernel size, seed index or None, template id) -> (family, polarity)."""
    seeds = templates.column(seed_column).to_pylist() if seed_column else [None] * len(templates)
    return {(k, s, t): (f, p) for k, s, t, f, p in zip(
        templates.column("kernel_size").to_pylist(), seeds,
        templates.column("template_id").to_pylist(), templates.column("family").to_pylist(),
        templates.column("polarity").to_pylist())}


def pattern_shares_table(counts: PatternCounts) -> pa.Table:
    """PATTERN_SHARES rows: per model and size, then the zoo's (every model pooled) per size."""
    zoo: dict[int, list] = {}
    rows = []
    for (model_id, k), (n_valid, found) in sorted(counts.items()):
        pooled = zoo.setdefault(k, [0, {}])
        pooled[0] += n_valid
        for pattern, (n, per_seed) in found.items():
            into = pooled[1].setdefault(pattern, [0, None])
            into[0] += n
            if per_seed is not None:
                into[1] = per_seed.copy() if into[1] is None else into[1] + per_seed
        rows += _pattern_rows(model_id, k, n_valid, found)
    for k, (n_valid, found) in sorted(zoo.items()):
        rows += _pattern_rows(None, k, n_valid, {p: tuple(v) for p, v in found.items()})
    return pa.Table.from_pylist(rows, schema=schemas.PATTERN_SHARES)


def _pattern_rows(model_id: str | None, k: int, n_valid: int, found: dict) -> list[dict]:
    """With MEDIAN_MIN_SEEDS seeds or more the headline share is the median of the seeds' own,
    as the clustered fraction's (_with_seed_range): the consensus's names move with its
    template count, and a template near a family boundary is named one way or the other as it
    lands, taking its share with it (METHOD.md 4b)."""
    out = []
    for (family, polarity), (n, per_seed) in sorted(found.items(),
                                                    key=lambda item: (item[0][0], item[0][1] or "")):
        seeds = per_seed is not None and n_valid
        consensus = n / n_valid if n_valid else 0.0
        out.append({"model_id": model_id, "kernel_size": k, "family": family,
                    "polarity": polarity, "n_valid": n_valid, "n_kernels": n,
                    "share": seed_headline(per_seed, consensus, n_valid),
                    "share_seed_min": float(per_seed.min()) / n_valid if seeds else None,
                    "share_seed_max": float(per_seed.max()) / n_valid if seeds else None,
                    "share_consensus": consensus})
    return out
