"""Stage 4: turn trained 1-D autoencoders (or k-means, the paper's fallback) into templates.

Per seed, as the paper: sweep the code over [0, 1], decode, keep one candidate per direction
(merge near-duplicates by cosine), drop candidates nearest to fewer than `candidate_min_share`
of all kernels, move each to the mean of its close members and merge duplicates once more; then
keep only templates that real patterns need: the one nearest to the fewest clustered kernels
(cosine >= threshold) is dropped and the counts recomputed, until every template holds at least
`min_share` of the clustered kernels; then add back, by the cover's rule, places the sweep passes
through that cover kernels no kept template reaches, and refine and keep once more. The
templates of the run are the consensus of its seeds (`consensus_templates`), each with its
support. Every template is named by its fitted family (`dwscan.method.families`) and, at 7x7,
by the nearest master-key filter.
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
from dwscan.io.template_set import template_set_of, with_template_set_id
from dwscan.memory import release_free_memory
from dwscan.method.autoencoder_config import (
    AutoencoderConfig,
    autoencoder_path,
    member_seeds,
    read_training_records,
)
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
    # add back what the candidates reach and the kept templates miss (_reach_beyond; False: the
    # selection before 2026-12, which left single seeds bimodal on real kernels, METHOD.md 4b)
    reach_back: bool = True
    sign_invariant: bool = False  # a kernel and its negative are one pattern (paper: False)
    method: str = "autoencoder"  # 'autoencoder' (the paper's 1-D code) or 'kmeans' (fallback)
    n_clusters: int = 16  # k-means clusters before merging, with method='kmeans'
    # the consensus over seeds (consensus_templates): its candidates are the density peaks of
    # a sample of the kernels (a kernel at density_cosine weighs e^-1 in the density), the cover
    # is chosen on that sample; a seed's sweep points closer than sweep_thinning to a kept one
    # add nothing to what the seed reaches
    sweep_thinning: float = 0.98
    cover_sample: int = 50_000
    density_cosine: float = 0.95
    # at most this many density peaks, the densest: structureless kernels (an untrained network)
    # have nearly one a kernel, and the cover holds a byte per sample kernel and candidate
    max_candidates: int = 1024
    master_key_filters: str | None = field(default_factory=default_master_key_filters)


@dataclass
class TemplateSet:
    weights: np.ndarray  # (n, k*k), centred, unit norm
    codes: np.ndarray  # (n,) code that decodes to each; NaN for k-means templates
    n_kernels: np.ndarray  # (n,) kernels nearest to each (any cosine)
    n_clustered: np.ndarray  # (n,) of those, kernels at cosine >= threshold
    share: np.ndarray  # (n,) n_clustered / all clustered kernels
    share_of_valid: np.ndarray  # (n,) n_clustered / all kernels


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
    if not len(alive):
        return alive
    # one search; after a drop only the kernels nearest to the dropped candidate move (to their
    # nearest among the rest): the weakest holds the fewest, so each round is a small search
    ids, cosines = TemplateIndex(candidates, sign_invariant).nearest(kernels)
    while len(alive):
        counts = np.bincount(ids[cosines >= threshold], minlength=len(candidates))[alive]
        weakest = int(np.argmin(counts))
        if counts[weakest] > 0 and counts[weakest] >= min_share * counts.sum():
            break
        moved = np.flatnonzero(ids == alive[weakest])
        alive = np.delete(alive, weakest)
        if len(alive) and len(moved):
            near, near_cosines = TemplateIndex(candidates[alive], sign_invariant).nearest(
                kernels[moved])
            ids[moved], cosines[moved] = alive[near], near_cosines
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
        # each template's members, in kernel order (a stable sort, not a mask per template)
        order = np.argsort(ids, kind="stable")
        starts = np.searchsorted(ids[order], np.arange(len(templates) + 1))
        for t in range(len(templates)):
            mine = order[starts[t]:starts[t + 1]]
            if not len(mine):
                continue
            # the close members, or the closer half where the template starts off-centre
            floor = min(min_cosine, float(np.median(cosines[mine])))
            pulling = mine[cosines[mine] >= floor]
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
    config = config or TemplateConfig()
    codes, candidates = _decoded_candidates(model, config)
    return select_templates(candidates, codes, kernels, config, threshold)


def _decoded_candidates(model: KernelAutoencoder, config: TemplateConfig
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The codes and the centred unit templates of the decoded sweep, constant ones dropped."""
    from dwscan.method.autoencoder import decode_sweep

    codes, decoded = decode_sweep(model, config.sweep_points)
    candidates, why = centre_and_normalise(decoded)
    usable = why == VALID
    if not usable.any():
        raise ValueError("the autoencoder decodes only constant kernels; train it longer")
    return codes[usable], candidates[usable]


