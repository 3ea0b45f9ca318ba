"""Stage 4: turn a trained 1-D autoencoder (or k-means, the paper's fallback) into templates.

Sweep the code over [0, 1], decode, keep one candidate per direction (merge near-duplicates by
cosine), then keep only candidates that attract kernels: the one with the smallest share is
dropped and the shares recomputed, until every template holds at least `min_share` of kernels.
Last, each template moves to the mean of its close members and duplicates merge once more.
`find_missed_patterns` then says which recurring patterns no template reaches. METHOD.md
explains each choice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

import schemas
from pipeline.arrays import matrices_to_list_array
from pipeline.assign import DEFAULT_THRESHOLD, TemplateIndex, spherical_kmeans
from pipeline.autoencoder import KernelAutoencoder, decode_sweep, load_autoencoder
from pipeline.families import label_templates
from pipeline.preprocess import VALID, centre_and_normalise
from pipeline.storage import as_location, write_bytes_atomic
from pipeline.train import autoencoder_path, kernel_sizes_of, load_normalised_kernels


@dataclass
class TemplateConfig:
    sweep_points: int = 512  # codes decoded evenly over [0, 1]
    merge_cosine: float = 0.9  # candidates closer than this to a kept one are duplicates
    min_share: float = 0.01  # a template must be nearest for at least this share of kernels
    refine_steps: int = 3  # mean-of-members updates after selection (0 = decoded templates only)
    refine_min_cosine: float = 0.8  # only members at least this close move a template
    sign_invariant: bool = False  # a kernel and its negative are one pattern (paper: False)
    method: str = "autoencoder"  # 'autoencoder' (the paper's 1-D code) or 'kmeans' (fallback)
    n_clusters: int = 16  # k-means clusters before merging, with method='kmeans'


@dataclass
class TemplateSet:
    weights: np.ndarray  # (n, k*k), centred, unit norm
    codes: np.ndarray  # (n,) code that decodes to each; NaN for k-means templates
    n_kernels: np.ndarray  # (n,) kernels nearest to each
    share: np.ndarray  # (n,) n_kernels / all kernels


def merge_near_duplicates(candidates: np.ndarray, merge_cosine: float,
                          sign_invariant: bool = False) -> np.ndarray:
    """Indices of candidates kept, in order, each below `merge_cosine` to every earlier kept one
    (in absolute value when a template and its negative are one pattern)."""
    kept: list[int] = []
    for i, vector in enumerate(candidates):
        similarity = candidates[kept] @ vector
        if sign_invariant:
            similarity = np.abs(similarity)
        if not kept or float(np.max(similarity)) < merge_cosine:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def keep_attracting(candidates: np.ndarray, kernels: np.ndarray, min_share: float,
                    sign_invariant: bool = False) -> np.ndarray:
    """Indices of candidates that stay nearest to >= min_share of kernels once weaker ones go."""
    alive = np.arange(len(candidates))
    while True:
        counts = _nearest_counts(candidates[alive], kernels, sign_invariant)
        weakest = int(np.argmin(counts))
        if len(alive) == 1 or counts[weakest] >= min_share * len(kernels):
            return alive
        alive = np.delete(alive, weakest)


def refine_to_member_means(templates: np.ndarray, kernels: np.ndarray, steps: int,
                           min_cosine: float, sign_invariant: bool = False) -> np.ndarray:
    """Move each template to the normalised mean of its close members (trimmed spherical k-means).

    A 1-D decoder traces a curve that passes near, not through, each cluster centre, and may
    cut one cluster in two; after this step the two halves land together and merge. Members
    below `min_cosine` (background kernels that merely have no better template) do not pull,
    unless that would leave fewer than half of a template's members: then the closer half pull.
    """
    templates = templates.copy()
    for _ in range(steps):
        ids, cosines, signs = TemplateIndex(templates, sign_invariant).nearest_with_sign(kernels)
        aligned = kernels * signs[:, None]  # members matched to -T pull as their negative
        for t in range(len(templates)):
            mine = ids == t
            if not mine.any():
                continue
            # the close members, or the closer half where the template starts off-centre
            floor = min(min_cosine, float(np.median(cosines[mine])))
            members = aligned[mine & (cosines >= floor)]
            if len(members):
                mean = members.mean(axis=0)
                mean -= mean.mean()
                norm = np.linalg.norm(mean)
                if norm > 0:
                    templates[t] = mean / norm
    return templates


def discover_templates(model: KernelAutoencoder, kernels: np.ndarray,
                       config: TemplateConfig | None = None) -> TemplateSet:
    """Templates of one kernel size from its autoencoder and its (centred, unit-norm) kernels."""
    config = config or TemplateConfig()
    codes, decoded = decode_sweep(model, config.sweep_points)
    candidates, why = centre_and_normalise(decoded)
    usable = why == VALID
    if not usable.any():
        raise ValueError("the autoencoder decodes only constant kernels; train it longer")
    return select_templates(candidates[usable], codes[usable], kernels, config)


def kmeans_templates(kernels: np.ndarray, config: TemplateConfig, seed: int = 0) -> TemplateSet:
    """The paper's fallback (its appendix, for MobileNetV3): spherical k-means on the kernels."""
    candidates, why = centre_and_normalise(spherical_kmeans(kernels, config.n_clusters, seed))
    candidates = candidates[why == VALID]
    return select_templates(candidates, np.full(len(candidates), np.nan, np.float32), kernels,
                            config)


