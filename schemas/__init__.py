"""Arrow schemas of every table dwscan writes.

Writers cast to these schemas (an inferred schema drifts) and stamp the version into the Parquet
metadata, so a reader can tell which contract a file was written under. Bump `SCHEMA_VERSION`
on any change: minor for added columns, major for renamed/removed/retyped ones.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1.3.0"
VERSION_KEY = b"dwscan.schema_version"
TABLE_KEY = b"dwscan.table"

_SKIPPED_LAYER = pa.struct([("layer", pa.string()), ("shape", pa.string()), ("reason", pa.string())])


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    metadata = {VERSION_KEY: SCHEMA_VERSION.encode(), TABLE_KEY: name.encode()}
    return pa.schema(fields, metadata=metadata)


# OUT/kernels/<model>.parquet: one row per depthwise filter, raw weights.
KERNELS = _schema("kernels", [
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("layer", pa.string(), nullable=False),  # state-dict key of the weight
    pa.field("layer_index", pa.int32(), nullable=False),  # position among depthwise layers
    pa.field("depth", pa.float32(), nullable=False),  # layer_index / (n_layers - 1), 0..1
    pa.field("channel", pa.int32(), nullable=False),  # output channel within the layer
    pa.field("kernel_size", pa.int32(), nullable=False),
    pa.field("weights", pa.list_(pa.float32()), nullable=False),  # k*k raw values, row-major
])

# OUT/models.parquet: one row per scanned checkpoint, failures included.
MODELS = _schema("models", [
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("revision", pa.string()),  # hub commit sha; null for local files
    pa.field("source", pa.string(), nullable=False),  # path or URI the weights came from
    pa.field("accuracy_key", pa.string()),  # key into the accuracy table (timm `arch.tag`)
    pa.field("architecture", pa.string()),  # timm config.json `architecture`
    pa.field("pretrained_tag", pa.string()),  # timm config.json `pretrained_cfg.tag`
    pa.field("input_size", pa.string()),  # timm `pretrained_cfg.input_size`, e.g. '3x224x224'
    pa.field("status", pa.string(), nullable=False),  # 'ok' | 'skipped' | 'failed'
    pa.field("error", pa.string()),  # one-line reason when failed or skipped
    pa.field("n_layers", pa.int32(), nullable=False),  # depthwise layers extracted
    pa.field("n_filters", pa.int64(), nullable=False),  # depthwise filters extracted
    pa.field("bytes_fetched", pa.int64()),  # bytes downloaded from the hub; null for local files
    # depthwise-like weights that were not kept (non-square), with the reason
    pa.field("skipped_layers", pa.list_(_SKIPPED_LAYER), nullable=False),
])

# OUT/templates.parquet: the cluster templates, one set per kernel size.
TEMPLATES = _schema("templates", [
    pa.field("kernel_size", pa.int32(), nullable=False),
    pa.field("template_id", pa.int32(), nullable=False),  # 0.. within a kernel size
    pa.field("label", pa.string(), nullable=False),  # nearest named template, or 'unlabelled'
    pa.field("label_cosine", pa.float32(), nullable=False),  # cosine to that named template
    pa.field("code", pa.float32()),  # autoencoder code that decodes to it, 0..1; null for k-means
    pa.field("weights", pa.list_(pa.float32()), nullable=False),  # centred, unit L2 norm
    pa.field("n_kernels", pa.int64(), nullable=False),  # kernels nearest to it (any cosine)
    pa.field("share", pa.float64(), nullable=False),  # n_kernels / valid kernels of this size
])

# OUT/assignments/<model>.parquet: nearest template of every filter.
ASSIGNMENTS = _schema("assignments", [
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("layer", pa.string(), nullable=False),
    pa.field("layer_index", pa.int32(), nullable=False),
    pa.field("depth", pa.float32(), nullable=False),
    pa.field("channel", pa.int32(), nullable=False),
    pa.field("kernel_size", pa.int32(), nullable=False),
    pa.field("template_id", pa.int32()),  # null when unclustered or invalid
    pa.field("nearest_template_id", pa.int32()),  # null only when invalid
    pa.field("cosine", pa.float32()),  # cosine to the nearest template; null when invalid
    pa.field("sign", pa.int8()),  # kernel ~ sign * template; -1 only with --sign-invariant
    pa.field("invalid_reason", pa.string()),  # 'non_finite' | 'zero' | 'constant' | null
])

# OUT/reports/clusterability.parquet: per (model, kernel size) and per model (kernel_size null).
CLUSTERABILITY = _schema("clusterability", [
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("kernel_size", pa.int32()),  # null on the all-sizes row
    pa.field("n_filters", pa.int64(), nullable=False),
    pa.field("n_invalid", pa.int64(), nullable=False),  # zero/constant/non-finite, not clustered
    pa.field("n_clustered", pa.int64(), nullable=False),
    pa.field("clustered_fraction", pa.float64()),  # n_clustered / (n_filters - n_invalid)
    pa.field("chance_fraction", pa.float64()),  # same, for random Gaussian kernels (baseline)
    pa.field("threshold", pa.float64(), nullable=False),  # cosine threshold used
    pa.field("sign_invariant", pa.bool_(), nullable=False),  # kernel and negative folded together
    pa.field("accuracy_key", pa.string()),
    pa.field("top1", pa.float64()),  # ImageNet-1k top-1 (%), null when unknown
])

# OUT/reports/threshold_sweep.parquet: clustered fraction at each cosine threshold.
THRESHOLD_SWEEP = _schema("threshold_sweep", [
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("kernel_size", pa.int32()),  # null on the all-sizes row
    pa.field("threshold", pa.float64(), nullable=False),
    pa.field("n_valid", pa.int64(), nullable=False),
    pa.field("n_clustered", pa.int64(), nullable=False),
    pa.field("clustered_fraction", pa.float64()),  # null when no valid kernel
])

# OUT/reports/missed_patterns.parquet: recurring patterns that no template reaches.
MISSED_PATTERNS = _schema("missed_patterns", [
    pa.field("kernel_size", pa.int32(), nullable=False),
    pa.field("share", pa.float64(), nullable=False),  # of the valid kernels of this size
    pa.field("label", pa.string(), nullable=False),  # nearest named template, or 'unlabelled'
    pa.field("label_cosine", pa.float32(), nullable=False),
    pa.field("weights", pa.list_(pa.float32()), nullable=False),  # centred, unit norm
])

ALL = {s.metadata[TABLE_KEY].decode(): s for s in (KERNELS, MODELS, TEMPLATES, ASSIGNMENTS,
                                                   CLUSTERABILITY, THRESHOLD_SWEEP,
                                                   MISSED_PATTERNS)}