def kmeans_templates(kernels: np.ndarray, config: TemplateConfig, seed: int = 0,
                     threshold: float = DEFAULT_THRESHOLD) -> TemplateSet:
    """The paper's fallback (its appendix, for MobileNetV3): spherical k-means on the kernels."""
    return kmeans_member(kernels, config, threshold, seed).templates


def select_templates(candidates: np.ndarray, codes: np.ndarray, kernels: np.ndarray,
                     config: TemplateConfig, threshold: float = DEFAULT_THRESHOLD) -> TemplateSet:
    """Merge, keep those that clustered kernels need, refine, merge and keep again; then add the
    places the candidates reach that cover kernels no kept template does, and refine, merge and
    keep once more (see the module docstring)."""
    invariant = config.sign_invariant
    # each kept template is tracked by the candidate it started from (its code)
    origin = merge_near_duplicates(candidates, config.merge_cosine, invariant)
    kept = candidates[origin]
    # loose first: a candidate off a cluster's centre has few members at the threshold until
    # refinement moves it onto the centre, so here every nearest kernel counts
    loose = keep_attracting(kept, kernels, config.candidate_min_share, -np.inf, invariant)
    origin, kept = _refined_and_merged(origin[loose], kept[loose], kernels, config)
    # the rule on clustered kernels holds for the final set
    final = keep_attracting(kept, kernels, config.min_share, threshold, invariant)
    origin, kept = origin[final], kept[final]
    # the merge rule keeps the first of near candidates along the sweep and refinement can move
    # it off a region the rest of the sweep passes through: a seed then lacks a template its own
    # curve reaches, and single seeds fall into two modes (METHOD.md 4b). What the candidates
    # reach beyond the kept templates comes back by the cover's rule, 2% of the covered kernels
    if config.reach_back:
        reach = _reach_beyond(kept, origin, candidates, kernels, config, threshold)
        if len(reach):
            origin, kept = _refined_and_merged(np.concatenate([origin, reach]),
                                               np.concatenate([kept, candidates[reach]]),
                                               kernels, config)
            final = keep_attracting(kept, kernels, config.min_share, threshold, invariant)
            origin, kept = origin[final], kept[final]
    clustered, nearest = _nearest_counts(kept, kernels, threshold, invariant)
    return TemplateSet(weights=kept, codes=codes[origin], n_kernels=nearest,
                       n_clustered=clustered, share=clustered / max(clustered.sum(), 1),
                       share_of_valid=clustered / max(len(kernels), 1))


