"""Stage 4: turn a trained 1-D autoencoder (or k-means, the paper's fallback) into templates.

Sweep the code over [0, 1], decode, keep one candidate per direction (merge near-duplicates by
cosine), drop candidates nearest to fewer than `candidate_min_share` of all kernels, move
each to the mean of its close members and merge duplicates once more. Then keep only templates
that real patterns need: the one nearest to the fewest clustered kernels (cosine >= threshold)
is dropped and the counts recomputed, until every template holds at least `min_share` of the
clustered kernels. Every
template is named by its fitted family (`dwscan.method.families`), compared with a second run of
another seed on a sample (stable or not), and, at 7x7, with the master-key filters.
`find_missed_patterns` then says which recurring patterns no template reaches. METHOD.md
explains each choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from dwscan import schemas
from dwscan.io.arrays import matrices_to_list_array
from dwscan.io.kernels import kernel_sizes_of, load_normalised_kernels
from dwscan.io.template_index import DEFAULT_THRESHOLD, TemplateIndex, spherical_kmeans
from dwscan.io.template_set import with_template_set_id
from dwscan.memory import release_free_memory
from dwscan.method.autoencoder_config import AutoencoderConfig, StabilityRun, autoencoder_path
from dwscan.method.families import (
    MASTER_KEY_SIZE,
    FamilyFit,
    default_master_key_filters,
    fit_families,
    nearest_master_keys,
    read_master_key_filters,
)
from dwscan.method.preprocess import VALID, centre_and_normalise

if TYPE_CHECKING:
    from dwscan.method.autoencoder import KernelAutoencoder


@dataclass
class TemplateConfig:
    sweep_points: int = 512  # codes decoded evenly over [0, 1]
    merge_cosine: float = 0.9  # candidates closer than this to a kept one are duplicates
    min_share: float = 0.02  # a template must be nearest for this share of the clustered kernels
    candidate_min_share: float = 0.01  # before refinement: nearest for this share of all kernels
    refine_steps: int = 3  # mean-of-members updates after selection (0 = decoded templates only)
    refine_min_cosine: float = 0.8  # only members at least this close move a template
    sign_invariant: bool = False  # a kernel and its negative are one pattern (paper: False)
    method: str = "autoencoder"  # 'autoencoder' (the paper's 1-D code) or 'kmeans' (fallback)
    n_clusters: int = 16  # k-means clusters before merging, with method='kmeans'
    stability_check: bool = True  # compare with a second run of another seed (on a sample)
    stability_sample: int = 100_000  # kernels per size the second run trains and selects on
    stability_steps: int = 5000  # step cap of the second run (convergence-stopped, as the first)
    stable_cosine: float = 0.95  # a stable template has a mutual match at least this close
    stable_share_moved: float = 0.02  # ...whose share of clustered kernels moved at most this
    master_key_filters: str | None = field(default_factory=default_master_key_filters)


@dataclass
class TemplateSet:
    weights: np.ndarray  # (n, k*k), centred, unit norm
    codes: np.ndarray  # (n,) code that decodes to each; NaN for k-means templates
    n_kernels: np.ndarray  # (n,) kernels nearest to each (any cosine)
    n_clustered: np.ndarray  # (n,) of those, kernels at cosine >= threshold
    share: np.ndarray  # (n,) n_clustered / all clustered kernels
    share_of_valid: np.ndarray  # (n,) n_clustered / all kernels


@dataclass
class Stability:
    """Each template against its match in a second run with another seed."""

    cosine: np.ndarray  # (n,) cosine to the nearest template of the other run
    other_share: np.ndarray  # (n,) that template's share of the clustered kernels there
    stable: np.ndarray  # (n,) mutual match, cosine and share within the config's limits


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
                    threshold: float = DEFAULT_THRESHOLD, sign_invariant: bool = False
                    ) -> np.ndarray:
    """Indices of candidates that stay nearest to >= min_share of the clustered kernels (cosine
    >= threshold) once weaker ones go; a candidate with no clustered kernel never stays. Noise
    kernels below the threshold keep nothing alive. Empty when no kernel reaches the threshold.
    threshold=-inf counts every kernel (the loose rule used before refinement)."""
    alive = np.arange(len(candidates))
    while len(alive):
        counts, _ = _nearest_counts(candidates[alive], kernels, threshold, sign_invariant)
        weakest = int(np.argmin(counts))
        if counts[weakest] > 0 and counts[weakest] >= min_share * counts.sum():
            break
        alive = np.delete(alive, weakest)
    return alive


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
        for t in range(len(templates)):
            mine = ids == t
            if not mine.any():
                continue
            # the close members, or the closer half where the template starts off-centre
            floor = min(min_cosine, float(np.median(cosines[mine])))
            pulling = mine & (cosines >= floor)
            # members matched to -T pull as their negative (one template's rows at a time: a
            # sign-aligned copy of every kernel would double the stage's memory)
            members = kernels[pulling] * signs[pulling, None]
            if len(members):
                mean = members.mean(axis=0)
                mean -= mean.mean()
                norm = np.linalg.norm(mean)
                if norm > 0:
                    templates[t] = mean / norm
    return templates


def discover_templates(model: KernelAutoencoder, kernels: np.ndarray,
                       config: TemplateConfig | None = None,
                       threshold: float = DEFAULT_THRESHOLD) -> TemplateSet:
    """Templates of one kernel size from its autoencoder and its (centred, unit-norm) kernels."""
    from dwscan.method.autoencoder import decode_sweep

    config = config or TemplateConfig()
    codes, decoded = decode_sweep(model, config.sweep_points)
    candidates, why = centre_and_normalise(decoded)
    usable = why == VALID
    if not usable.any():
        raise ValueError("the autoencoder decodes only constant kernels; train it longer")
    return select_templates(candidates[usable], codes[usable], kernels, config, threshold)


def kmeans_templates(kernels: np.ndarray, config: TemplateConfig, seed: int = 0,
                     threshold: float = DEFAULT_THRESHOLD) -> TemplateSet:
    """The paper's fallback (its appendix, for MobileNetV3): spherical k-means on the kernels."""
    candidates, why = centre_and_normalise(spherical_kmeans(kernels, config.n_clusters, seed))
    candidates = candidates[why == VALID]
    return select_templates(candidates, np.full(len(candidates), np.nan, np.float32), kernels,
                            config, threshold)


