"""Arrow schemas of every table dwscan writes, with the meaning and unit of every column.

Writers cast to these schemas (an inferred schema drifts) and stamp the version into the Parquet
metadata, so a reader can tell which contract a file was written under. Each column carries its
description in the field metadata (`description`), which Parquet keeps and `schemas/README.md`
is generated from (`python -m dwscan.schemas`). Bump `SCHEMA_VERSION` on any change: minor for added
columns or tables or a column's changed meaning (said in its description), major for
renamed/removed/retyped ones.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "2.3.0"
VERSION_KEY = b"dwscan.schema_version"
TABLE_KEY = b"dwscan.table"
PATH_KEY = b"dwscan.path"  # where the table lives under OUT/
DESCRIPTION_KEY = b"description"

_SKIPPED_LAYER = pa.struct([("layer", pa.string()), ("shape", pa.string()), ("reason", pa.string())])


def _col(name: str, type_: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable,
                    metadata={DESCRIPTION_KEY: description.encode()})


def _schema(name: str, path: str, about: str, fields: list[pa.Field]) -> pa.Schema:
    metadata = {VERSION_KEY: SCHEMA_VERSION.encode(), TABLE_KEY: name.encode(),
                PATH_KEY: path.encode(), DESCRIPTION_KEY: about.encode()}
    return pa.schema(fields, metadata=metadata)


def description(item: pa.Field | pa.Schema) -> str:
    return (item.metadata or {}).get(DESCRIPTION_KEY, b"").decode()


def _model_id() -> pa.Field:
    return _col("model_id", pa.string(), "model name: hub repo id, or the local file's name",
                nullable=False)


def _kernel_size(all_sizes_row: bool = False) -> pa.Field:
    if all_sizes_row:
        return _col("kernel_size", pa.int32(), "k of the k x k kernels; null on the all-sizes row")
    return _col("kernel_size", pa.int32(), "k of the k x k kernel", nullable=False)


def _layer_position() -> list[pa.Field]:
    return [
        _col("layer", pa.string(), "state-dict key of the depthwise weight", nullable=False),
        _col("layer_index", pa.int32(), "position among the model's depthwise layers, from 0",
             nullable=False),
        _col("depth", pa.float32(), "relative depth: layer_index / (n_layers - 1), 0 to 1",
             nullable=False),
    ]


def _model_metadata(full: bool = False) -> list[pa.Field]:
    """Columns every analyst table carries, so each can be read without a join."""
    fields = [
        _col("family", pa.string(), "architecture family, e.g. convnext, efficientnet, mobilenetv3"),
        _col("pretrain", pa.string(),
             "pre-training data: in1k, in22k, in12k, ... (timm model_metadata-in1k.csv or the tag)"),
        _col("top1", pa.float64(), "ImageNet-1k validation top-1 (%) from timm's results table"),
    ]
    if full:
        fields += [
            _col("top5", pa.float64(), "ImageNet-1k validation top-5 (%)"),
            _col("param_count_m", pa.float64(), "parameters, millions (timm results table)"),
            _col("img_size", pa.int32(), "evaluation image size (px) of the top-1 row joined"),
        ]
    return fields


_COUNTS = [
    _col("n_filters", pa.int64(), "depthwise filters (kernels)", nullable=False),
    _col("n_invalid", pa.int64(), "zero, constant or non-finite kernels (never clustered)",
         nullable=False),
    _col("n_clustered", pa.int64(), "valid kernels at cosine >= threshold to a template (of the "
         "consensus, as in the assignments)", nullable=False),
    _col("clustered_fraction", pa.float64(),
         "n_clustered / (n_filters - n_invalid), 0 to 1; null when no valid kernel"),
]

KERNELS = _schema("kernels", "kernels/<model>.parquet", "one row per depthwise filter, raw weights", [
    _model_id(), *_layer_position(),
    _col("channel", pa.int32(), "output channel within the layer", nullable=False),
    _kernel_size(),
    _col("weights", pa.list_(pa.float32()), "k*k raw weights, row-major", nullable=False),
])

MODELS = _schema("models", "models.parquet", "one row per scanned checkpoint, failures included", [
    _model_id(),
    _col("revision", pa.string(), "hub commit sha the weights were read at; null for local files"),
    _col("source", pa.string(), "path or hf:// URI the weights came from", nullable=False),
    _col("accuracy_key", pa.string(), "key into timm's results tables (`arch.tag`)"),
    _col("architecture", pa.string(), "timm config.json `architecture`"),
    _col("pretrained_tag", pa.string(), "timm config.json `pretrained_cfg.tag`"),
    _col("input_size", pa.string(), "timm `pretrained_cfg.input_size`, e.g. 3x224x224"),
    _col("status", pa.string(), "ok | skipped (no depthwise layer) | failed", nullable=False),
    _col("error", pa.string(), "one-line reason when failed or skipped"),
    _col("warnings", pa.string(),
         "one line: what was ignored in the model's config.json (unreadable, or a field of the "
         "wrong type), '; '-separated; null when nothing was"),
    _col("n_layers", pa.int32(), "depthwise layers extracted", nullable=False),
    _col("n_filters", pa.int64(), "depthwise filters extracted", nullable=False),
    _col("bytes_fetched", pa.int64(), "bytes downloaded from the hub; null for local files"),
    _col("range_support", pa.string(),
         "yes: the hub answered every range read with exactly the range | no: it sent whole "
         "files (Range ignored, as some mirrors do), each read in one pass up to its last wanted "
         "byte | null: local files, or no range read (pytorch_model.bin only, or failed before)"),
    _col("attempts", pa.int32(),
         "scans of this revision so far (a failed model is retried up to --max-attempts)"),
    _col("scanned_at", pa.timestamp("ms", tz="UTC"),
         "when this row's scan started (UTC, whole seconds); it also names the scan's pending "
         "kernels files until they are committed"),
    _col("peak_memory_bytes", pa.int64(),
         "peak resident memory (VmHWM) of the worker process while it read this model, bytes; "
         "null where /proc is not available"),
    _col("skipped_layers", pa.list_(_SKIPPED_LAYER),
         "depthwise-like weights not kept (non-square), with the reason", nullable=False),
    _col("last_error", pa.string(),
         "one-line reason the latest scan of this model failed while the row is 'ok': its data "
         "(this row, its kernels and assignment) is from its last good scan (scanned_at), kept; "
         "null once a scan succeeds"),
    _col("last_attempt_at", pa.timestamp("ms", tz="UTC"),
         "when that failed scan started (UTC, whole seconds); null with last_error"),
    _col("failed_revision", pa.string(),
         "hub commit sha that failed scan read; null for local files and with last_error"),
    _col("failed_attempts", pa.int32(),
         "failed scans of failed_revision since the last good scan (a re-scan retries it up "
         "to --max-attempts); null with last_error"),
])

def _template_set() -> pa.Field:
    return _col("template_set", pa.string(),
                "id of the template set (a hash of its templates; see template_set.json)")


_ANGLES = ("x to the right, y down the image, measured from +x towards +y (90 = down)")


def _family_fit(with_parameters: bool = True) -> list[pa.Field]:
    """The fitted-family columns (pipeline/method/families.py; METHOD.md section 4)."""
    fields = [
        _col("label", pa.string(), "name built from the fitted family: e.g. 'off-centre DoG "
             "sigma 0.9', 'on-centre spike', 'd/dtheta 30 deg sigma 1.2', '+d2/dtheta2 0 deg sigma "
             "1.0', 'saddle 45 deg sigma 1.0', 'on-cross 0 deg sigma 1.5', or 'other'",
             nullable=False),
        _col("family", pa.string(), "centre-surround | first-derivative | second-derivative | "
             "cross | other (no family fits at cosine >= 0.9)", nullable=False),
    ]
    if with_parameters:
        fields += [
            _col("polarity", pa.string(), "on/off: sign of the centre (centre-surround, cross); "
                 "+/-: sign of the derivative along orientation_deg (first derivatives: always +, "
                 "their sign is the direction); null for 'other'"),
            _col("orientation_deg", pa.float32(), "degrees, [0, 360) for first derivatives (the "
                 "direction the kernel rises), [0, 180) for second derivatives (the axis of the "
                 "dominant curvature; for a saddle the positive one), [0, 90) for crosses; null "
                 f"for centre-surround and 'other'; {_ANGLES}"),
            _col("sigma", pa.float32(), "pixels: centre sigma (centre-surround), the Gaussian's "
                 "sigma (derivatives), long-axis sigma (cross); null for 'other'"),
        ]
    fields.append(_col("fit_cosine", pa.float32(), "cosine of the pattern to its fitted family "
                       "member (the best family's, also for 'other')", nullable=False))
    if with_parameters:
        fields += [
            _col("fit_parameters", pa.map_(pa.string(), pa.float32()), "every fitted parameter "
                 "of the family member (sigma, surround_ratio, surround_weight, dx, dy; sigma, "
                 "angle_deg, psi_deg; sigma, aspect, angle_deg)", nullable=False),
            _col("fit_weights", pa.list_(pa.float32()), "k*k fitted family member, centred, unit "
                 "L2 norm, signed like the template", nullable=False),
        ]
    return fields


TEMPLATES = _schema("templates", "templates.parquet", "the cluster templates, one set per kernel size", [
    _template_set(), _kernel_size(),
    _col("template_id", pa.int32(), "0.. within a kernel size", nullable=False),
    *_family_fit(),
    _col("code", pa.float32(), "autoencoder code (0 to 1) that decodes to it; null for k-means"),
    _col("weights", pa.list_(pa.float32()), "k*k template, centred, unit L2 norm", nullable=False),
    _col("n_kernels", pa.int64(), "kernels nearest to it (any cosine), counted over the kernels "
         "the templates were chosen on: all valid kernels of the size, or a seeded uniform "
         "sample of 500,000 of them", nullable=False),
    _col("n_clustered", pa.int64(), "kernels nearest to it at cosine >= threshold (always > 0), "
         "over the same kernels as n_kernels", nullable=False),
    _col("share", pa.float64(), "n_clustered / clustered kernels of this size", nullable=False),
    _col("share_of_valid", pa.float64(), "n_clustered / valid kernels of this size",
         nullable=False),
    _col("support", pa.int32(), "seeds (of n_seeds) that found it: whose decoded spectrum "
         "(sweep or templates) comes within the threshold of it; at least half, or it would "
         "not be kept (METHOD.md 4b, the consensus; before schema 2.3.0: a template within "
         "cosine 0.9)", nullable=False),
    _col("n_seeds", pa.int32(), "seeds whose support the consensus counted (the trained "
         "ones)", nullable=False),
    _col("master_key", pa.int32(), "7x7 only: nearest (signed cosine) of the eight master-key "
         "filters of Babaiee et al., NeurIPS 2025 (shipped; $DWSCAN_MASTER_KEY_FILTERS overrides), "
         "numbered 1-8 as in their file; null at other sizes"),
    _col("master_key_cosine", pa.float32(), "cosine to that master-key filter"),
])

SEED_TEMPLATES = _schema("seed_templates", "seed_templates.parquet",
                         "each seed's own templates, of which templates.parquet is the consensus; "
                         "the reports' seed ranges are over these sets", [
    _template_set(), _kernel_size(),
    _col("seed_index", pa.int32(), "0..n_seeds-1: the position in assignments' seed_template_ids",
         nullable=False),
    _col("seed", pa.int64(), "the seed of that run (autoencoder or k-means)", nullable=False),
    _col("n_seeds", pa.int32(), "seeds of the run (a seed may have no template at a size)",
         nullable=False),
    _col("template_id", pa.int32(), "0.. within a kernel size and seed", nullable=False),
    *[f for f in _family_fit() if f.name in ("label", "family", "polarity")],
    _col("weights", pa.list_(pa.float32()), "k*k template, centred, unit L2 norm", nullable=False),
    _col("share_of_valid", pa.float64(), "its clustered kernels / valid kernels of this size",
         nullable=False),
])

ASSIGNMENTS = _schema("assignments", "assignments/<model>.parquet", "nearest template of every filter", [
    _model_id(), *_layer_position(),
    _col("channel", pa.int32(), "output channel within the layer", nullable=False),
    _kernel_size(),
    _col("template_id", pa.int32(), "template at cosine >= threshold; null when unclustered or invalid"),
    _col("nearest_template_id", pa.int32(), "nearest template at any cosine; null only when invalid"),
    _col("cosine", pa.float32(), "cosine to the nearest template, -1 to 1; null when invalid"),
    _col("sign", pa.int8(), "kernel ~ sign * template; -1 only with --sign-invariant"),
    _col("invalid_reason", pa.string(), "non_finite | zero | constant; null for valid kernels"),
    _template_set(),
    _col("family_cosine", pa.float32(), "training-free yardstick: |cosine| of the closest member "
         "of the parametric families found (dictionary search, refined within 0.1 below the "
         "threshold; METHOD.md 4e), 0 to 1; null when invalid or assigned before schema 1.6"),
    _col("master_key", pa.int32(), "7x7 only: the master-key filter (1-8) of the best fit "
         "a*F + b (largest |cosine|); null at other sizes, when invalid or before schema 1.6"),
    _col("master_key_cosine", pa.float32(), "cosine of that fit (|cosine| to the filter)"),
    _col("seed_template_ids", pa.list_(pa.int32()), "per seed (seed_templates.seed_index): "
         "the template of that seed's own set at cosine >= threshold, null where unclustered "
         "under it; null when invalid or the set has one seed"),
])

CLUSTERABILITY = _schema("clusterability", "reports/clusterability.parquet",
                         "per (model, kernel size) and per model (kernel_size null)", [
    _model_id(), _kernel_size(all_sizes_row=True), *_COUNTS[:3],
    _col("clustered_fraction", pa.float64(),
         "the headline, 0 to 1, of the valid kernels: with 3 or more seeds the median of "
         "clustered_fraction_by_seed (METHOD.md 4b; since schema 2.1), else "
         "clustered_fraction_consensus; null when no valid kernel"),
    _col("chance_fraction", pa.float64(),
         "clustered fraction of random Gaussian kernels against the same templates (baseline)"),
    _col("threshold", pa.float64(), "cosine threshold used", nullable=False),
    _col("sign_invariant", pa.bool_(), "kernel and its negative counted as one pattern",
         nullable=False),
    _col("accuracy_key", pa.string(), "key into timm's results tables (`arch.tag`)"),
    *_model_metadata(full=True),
    _template_set(),
    _col("family_fraction", pa.float64(), "training-free yardstick: share of the valid kernels "
         "within cosine `threshold` of some member of the parametric families (any width, "
         "orientation, polarity; METHOD.md 4e); no seed or template moves it; null where the "
         "assignments predate schema 1.6"),
    _col("master_key_fraction", pa.float64(), "share of the valid 7x7 kernels whose best fit "
         "a*F + b to one of the eight master-key filters reaches `threshold` (on the all-sizes "
         "row: of the model's 7x7 kernels); null without 7x7 kernels"),
    _col("master_key_counts", pa.map_(pa.int32(), pa.int64()), "filter number (1-8) -> valid "
         "7x7 kernels whose best fit is that filter and reaches `threshold`; filters with none "
         "left out; null without 7x7 kernels"),
    _col("clustered_fraction_seed_min", pa.float64(), "lowest clustered_fraction over the "
         "seeds' own template sets (seed_templates): the headline's seed range; null with one "
         "seed"),
    _col("clustered_fraction_seed_max", pa.float64(), "highest, as above"),
    _col("clustered_fraction_by_seed", pa.list_(pa.float64()), "the clustered fraction under "
         "each seed's own template set, by seed_index (seed_templates); null with one seed"),
    _col("clustered_fraction_consensus", pa.float64(), "n_clustered / (n_filters - n_invalid): "
         "the share of valid kernels within `threshold` of a consensus template, as the "
         "assignments' template_id has them (the headline before schema 2.1); null when no "
         "valid kernel or written before 2.1"),
])

PATTERN_SHARES = _schema("pattern_shares", "reports/pattern_shares.parquet",
                         "share of the valid kernels on a template of each family x polarity, "
                         "per model and kernel size and over the zoo (model_id null), with its "
                         "range over the seeds' own template sets", [
    _col("model_id", pa.string(), "model name; null on the zoo's rows (every model pooled)"),
    _kernel_size(),
    _col("family", pa.string(), "template family (templates.family)", nullable=False),
    _col("polarity", pa.string(), "template polarity (templates.polarity); null where the "
         "family has none"),
    _col("n_valid", pa.int64(), "valid kernels of the model (or zoo) and size", nullable=False),
    _col("n_kernels", pa.int64(), "of those, clustered on a consensus template of this family x "
         "polarity (as the assignments' template_id has them)",
         nullable=False),
    _col("share", pa.float64(), "the headline, of the valid kernels: with 3 or more seeds the "
         "median of the seeds' own shares (METHOD.md 4b; since schema 2.2), else share_consensus",
         nullable=False),
    _col("share_seed_min", pa.float64(), "lowest share over the seeds' own template sets "
         "(each seed's templates named by their own family fit); null with one seed"),
    _col("share_seed_max", pa.float64(), "highest, as above"),
    _col("share_consensus", pa.float64(), "n_kernels / n_valid, with the consensus templates "
         "(the headline before schema 2.2); null when written before 2.2"),
])

LAYERS = _schema("layers", "reports/layers.parquet", "clusterability per model and depthwise layer", [
    _model_id(), *_layer_position(), _kernel_size(), *_COUNTS, *_model_metadata(),
])

LABEL_SHARES = _schema("label_shares", "reports/label_shares.parquet",
                       "share of each template label per model (and kernel size)", [
    _model_id(), _kernel_size(all_sizes_row=True),
    _col("label", pa.string(), "template label of clustered kernels, or 'unclustered'",
         nullable=False),
    _col("n_kernels", pa.int64(), "valid kernels with this label", nullable=False),
    _col("share", pa.float64(), "n_kernels / valid kernels of the model (and size)",
         nullable=False),
    *_model_metadata(),
])

MODEL_METADATA = _schema("model_metadata", "reports/model_metadata.parquet",
                         "what is known of each scanned model: family, pre-training, accuracy", [
    _model_id(),
    _col("accuracy_key", pa.string(), "key into timm's results tables (`arch.tag`)"),
    _col("architecture", pa.string(), "timm architecture name (the key's part before the dot)"),
    *_model_metadata(full=True),
    _col("pretrain_source", pa.string(), "where pretrain came from: metadata | tag | null"),
    _col("accuracy_rows", pa.int32(), "rows timm lists for this key (one per image size)",
         nullable=False),
])

ACCURACY = _schema("accuracy", "reports/accuracy.parquet",
                   "timm's results rows of the scanned models, every image size apart", [
    _model_id(),
    _col("accuracy_key", pa.string(), "timm `arch.tag`", nullable=False),
    _col("img_size", pa.int32(), "evaluation image size (px)"),
    _col("top1", pa.float64(), "ImageNet-1k validation top-1 (%)"),
    _col("top5", pa.float64(), "ImageNet-1k validation top-5 (%)"),
    _col("param_count_m", pa.float64(), "parameters, millions"),
    _col("crop_pct", pa.float64(), "centre-crop fraction of the evaluation"),
    _col("interpolation", pa.string(), "resize interpolation of the evaluation"),
])

CORRELATION = _schema("correlation", "reports/correlation.parquet",
                      "clustered fraction against top-1, and pre-training comparisons", [
    _col("statistic", pa.string(),
         "spearman | pearson (of clustered_fraction with top1) | mean_difference (of "
         "clustered_fraction, group minus in1k)", nullable=False),
    _col("scope", pa.string(), "'all' models, or the family or pre-training group compared",
         nullable=False),
    _kernel_size(all_sizes_row=True),
    _col("n", pa.int32(), "models in the estimate (in the group, for mean_difference)",
         nullable=False),
    _col("n_reference", pa.int32(), "in1k models compared against (mean_difference only)"),
    _col("estimate", pa.float64(), "the correlation coefficient, or the difference of means"),
    _col("ci_low", pa.float64(), "bootstrap 95% interval, lower end (percentile, models resampled)"),
    _col("ci_high", pa.float64(), "bootstrap 95% interval, upper end"),
    _col("note", pa.string(), "caveats, e.g. fewer than 5 models"),
    _col("estimate_seed_min", pa.float64(), "lowest estimate over the seeds' own template sets "
         "(each model's clustered_fraction_by_seed); null with one seed"),
    _col("estimate_seed_max", pa.float64(), "highest, as above"),
])

THRESHOLD_SWEEP = _schema("threshold_sweep", "reports/threshold_sweep.parquet",
                          "clustered fraction at each cosine threshold", [
    _model_id(), _kernel_size(all_sizes_row=True),
    _col("threshold", pa.float64(), "cosine threshold", nullable=False),
    _col("n_valid", pa.int64(), "valid kernels", nullable=False),
    _col("n_clustered", pa.int64(), "valid kernels at cosine >= threshold", nullable=False),
    _col("clustered_fraction", pa.float64(), "n_clustered / n_valid; null when no valid kernel"),
])

MISSED_PATTERNS = _schema("missed_patterns", "reports/missed_patterns.parquet",
                          "recurring patterns that no template reaches", [
    _kernel_size(),
    _col("share", pa.float64(), "of the valid kernels of this size", nullable=False),
    *_family_fit(with_parameters=False),
    _col("weights", pa.list_(pa.float32()), "k*k pattern, centred, unit norm", nullable=False),
])

RUNS = _schema("runs", "runs.parquet", "one row per run on this output folder", [
    _col("run_id", pa.string(), "random id of the run", nullable=False),
    _col("command", pa.string(), "run | rescan | train | assign | report", nullable=False),
    _col("started", pa.timestamp("ms", tz="UTC"), "start, UTC", nullable=False),
    _col("ended", pa.timestamp("ms", tz="UTC"), "end, UTC", nullable=False),
    _col("n_new", pa.int32(), "models scanned for the first time", nullable=False),
    _col("n_changed", pa.int32(), "models re-scanned at a new revision", nullable=False),
    _col("n_unchanged", pa.int32(), "models listed but not re-scanned", nullable=False),
    _col("n_retried", pa.int32(), "failed models scanned again", nullable=False),
    _col("n_failed", pa.int32(), "models that failed in this run", nullable=False),
    _col("retrained", pa.bool_(), "a new template set was trained", nullable=False),
    _col("template_set", pa.string(), "template set the outputs use after this run"),
    _col("n_system_retries", pa.int32(), "tasks run again because Ray lost their worker or node "
         "(a node removed, reclaimed or failed), never for a model's own error; null in rows "
         "written before schema 1.7.0"),
])

SUBSTITUTION = _schema("substitution", "reports/substitution.parquet",
                       "what the patterns do: each model run with kernels swapped for patterns "
                       "(dwscan substitute), one row per model and variant", [
    _model_id(),
    _col("variant", pa.string(), "identity | templates | families | master-keys | "
         "shuffled-templates | noise, with '>=T' for a threshold sweep row and ':early', "
         "':middle', ':late' for a third of the depthwise layers; null on the one row of a "
         "model that could not be measured"),
    _col("kind", pa.string(), "the replacement alone: identity | templates | families | "
         "master-keys | shuffled-templates | noise"),
    _col("threshold", pa.float64(), "cosine at or above which a kernel counts as clustered "
         "(and is replaced); null for identity"),
    _col("scope", pa.string(), "depthwise layers replaced: all | early | middle | late "
         "(relative depth < 1/3, < 2/3, else)"),
    _col("status", pa.string(), "ok | skipped (the variant or model cannot be measured: "
         "reason) | failed (the model: reason)", nullable=False),
    _col("reason", pa.string(), "one line: why skipped or failed"),
    _col("architecture", pa.string(), "timm architecture the network was rebuilt with"),
    _col("n_kernels", pa.int64(), "depthwise kernels of the model"),
    _col("n_replaced", pa.int64(), "kernels this variant replaced"),
    _col("replaced_fraction", pa.float64(), "n_replaced / n_kernels, 0 to 1"),
    _col("n_images", pa.int64(), "images every measure of the row is over", nullable=False),
    _col("image_set", pa.string(), "which images: the default smoke set (crops of one photo) "
         "or the --images folder"),
    _col("top1_agreement", pa.float64(), "share of images whose top-1 class is the unmodified "
         "model's, 0 to 1 (identity: exactly 1)"),
    _col("mean_kl", pa.float64(), "mean over images of KL(unmodified softmax || variant "
         "softmax), nats"),
    _col("top1_accuracy", pa.float64(), "variant's top-1 accuracy on a labelled --images "
         "folder, 0 to 1; null without labels"),
    _col("baseline_top1_accuracy", pa.float64(), "the unmodified model's top-1 accuracy on "
         "the same images; null without labels"),
    _col("device", pa.string(), "cpu or cuda"),
    _col("model_seconds", pa.float64(), "wall seconds for the model: read, rebuild, every "
         "variant over every image"),
    _template_set(),
    _col("measured_at", pa.timestamp("ms", tz="UTC"), "when the model was measured (UTC)"),
])

ALL = {s.metadata[TABLE_KEY].decode(): s for s in (
    KERNELS, MODELS, TEMPLATES, SEED_TEMPLATES, ASSIGNMENTS, CLUSTERABILITY, PATTERN_SHARES,
    LAYERS, LABEL_SHARES,
    MODEL_METADATA, ACCURACY, CORRELATION, THRESHOLD_SWEEP, MISSED_PATTERNS, RUNS, SUBSTITUTION)}


def table_path(schema: pa.Schema) -> str:
    return schema.metadata[PATH_KEY].decode()


def markdown() -> str:
    """Every table and column as Markdown: the text of schemas/README.md."""
    out = [f"# dwscan output tables (schema version {SCHEMA_VERSION})", "",
           "Generated by `python -m dwscan.schemas` from the Arrow schemas in `schemas/__init__.py`; "
           "every Parquet file carries its table name and version in its metadata "
           f"(`{VERSION_KEY.decode()}`, `{TABLE_KEY.decode()}`) and each column's description "
           "in the field metadata. `dwscan query` names a view after each table.", ""]
    for name, schema in ALL.items():
        out += [f"## {name}", "", f"`OUT/{table_path(schema)}`: {description(schema)}.", "",
                "| column | type | null | meaning |", "| --- | --- | --- | --- |"]
        out += [f"| `{f.name}` | {f.type} | {'yes' if f.nullable else 'no'} | {description(f)} |"
                for f in schema]
        out.append("")
    return "\n".join(out)