def _refined_and_merged(origin: np.ndarray, templates: np.ndarray, kernels: np.ndarray,
                        config: TemplateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Templates moved to their members' means (unless refine_steps=0) and merged again, with
    the candidates they started from."""
    if config.refine_steps and len(templates):
        templates = refine_to_member_means(templates, kernels, config.refine_steps,
                                           config.refine_min_cosine, config.sign_invariant)
    merged = merge_near_duplicates(templates, config.merge_cosine, config.sign_invariant)
    return origin[merged], templates[merged]


def _reach_beyond(templates: np.ndarray, origin: np.ndarray, candidates: np.ndarray,
                  kernels: np.ndarray, config: TemplateConfig, threshold: float) -> np.ndarray:
    """Indices of candidates (thinned at sweep_thinning; a decoded sweep's points, or k-means
    centres) that the greedy cover adds to `templates`: each brings at least min_share of the
    kernels covered so far. The candidates the templates started from (`origin`) are not
    offered again: a place a kept template has left is reached by its neighbours."""
    invariant = config.sign_invariant
    pool = merge_near_duplicates(candidates, config.sweep_thinning, invariant)
    pool = pool[~np.isin(pool, origin)]
    if not len(pool):
        return pool
    sample = cover_sample(kernels, config)
    covered = _covers(sample, templates, threshold, invariant).any(axis=1)
    added = _greedy_cover(_covers(sample, candidates[pool], threshold, invariant),
                          config.min_share, covered)
    return pool[np.asarray(added, np.int64)]


def cover_sample(kernels: np.ndarray, config: TemplateConfig) -> np.ndarray:
    """At most config.cover_sample of the kernels, the same rows whatever the run's seed: the
    cover's counts (a 2% share is known to within 0.13 points from 50,000)."""
    if len(kernels) <= config.cover_sample:
        return kernels
    rows = np.random.default_rng(0).choice(len(kernels), config.cover_sample, False)
    return kernels[np.sort(rows)]


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


def template_table(kernel_size: int, templates: TemplateSet, n_seeds: int = 1,
                   master_keys: np.ndarray | None = None,
                   peers: np.ndarray | None = None) -> pa.Table:
    """TEMPLATES rows of one kernel size, each named by its fitted family (where the seeds'
    own templates, `peers`, do not dispute it: fit_families); `master_keys` are the reference
    7x7 filters (only used at 7x7). A plain TemplateSet (one seed's) has the support of all
    `n_seeds`."""
    n = len(templates.weights)
    support = (templates.support if isinstance(templates, ConsensusSet)
               else np.full(n, n_seeds))
    fits = fit_families(templates.weights, kernel_size, peers=peers)
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
        "support": pa.array(support, pa.int32()),
        "n_seeds": pa.array(np.full(n, n_seeds), pa.int32()),
        "master_key": pa.array(key, pa.int32(), mask=None if has_key else np.ones(n, bool)),
        "master_key_cosine": pa.array(key_cosine, pa.float32(),
                                      mask=None if has_key else np.ones(n, bool)),
    }, schema=schemas.TEMPLATES)


def seed_template_table(kernel_size: int, members: list[MemberTemplates]) -> pa.Table:
    """SEED_TEMPLATES rows of one kernel size: every seed's own template set, each named where
    the other seeds' templates do not dispute the name (fit_families)."""
    columns: dict[str, list] = {"seed_index": [], "seed": [], "template_id": [],
                                "share_of_valid": []}
    weights = []
    for index, member in enumerate(members):
        n = len(member.templates.weights)
        columns["seed_index"] += [index] * n
        columns["seed"] += [member.seed] * n
        columns["template_id"] += list(range(n))
        columns["share_of_valid"] += member.templates.share_of_valid.tolist()
        weights.append(member.templates.weights.reshape(n, kernel_size**2))
    stacked = np.concatenate(weights) if weights else np.zeros((0, kernel_size**2), np.float32)
    fits = fit_families(stacked, kernel_size, peers=stacked)
    n = len(stacked)
    return pa.table({
        "template_set": pa.nulls(n, pa.string()),
        "kernel_size": pa.array(np.full(n, kernel_size), pa.int32()),
        "seed_index": pa.array(columns["seed_index"], pa.int32()),
        "seed": pa.array(columns["seed"], pa.int64()),
        "n_seeds": pa.array(np.full(n, len(members)), pa.int32()),
        "template_id": pa.array(columns["template_id"], pa.int32()),
        "label": pa.array([f.label for f in fits], pa.string()),
        "family": pa.array([f.family for f in fits], pa.string()),
        "polarity": pa.array([f.polarity for f in fits], pa.string()),
        "weights": matrices_to_list_array([stacked]),
        "share_of_valid": pa.array(columns["share_of_valid"], pa.float64()),
    }, schema=schemas.SEED_TEMPLATES)


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
                    threshold: float = DEFAULT_THRESHOLD, n_seeds: int = AutoencoderConfig.seeds
                    ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """TEMPLATES (the consensus of each size's seeds), SEED_TEMPLATES (each seed's own set) and
    MISSED_PATTERNS for every kernel size, one size after another. (A default run builds each
    size in the task that trained it instead: dwscan.run.train_templates.)"""
    found = []
    for k in kernel_sizes_of(kernel_paths):
        kernels = None  # the last size's kernels go before this size's are read
        kernels = load_normalised_kernels(kernel_paths, k, seed=seed)
        release_free_memory()
        found.append(templates_of_size(k, kernels, autoencoders_dir, config, seed, threshold,
                                       n_seeds))
    return join_template_tables(found)