def select_templates(candidates: np.ndarray, codes: np.ndarray, kernels: np.ndarray,
                     config: TemplateConfig, threshold: float = DEFAULT_THRESHOLD) -> TemplateSet:
    """Merge, keep those that clustered kernels need, refine, merge and keep again (see the
    module docstring)."""
    invariant = config.sign_invariant
    merged = merge_near_duplicates(candidates, config.merge_cosine, invariant)
    codes, candidates = codes[merged], candidates[merged]
    # loose first: a candidate off a cluster's centre has few members at the threshold until
    # refinement moves it onto the centre, so here every nearest kernel counts
    kept = keep_attracting(candidates, kernels, config.candidate_min_share, -np.inf, invariant)
    codes, candidates = codes[kept], candidates[kept]
    if config.refine_steps and len(candidates):
        candidates = refine_to_member_means(candidates, kernels, config.refine_steps,
                                            config.refine_min_cosine, invariant)
        merged = merge_near_duplicates(candidates, config.merge_cosine, invariant)
        codes, candidates = codes[merged], candidates[merged]
    # the rule on clustered kernels holds for the final set
    kept = keep_attracting(candidates, kernels, config.min_share, threshold, invariant)
    codes, candidates = codes[kept], candidates[kept]
    clustered, nearest = _nearest_counts(candidates, kernels, threshold, invariant)
    return TemplateSet(weights=candidates, codes=codes, n_kernels=nearest, n_clustered=clustered,
                       share=clustered / max(clustered.sum(), 1),
                       share_of_valid=clustered / max(len(kernels), 1))


def second_seed_templates(kernels: np.ndarray, config: TemplateConfig, threshold: float,
                          seed: int, autoencoder: AutoencoderConfig | None,
                          trained: KernelAutoencoder | None = None) -> TemplateSet:
    """The same selection after training (or k-means) with seed + 1 on the stability check's
    sample (StabilityRun): from `trained`, the train stage's second-seed autoencoder, or else
    trained here in this process."""
    run = stability_run(config)
    kernels = run.kernels(kernels, seed)
    if config.method == "kmeans":
        return kmeans_templates(kernels, config, seed + 1, threshold)
    if trained is None:
        from dwscan.method.autoencoder import train_autoencoder

        trained, _ = train_autoencoder(kernels, run.config(autoencoder or AutoencoderConfig()))
    return discover_templates(trained, kernels, config, threshold)