def select_templates(candidates: np.ndarray, codes: np.ndarray, kernels: np.ndarray,
                     config: TemplateConfig) -> TemplateSet:
    """Merge, keep those that attract kernels, refine, merge again (see the module docstring)."""
    invariant = config.sign_invariant
    merged = merge_near_duplicates(candidates, config.merge_cosine, invariant)
    codes, candidates = codes[merged], candidates[merged]
    kept = keep_attracting(candidates, kernels, config.min_share, invariant)
    codes, candidates = codes[kept], candidates[kept]
    if config.refine_steps:
        candidates = refine_to_member_means(candidates, kernels, config.refine_steps,
                                            config.refine_min_cosine, invariant)
        merged = merge_near_duplicates(candidates, config.merge_cosine, invariant)
        codes, candidates = codes[merged], candidates[merged]
    counts = _nearest_counts(candidates, kernels, invariant)
    return TemplateSet(weights=candidates, codes=codes, n_kernels=counts,
                       share=counts / max(len(kernels), 1))


def find_missed_patterns(templates: np.ndarray, kernels: np.ndarray, threshold: float,
                         min_share: float = 0.02, sign_invariant: bool = False,
                         seed: int = 0) -> list[tuple[np.ndarray, float]]:
    """Recurring patterns the templates miss: (centre, share) of each group of kernels that are
    below `threshold` to every template yet within it of a common centre, holding at least
    `min_share` of all kernels. Found by spherical k-means over the unclustered kernels."""
    _, cosines = TemplateIndex(templates, sign_invariant).nearest(kernels)
    unclustered = kernels[cosines < threshold]
    floor = min_share * len(kernels)
    if len(unclustered) < max(floor, 1):
        return []
    n_clusters = int(min(16, max(1, len(unclustered) // max(floor, 1))))
    centres, why = centre_and_normalise(spherical_kmeans(unclustered, n_clusters, seed, 30))
    centres = centres[why == VALID]
    missed = []
    for centre in centres[merge_near_duplicates(centres, 0.9, sign_invariant)]:
        close = unclustered @ centre
        if sign_invariant:
            close = np.abs(close)
        members = unclustered[close >= threshold]
        if len(members) >= floor:
            mean = (members * np.sign(members @ centre)[:, None]).mean(axis=0)
            mean -= mean.mean()
            missed.append((mean / np.linalg.norm(mean), len(members) / len(kernels)))
    return missed


def _nearest_counts(templates: np.ndarray, kernels: np.ndarray,
                    sign_invariant: bool = False) -> np.ndarray:
    ids, _ = TemplateIndex(templates, sign_invariant).nearest(kernels)
    return np.bincount(ids, minlength=len(templates))


def template_table(kernel_size: int, templates: TemplateSet) -> pa.Table:
    """TEMPLATES rows of one kernel size, named after their nearest analytic template."""
    labels, label_cosines = label_templates(templates.weights, kernel_size)
    n = len(templates.weights)
    return pa.table({
        "template_set": pa.nulls(n, pa.string()),  # stamped once every size is done
        "kernel_size": pa.array(np.full(n, kernel_size), pa.int32()),
        "template_id": pa.array(np.arange(n), pa.int32()),
        "label": pa.array(labels, pa.string()),
        "label_cosine": pa.array(label_cosines, pa.float32()),
        "code": pa.array(templates.codes, pa.float32(), mask=np.isnan(templates.codes)),
        "weights": matrices_to_list_array([templates.weights]),
        "n_kernels": pa.array(templates.n_kernels, pa.int64()),
        "share": pa.array(templates.share, pa.float64()),
    }, schema=schemas.TEMPLATES)



def build_templates(kernel_paths: list[Path], autoencoders_dir: Path,
                    config: TemplateConfig | None = None, seed: int = 0,
                    threshold: float = DEFAULT_THRESHOLD) -> tuple[pa.Table, pa.Table]:
    """TEMPLATES for every kernel size, and MISSED_PATTERNS: recurring patterns (>= 2% of the
    kernels of a size) that no template reaches at `threshold`."""
    config = config or TemplateConfig()
    tables, missed_rows = [], []
    for k in kernel_sizes_of(kernel_paths):
        kernels = load_normalised_kernels(kernel_paths, k, seed=seed)
        if len(kernels) == 0:
            continue
        if config.method == "kmeans":
            found = kmeans_templates(kernels, config, seed)
        else:
            model, _ = load_autoencoder(autoencoder_path(autoencoders_dir, k))
            found = discover_templates(model, kernels, config)
        tables.append(template_table(k, found))
        missed = find_missed_patterns(found.weights, kernels, threshold,
                                      sign_invariant=config.sign_invariant, seed=seed)
        labels, label_cosines = label_templates(np.array([m for m, _ in missed]).reshape(
            len(missed), k * k), k)
        missed_rows += [{"kernel_size": k, "share": share, "label": label, "label_cosine": cos,
                         "weights": weights.tolist()}
                        for (weights, share), label, cos in zip(missed, labels, label_cosines)]
    templates = pa.concat_tables(tables) if tables else schemas.TEMPLATES.empty_table()
    return (with_template_set_id(templates),
            pa.Table.from_pylist(missed_rows, schema=schemas.MISSED_PATTERNS))


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