def templates_of_size(k: int, kernels: np.ndarray, autoencoders_dir: Path,
                      config: TemplateConfig | None = None, seed: int = 0,
                      threshold: float = DEFAULT_THRESHOLD,
                      n_seeds: int = AutoencoderConfig.seeds
                      ) -> tuple[pa.Table, pa.Table, pa.Table] | None:
    """The TEMPLATES (the consensus of its seeds), SEED_TEMPLATES (each seed's own set, without
    the template set id) and MISSED_PATTERNS rows of kernel size `k` from its centred, unit
    kernels (load_normalised_kernels, as the train stage samples them at `seed`);
    join_template_tables makes the sizes one set. Missed patterns are recurring ones (>= 2% of
    the kernels of the size) that no template reaches at `threshold`. None when there is no
    kernel. The autoencoder's seeds are those the train stage trained (its record, k*.json);
    k-means runs `n_seeds` seeds here. Torch is imported only for the autoencoder (k-means
    runs, the tests' fast ones among them, skip its import)."""
    if len(kernels) == 0:
        return None
    config = config or TemplateConfig()
    master_keys = (read_master_key_filters(config.master_key_filters)
                   if config.master_key_filters else None)
    if config.method == "kmeans":
        members = [kmeans_member(kernels, config, threshold, s)
                   for s in member_seeds(seed, n_seeds)]
    else:
        members = _autoencoder_members(autoencoders_dir, k, kernels, config, threshold)
    found = consensus_templates(members, kernels, config, threshold)
    missed = find_missed_patterns(found.weights, kernels, threshold,
                                  sign_invariant=config.sign_invariant, seed=seed)
    weights = np.array([m for m, _ in missed], np.float32).reshape(len(missed), k * k)
    columns = _fit_columns(fit_families(weights, k), k)
    missed_table = pa.table({
        "kernel_size": pa.array(np.full(len(missed), k), pa.int32()),
        "share": pa.array([share for _, share in missed], pa.float64()),
        **{name: columns[name] for name in ("label", "family", "fit_cosine")},
        "weights": matrices_to_list_array([weights]),
    }, schema=schemas.MISSED_PATTERNS)
    peers = np.concatenate([m.templates.weights.reshape(-1, k * k) for m in members])
    return (template_table(k, found, len(members), master_keys, peers),
            seed_template_table(k, members), missed_table)


def join_template_tables(sizes: list[tuple[pa.Table, pa.Table, pa.Table] | None]
                         ) -> tuple[pa.Table, pa.Table, pa.Table]:
    """templates_of_size's answers for every size as one TEMPLATES table (with its template
    set id), SEED_TEMPLATES (carrying that id) and MISSED_PATTERNS."""
    found = [part for part in sizes if part is not None]
    templates = with_template_set_id(pa.concat_tables([t for t, _, _ in found]) if found
                                     else schemas.TEMPLATES.empty_table())
    set_id = template_set_of(templates) if templates.num_rows else None
    seed_templates = (pa.concat_tables([s for _, s, _ in found]) if found
                      else schemas.SEED_TEMPLATES.empty_table())
    seed_templates = seed_templates.set_column(
        0, schemas.SEED_TEMPLATES.field("template_set"),
        pa.array([set_id] * seed_templates.num_rows, pa.string()))
    missed = (pa.concat_tables([m for _, _, m in found]) if found
              else schemas.MISSED_PATTERNS.empty_table())
    return templates, seed_templates, missed


def _autoencoder_members(autoencoders_dir: Path, k: int, kernels: np.ndarray,
                         config: TemplateConfig, threshold: float) -> list[MemberTemplates]:
    """Each trained seed's templates (the train stage's k{k}.seed{i} files), but for the seeds
    that did not train (the record's `left_out`, untrained_members)."""
    from dwscan.method.autoencoder import load_autoencoder

    record = read_training_records(autoencoders_dir, [k])[k]
    left_out = set(record.get("left_out") or [])
    members = []
    for index, member_seed in enumerate(record["seeds"]):
        if index in left_out:
            continue
        model, _ = load_autoencoder(autoencoder_path(autoencoders_dir, k, index))
        members.append(member_templates(model, kernels, config, threshold, member_seed))
    return members


@dataclass
class MemberTemplates:
    """What one seed found: its selected templates and every candidate it proposes (its decoded
    sweep, thinned, or its k-means centres, plus the selected templates)."""

    seed: int
    templates: TemplateSet
    candidates: np.ndarray