def stability_run(config: TemplateConfig) -> StabilityRun:
    """The second-seed run the stability check asks for."""
    return StabilityRun(sample=config.stability_sample, steps=config.stability_steps)


def compare_runs(found: TemplateSet, other: TemplateSet, config: TemplateConfig) -> Stability:
    """Match each template to the nearest of the other run's; stable when the match is mutual,
    at least `stable_cosine` close, and its share of clustered kernels moved at most
    `stable_share_moved`."""
    n = len(found.weights)
    if not n or not len(other.weights):
        return Stability(np.zeros(n, np.float32), np.zeros(n), np.zeros(n, bool))
    cosines = found.weights @ other.weights.T
    if config.sign_invariant:
        cosines = np.abs(cosines)
    match = cosines.argmax(axis=1)
    mutual = cosines.argmax(axis=0)[match] == np.arange(n)
    best = cosines[np.arange(n), match]
    other_share = other.share[match]
    stable = (mutual & (best >= config.stable_cosine)
              & (np.abs(found.share - other_share) <= config.stable_share_moved))
    return Stability(best.astype(np.float32), other_share, stable)


def find_missed_patterns(templates: np.ndarray, kernels: np.ndarray, threshold: float,
                         min_share: float = 0.02, sign_invariant: bool = False,
                         seed: int = 0) -> list[tuple[np.ndarray, float]]:
    """Recurring patterns the templates miss: (centre, share) of each group of kernels that are
    below `threshold` to every template yet within it of a common centre, holding at least
    `min_share` of all kernels. Found by spherical k-means over the unclustered kernels."""
    if len(templates):
        _, cosines = TemplateIndex(templates, sign_invariant).nearest(kernels)
        unclustered = kernels[cosines < threshold]
    else:  # no template of this size: every kernel is unclustered
        unclustered = kernels
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


