"""The template index: nearest template by cosine with FAISS, and spherical k-means; and the
dictionary index, the yardstick's exact search over some 200,000 family members.

The templates stage (choosing templates) and the assign stage (assigning every kernel) both
search a set of templates; this module is the one door to FAISS for both. Which FAISS index
backs the search is decided in `_flat_inner_product_index` alone: a GPU flat index when FAISS's GPU
build (the `dwscan[gpu]` extra) sees a GPU, else the CPU one; `DWSCAN_FAISS_DEVICE` overrides it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dwscan.io.arrays import list_column_to_matrix
from dwscan.method.preprocess import centre_and_normalise

if TYPE_CHECKING:
    import faiss

# faiss is imported where an index is built or k-means runs, not with this module: the command
# line and the run driver import this module (DEFAULT_THRESHOLD) and most commands never search.

# Default cosine threshold for "clustered"; METHOD.md section 5 explains the choice.
DEFAULT_THRESHOLD = 0.8


FAISS_DEVICE_ENV = "DWSCAN_FAISS_DEVICE"  # cpu | gpu | auto (default): which index backs search
FAISS_DEVICES = ("auto", "cpu", "gpu")


def choose_index_device(num_gpus: int, has_gpu_api: bool, requested: str = "auto") -> str:
    """"cpu" or "gpu" for the template index. `auto` takes the GPU when FAISS's GPU build sees
    one; `gpu` without one is an error rather than a silent CPU run (the user asked for it)."""
    requested = (requested or "auto").strip().lower()
    if requested not in FAISS_DEVICES:
        raise ValueError(f"{FAISS_DEVICE_ENV}={requested!r}: expected one of {', '.join(FAISS_DEVICES)}")
    gpu_usable = has_gpu_api and num_gpus > 0
    if requested == "gpu" and not gpu_usable:
        raise ValueError(f"{FAISS_DEVICE_ENV}=gpu but FAISS "
                         + ("sees no GPU" if has_gpu_api else "has no GPU support (pip install "
                            "'dwscan[gpu]' after uninstalling faiss-cpu; README)"))
    if requested == "cpu":
        return "cpu"
    return "gpu" if gpu_usable else "cpu"


def index_device() -> str:
    """The device of this process's template indexes: FAISS's build, its GPUs and the env."""
    import faiss

    has_gpu_api = hasattr(faiss, "StandardGpuResources")
    num_gpus = faiss.get_num_gpus() if has_gpu_api else 0
    return choose_index_device(num_gpus, has_gpu_api, os.environ.get(FAISS_DEVICE_ENV, "auto"))


_gpu_resources = None  # one StandardGpuResources per process: it holds the GPU's scratch memory


def _flat_inner_product_index(dim: int) -> faiss.Index:
    """Exact inner-product search, on GPU 0 or the CPU (index_device); the same assignments
    either way, ties aside. The one place that picks a FAISS backend."""
    import faiss

    global _gpu_resources
    index = faiss.IndexFlatIP(dim)
    if index_device() == "cpu":
        return index
    if _gpu_resources is None:
        _gpu_resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_gpu_resources, 0, index)


class TemplateIndex:
    """Exact search over unit-norm templates; on unit-norm queries the inner product is the cosine.

    With `sign_invariant`, a kernel and its negative are the same pattern: the index holds every
    template and its negative, and a match to -T counts as T with sign -1.
    """

    def __init__(self, templates: np.ndarray, sign_invariant: bool = False):
        templates = np.ascontiguousarray(templates, dtype=np.float32)
        norms = np.linalg.norm(templates, axis=1, keepdims=True)
        if templates.ndim != 2 or len(templates) == 0 or (norms <= 0).any():
            raise ValueError("templates must be a non-empty matrix of non-zero rows")
        self.templates = templates / norms
        self.sign_invariant = sign_invariant
        self.index = _flat_inner_product_index(templates.shape[1])
        self.index.add(np.concatenate([self.templates, -self.templates]) if sign_invariant
                       else self.templates)

    def nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(template id, cosine) of the best template for each unit-norm row."""
        ids, cosines, _ = self.nearest_with_sign(vectors)
        return ids, cosines

    def nearest_with_sign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(template id, cosine, sign): the row is closest to sign * template; sign is -1 only
        when sign-invariant."""
        if len(vectors) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int8)
        cosines, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        ids, n = ids[:, 0], len(self.templates)
        signs = np.where(ids >= n, -1, 1).astype(np.int8)
        return ids % n, cosines[:, 0], signs


class DictionaryIndex:
    """Exact sign-invariant search over a large dictionary of members that lie on a few smooth
    families (the yardstick's, about 200,000 members): the same nearest member as a flat search,
    its cosine to float rounding, at a fraction of the work.

    The members are grouped into cells (spherical k-means of a sample); each cell has a unit
    centre c and a radius r, the largest angle of its members from c (members are flipped
    to c's side: polarity is free). By the triangle inequality on angles no member of a cell is
    closer to a query q than cos(max(0, angle(q, c) - r)). Each query first searches its most
    promising cell, then only the cells whose bound beats the best found so far: a kernel near
    some member rules out almost every cell. Numpy, on the CPU whatever `index_device` says (on
    a GPU the flat `TemplateIndex` might be faster: not measured)."""

    MEMBERS_PER_CELL = 64  # k-means with fewer than 39 points a centroid warns, and cells shrink
    MAX_CELLS = 512  # more cells: tighter bounds but more centres to bound against per query
    QUERY_BLOCK = 4096  # queries searched together: bounds the (queries x cell members) scores
    # Angles from float32 dot products near 1 are uncertain by about sqrt(2 * 1e-7): every
    # bound is loosened by this, so no cell is skipped on a rounding error
    ANGLE_SLACK = 2e-3

    def __init__(self, members: np.ndarray, seed: int = 0):
        members = np.ascontiguousarray(members, dtype=np.float32)
        norms = np.linalg.norm(members, axis=1, keepdims=True) if members.ndim == 2 else None
        if norms is None or not len(members) or (norms <= 0).any():
            raise ValueError("members must be a non-empty matrix of non-zero rows")
        members = members / norms
        cell, flip = self._cells_of(members, seed)
        order = np.argsort(cell, kind="stable")
        counts = np.bincount(cell)
        self._order = order  # member id of each row of the cell-sorted blocks
        self._blocks = members[order] * flip[order, None]  # members on their centre's side
        self._flip = flip[order].astype(np.int8)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._cells = np.flatnonzero(counts)  # non-empty cells, in the order of their centres
        centres, radii = [], []
        for j in self._cells:
            block = self._blocks[self._starts[j]:self._starts[j + 1]].astype(np.float64)
            centre = block.mean(axis=0)
            norm = np.linalg.norm(centre)
            centre = centre / norm if norm > 1e-6 else block[0]
            centres.append(centre)
            radii.append(np.arccos(np.clip((block @ centre).min(), -1.0, 1.0)))
        self._centres = np.array(centres)
        self._radii = np.array(radii) + self.ANGLE_SLACK

    @property
    def members(self) -> np.ndarray:
        """The members in their given order and polarity (a copy: the index holds them by cell,
        each on its cell centre's side)."""
        members = np.empty_like(self._blocks)
        members[self._order] = self._blocks * self._flip[:, None]
        return members

    def _cells_of(self, members: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(cell, flip) of each member: the nearest k-means centre by |cosine|, and the sign
        that puts the member on that centre's side."""
        n_cells = min(self.MAX_CELLS, len(members) // self.MEMBERS_PER_CELL)
        if n_cells < 2:
            return np.zeros(len(members), np.int64), np.ones(len(members), np.float32)
        rng = np.random.default_rng(seed)
        sample = rng.choice(len(members), min(len(members), n_cells * self.MEMBERS_PER_CELL),
                            replace=False)
        centres = spherical_kmeans(members[np.sort(sample)], n_cells, seed=seed, iterations=10)
        cell = np.empty(len(members), np.int64)
        flip = np.empty(len(members), np.float32)
        for start in range(0, len(members), self.QUERY_BLOCK):
            scores = members[start:start + self.QUERY_BLOCK] @ centres.T
            best = np.abs(scores).argmax(axis=1)
            cell[start:start + self.QUERY_BLOCK] = best
            flip[start:start + self.QUERY_BLOCK] = np.where(
                scores[np.arange(len(best)), best] < 0, -1.0, 1.0)
        return cell, flip

    def nearest_with_sign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(member id, |cosine|, sign) of each unit-norm row's nearest member by |cosine|: the
        row is closest to sign * member."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.zeros(len(vectors), np.int64)
        cosines = np.zeros(len(vectors), np.float32)
        signs = np.ones(len(vectors), np.int8)
        for start in range(0, len(vectors), self.QUERY_BLOCK):
            part = slice(start, start + self.QUERY_BLOCK)
            ids[part], cosines[part], signs[part] = self._search(vectors[part])
        return ids, cosines, signs

    def _search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        angle = np.arccos(np.clip(np.abs(queries.astype(np.float64) @ self._centres.T), 0, 1))
        bound = np.cos(np.clip(angle - self._radii, 0.0, None))  # (queries, cells)
        best = np.full(len(queries), -1.0, np.float32)
        ids = np.zeros(len(queries), np.int64)
        signs = np.ones(len(queries), np.int8)

        def search_cell(c: int, rows: np.ndarray) -> None:
            j = self._cells[c]
            block = slice(self._starts[j], self._starts[j + 1])
            scores = queries[rows] @ self._blocks[block].T
            pick = np.abs(scores).argmax(axis=1)
            value = scores[np.arange(len(rows)), pick]
            better = np.abs(value) > best[rows]
            rows, pick, value = rows[better], pick[better], value[better]
            best[rows] = np.abs(value)
            ids[rows] = self._order[block][pick]
            signs[rows] = np.where(value < 0, -1, 1) * self._flip[block][pick]

        first = bound.argmax(axis=1)
        for c in np.unique(first):
            search_cell(c, np.flatnonzero(first == c))
        bound[np.arange(len(queries)), first] = -1.0  # searched
        needed = bound > best[:, None]
        for c in np.flatnonzero(needed.any(axis=0)):
            # a cell searched earlier in this loop may have raised the best: skip rows it beat
            rows = np.flatnonzero(needed[:, c] & (bound[:, c] > best))
            if len(rows):
                search_cell(c, rows)
        return ids, best, signs


def spherical_kmeans(vectors: np.ndarray, n_clusters: int, seed: int = 0,
                     iterations: int = 50) -> np.ndarray:
    """Unit-norm centroids of k-means on the sphere (cosine similarity), seeded."""
    import faiss

    kmeans = faiss.Kmeans(vectors.shape[1], min(n_clusters, len(vectors)), niter=iterations,
                          spherical=True, seed=seed, verbose=False)
    kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return kmeans.centroids


def template_indexes(templates: pa.Table, sign_invariant: bool = False) -> dict[int, TemplateIndex]:
    """One index per kernel size from a TEMPLATES table, rows in template_id order."""
    indexes = {}
    for k in sorted(set(templates.column("kernel_size").to_pylist())):
        rows = templates.filter(pc.equal(templates.column("kernel_size"), k)).sort_by("template_id")
        indexes[k] = TemplateIndex(list_column_to_matrix(rows.column("weights"), k * k),
                                   sign_invariant)
    return indexes


def seed_template_indexes(seed_templates: pa.Table | None, sign_invariant: bool = False
                          ) -> dict[int, list[TemplateIndex | None]]:
    """Per kernel size, one index per seed, in seed_index order (None: that seed has no template
    of the size); none for a size of a single seed (its range would be no range). Sizes may
    have different numbers of seeds: a seed that did not train is left out of its size only
    (untrained_members)."""
    if seed_templates is None or not seed_templates.num_rows:
        return {}
    indexes: dict[int, list[TemplateIndex | None]] = {}
    for k in sorted(set(seed_templates.column("kernel_size").to_pylist())):
        of_size = seed_templates.filter(pc.equal(seed_templates.column("kernel_size"), k))
        n_seeds = int(pc.max(of_size.column("n_seeds")).as_py())
        if n_seeds < 2:
            continue
        indexes[k] = []
        for i in range(n_seeds):
            mine = of_size.filter(pc.equal(of_size.column("seed_index"), i))
            indexes[k].append(template_indexes(mine, sign_invariant)[k] if mine.num_rows
                              else None)
    return indexes


def chance_clustered_fraction(index: TemplateIndex, threshold: float, n: int = 100_000,
                              seed: int = 0) -> float:
    """Share of isotropic Gaussian kernels that reach `threshold`: what 'clustered' means by luck."""
    rng = np.random.default_rng(seed)
    noise, _ = centre_and_normalise(rng.standard_normal((n, index.templates.shape[1])))
    _, cosines = index.nearest(noise)
    return float((cosines >= threshold).mean())