@dataclass
class ConsensusSet(TemplateSet):
    support: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n,) seeds


def member_templates(model: KernelAutoencoder, kernels: np.ndarray, config: TemplateConfig,
                     threshold: float, seed: int) -> MemberTemplates:
    """One autoencoder's templates (as discover_templates) and its thinned template sweep, from
    one decoding of the sweep."""
    codes, sweep = _decoded_candidates(model, config)
    found = select_templates(sweep, codes, kernels, config, threshold)
    sweep = sweep[merge_near_duplicates(sweep, config.sweep_thinning, config.sign_invariant)]
    return MemberTemplates(seed, found, np.concatenate([found.weights, sweep]))


def kmeans_member(kernels: np.ndarray, config: TemplateConfig, threshold: float,
                  seed: int) -> MemberTemplates:
    """One k-means seed's templates and its raw centres as candidates."""
    centres, why = centre_and_normalise(spherical_kmeans(kernels, config.n_clusters, seed))
    centres = centres[why == VALID]
    found = select_templates(centres, np.full(len(centres), np.nan, np.float32), kernels,
                             config, threshold)
    return MemberTemplates(seed, found, np.concatenate([found.weights, centres]))


def member_support(templates: np.ndarray, reaches: list[np.ndarray], cosine: float,
                   sign_invariant: bool = False) -> np.ndarray:
    """Per template: how many seeds have a point (of `reaches`, one array a seed) at least
    `cosine` close to it."""
    support = np.zeros(len(templates), np.int64)
    for points in reaches:
        if len(points) and len(templates):
            similarity = templates @ points.T
            if sign_invariant:
                similarity = np.abs(similarity)
            support += similarity.max(axis=1) >= cosine
    return support


def density_peaks(sample: np.ndarray, density_cosine: float, radius: float, threshold: float,
                  min_share: float, sign_invariant: bool = False, limit: int | None = None,
                  block: int = 64) -> np.ndarray:
    """Kernels of `sample` that are the densest of their neighbourhood: densest first, each not
    within `radius` of one taken before, the first `limit` of them. The density is a von
    Mises-Fisher kernel sum (a kernel at `density_cosine` weighs e^-1); only kernels with at
    least min_share as many kernels within `threshold` as the best-placed one take part, as no
    other could pass the cover's 2% rule. A fixed function of the kernels: no seed moves it."""
    kappa = np.float32(1.0 / (1.0 - density_cosine))
    density = np.empty(len(sample), np.float64)
    reach = np.empty(len(sample), np.int64)
    for start in range(0, len(sample), block):  # a block of rows at a time: 13 MB at 50,000
        similarity = sample[start:start + block] @ sample.T
        if sign_invariant:
            np.abs(similarity, out=similarity)
        reach[start:start + block] = (similarity >= threshold).sum(axis=1)
        similarity -= 1
        similarity *= kappa
        np.exp(similarity, out=similarity)
        density[start:start + block] = similarity.sum(axis=1, dtype=np.float64)
    eligible = np.flatnonzero(reach >= min_share * reach.max()) if len(reach) else reach
    points = sample[eligible[np.argsort(-density[eligible], kind="stable")]]
    suppressed = np.zeros(len(points), bool)
    taken: list[int] = []
    position = 0
    limit = len(points) if limit is None else limit
    while position < len(points) and len(taken) < limit:  # greedy, a block at a time
        batch = np.flatnonzero(~suppressed[position:])[:block] + position
        if not len(batch):
            break
        position = int(batch[-1]) + 1
        within = _covers(points[batch], points[batch], radius, sign_invariant)
        local: list[int] = []
        for j in range(len(batch)):
            if not within[j, local].any():
                local.append(j)
        new = batch[local]
        taken.extend(new.tolist())
        suppressed[position:] |= _covers(points[position:], points[new], radius,
                                         sign_invariant).any(axis=1)
    return points[np.asarray(taken[:limit], np.int64)]