def _nearest_counts(templates: np.ndarray, kernels: np.ndarray, threshold: float,
                    sign_invariant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per template: (clustered kernels nearest to it, kernels nearest to it at any cosine)."""
    if not len(templates):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids, cosines = TemplateIndex(templates, sign_invariant).nearest(kernels)
    return (np.bincount(ids[cosines >= threshold], minlength=len(templates)),
            np.bincount(ids, minlength=len(templates)))


def template_table(kernel_size: int, templates: TemplateSet, stability: Stability | None = None,
                   master_keys: np.ndarray | None = None) -> pa.Table:
    """TEMPLATES rows of one kernel size, each named by its fitted family; `master_keys` are the
    reference 7x7 filters (only used at 7x7)."""
    n = len(templates.weights)
    fits = fit_families(templates.weights, kernel_size)
    checked = stability is not None
    key, key_cosine = np.zeros(n, np.int32), np.zeros(n, np.float32)
    has_key = master_keys is not None and kernel_size == MASTER_KEY_SIZE and n > 0
    if has_key:
        key, key_cosine = nearest_master_keys(templates.weights, master_keys)
    return pa.table({
        "template_set": pa.nulls(n, pa.string()),  # stamped once every size is done
        "kernel_size": pa.array(np.full(n, kernel_size), pa.int32()),
        "template_id": pa.array(np.arange(n), pa.int32()),
        **_fit_columns(fits, kernel_size),
        "code": pa.array(templates.codes, pa.float32(), mask=np.isnan(templates.codes)),
        "weights": matrices_to_list_array([templates.weights.reshape(n, kernel_size**2)]),
        "n_kernels": pa.array(templates.n_kernels, pa.int64()),
        "n_clustered": pa.array(templates.n_clustered, pa.int64()),
        "share": pa.array(templates.share, pa.float64()),
        "share_of_valid": pa.array(templates.share_of_valid, pa.float64()),
        "stability_cosine": pa.array(stability.cosine if checked else np.zeros(n), pa.float32(),
                                     mask=None if checked else np.ones(n, bool)),
        "stability_share": pa.array(stability.other_share if checked else np.zeros(n),
                                    pa.float64(), mask=None if checked else np.ones(n, bool)),
        "stable": pa.array(stability.stable if checked else np.zeros(n, bool), pa.bool_(),
                           mask=None if checked else np.ones(n, bool)),
        "master_key": pa.array(key, pa.int32(), mask=None if has_key else np.ones(n, bool)),
        "master_key_cosine": pa.array(key_cosine, pa.float32(),
                                      mask=None if has_key else np.ones(n, bool)),
    }, schema=schemas.TEMPLATES)


def _fit_columns(fits: list[FamilyFit], kernel_size: int) -> dict[str, pa.Array]:
    """The family columns shared by TEMPLATES and MISSED_PATTERNS."""
    n = len(fits)
    return {
        "label": pa.array([f.label for f in fits], pa.string()),
        "family": pa.array([f.family for f in fits], pa.string()),
        "polarity": pa.array([f.polarity for f in fits], pa.string()),
        "orientation_deg": pa.array([f.orientation_deg for f in fits], pa.float32()),
        "sigma": pa.array([f.sigma for f in fits], pa.float32()),
        "fit_cosine": pa.array([f.fit_cosine for f in fits], pa.float32()),
        "fit_parameters": pa.array([list(f.parameters.items()) for f in fits],
                                   pa.map_(pa.string(), pa.float32())),
        "fit_weights": matrices_to_list_array([np.stack([f.weights for f in fits])
                                               if n else np.zeros((0, kernel_size**2))]),
    }


def build_templates(kernel_paths: list[Path], autoencoders_dir: Path,
                    config: TemplateConfig | None = None, seed: int = 0,
                    threshold: float = DEFAULT_THRESHOLD) -> tuple[pa.Table, pa.Table]:
    """TEMPLATES for every kernel size, and MISSED_PATTERNS: recurring patterns (>= 2% of the
    kernels of a size) that no template reaches at `threshold`. Torch is imported only for the
    autoencoder (k-means runs, the tests' fast ones among them, skip its 3 s import)."""
    config = config or TemplateConfig()
    master_keys = (read_master_key_filters(config.master_key_filters)
                   if config.master_key_filters else None)
    tables, missed_tables = [], []
    for k in kernel_sizes_of(kernel_paths):
        kernels = None  # the last size's kernels go before this size's are read
        kernels = load_normalised_kernels(kernel_paths, k, seed=seed)
        release_free_memory()
        if len(kernels) == 0:
            continue
        autoencoder = None
        if config.method == "kmeans":
            found = kmeans_templates(kernels, config, seed, threshold)
        else:
            from dwscan.method.autoencoder import load_autoencoder

            model, meta = load_autoencoder(autoencoder_path(autoencoders_dir, k))
            autoencoder = AutoencoderConfig.from_dict(meta["config"]) if "config" in meta else None
            found = discover_templates(model, kernels, config, threshold)
        stability = None
        if config.stability_check:
            second = autoencoder_path(autoencoders_dir, k, stability_check=True)
            trained = None
            if config.method == "autoencoder" and second.exists():
                from dwscan.method.autoencoder import load_autoencoder

                trained = load_autoencoder(second)[0]
            other = second_seed_templates(kernels, config, threshold, seed, autoencoder, trained)
            stability = compare_runs(found, other, config)
        tables.append(template_table(k, found, stability, master_keys))
        missed = find_missed_patterns(found.weights, kernels, threshold,
                                      sign_invariant=config.sign_invariant, seed=seed)
        weights = np.array([m for m, _ in missed], np.float32).reshape(len(missed), k * k)
        fits = fit_families(weights, k)
        columns = _fit_columns(fits, k)
        missed_tables.append(pa.table({
            "kernel_size": pa.array(np.full(len(missed), k), pa.int32()),
            "share": pa.array([share for _, share in missed], pa.float64()),
            **{name: columns[name] for name in ("label", "family", "fit_cosine")},
            "weights": matrices_to_list_array([weights]),
        }, schema=schemas.MISSED_PATTERNS))
    templates = pa.concat_tables(tables) if tables else schemas.TEMPLATES.empty_table()
    missed = (pa.concat_tables(missed_tables) if missed_tables
              else schemas.MISSED_PATTERNS.empty_table())
    return with_template_set_id(templates), missed