def consensus_templates(members: list[MemberTemplates], kernels: np.ndarray,
                        config: TemplateConfig, threshold: float = DEFAULT_THRESHOLD
                        ) -> ConsensusSet:
    """The templates of several seeds' runs, as one set that another set of seeds reproduces.

    Real kernels form a continuum, and where each seed's curve places its templates along it is
    arbitrary; any rule that picks among the seeds' own points inherits that (METHOD.md 4b).
    So the places come from the kernels and the seeds only say which of them the method
    finds:
    1. candidates: the max_candidates densest density peaks of a fixed sample of the kernels
       (`density_peaks`, at least merge_cosine apart);
    2. the cover: greedily the candidate that brings the most kernels not yet within the
       threshold of a chosen one, while it brings at least min_share of those covered so far;
       then single swaps while one raises the cover;
    3. as a single seed's templates: refine to member means, merge, keep those that hold
       min_share of the clustered kernels;
    4. support: a template stays where at least half the seeds reach it, a point of the seed's
       decoded sweep (or a template of its) within the threshold: the seed's own spectrum has a
       template that would count it clustered.
    A lone seed (`--seeds 1`, the paper's single run) has nothing to agree with: its own
    templates are the set.
    """
    if len(members) == 1:
        own = members[0].templates
        return ConsensusSet(**vars(own), support=np.ones(len(own.weights), np.int64))
    invariant = config.sign_invariant
    need = max(1, -(-len(members) // 2))  # no seed: no template
    sample = cover_sample(kernels, config)
    pool = density_peaks(sample, config.density_cosine, config.merge_cosine, threshold,
                         config.min_share, invariant, config.max_candidates)
    covers = _covers(sample, pool, threshold, invariant)
    chosen = np.asarray(_improve_by_swaps(covers, _greedy_cover(covers, config.min_share)),
                        np.int64)
    _, candidates = _refined_and_merged(chosen, pool[chosen], kernels, config)
    candidates = candidates[keep_attracting(candidates, kernels, config.min_share, threshold,
                                            invariant)]
    support = member_support(candidates, [m.candidates for m in members], threshold, invariant)
    candidates, support = candidates[support >= need], support[support >= need]
    clustered, nearest = _nearest_counts(candidates, kernels, threshold, invariant)
    return ConsensusSet(weights=candidates, codes=np.full(len(candidates), np.nan, np.float32),
                        n_kernels=nearest, n_clustered=clustered,
                        share=clustered / max(clustered.sum(), 1),
                        share_of_valid=clustered / max(len(kernels), 1), support=support)


def _covers(kernels: np.ndarray, candidates: np.ndarray, threshold: float,
            sign_invariant: bool, chunk: int = 8192) -> np.ndarray:
    """(kernels, candidates) booleans: kernel within `threshold` of candidate. In row chunks, so
    the float similarities never exist whole."""
    covers = np.zeros((len(kernels), len(candidates)), bool)
    for start in range(0, len(kernels), chunk):
        similarity = kernels[start:start + chunk] @ candidates.T
        if sign_invariant:
            similarity = np.abs(similarity)
        covers[start:start + chunk] = similarity >= threshold
    return covers


def _greedy_cover(covers: np.ndarray, min_share: float,
                  covered: np.ndarray | None = None) -> list[int]:
    """Candidates in the order they most raise the cover (of the kernels not already `covered`),
    while each brings at least `min_share` of the kernels covered so far (and at least one)."""
    covered = np.zeros(len(covers), bool) if covered is None else covered.copy()
    chosen: list[int] = []
    while covers.shape[1]:
        gains = covers[~covered].sum(axis=0)
        best = int(np.argmax(gains))
        if gains[best] == 0 or gains[best] < min_share * covered.sum():
            break
        chosen.append(best)
        covered |= covers[:, best]
    return chosen


def _improve_by_swaps(covers: np.ndarray, chosen: list[int], max_rounds: int = 20) -> list[int]:
    """Replace one chosen candidate at a time by the one that covers more of what only it
    covered, until no swap helps: the greedy order's early picks are revisited."""
    chosen = list(chosen)
    for _ in range(max_rounds):
        improved = False
        for slot in range(len(chosen)):
            alone = (covers[:, chosen].sum(axis=1) - covers[:, chosen[slot]]) == 0
            gains = covers[alone].sum(axis=0)
            gains[chosen] = -1
            best = int(np.argmax(gains))
            if gains[best] > covers[alone, chosen[slot]].sum():
                chosen[slot] = best
                improved = True
        if not improved:
            break
    return chosen
