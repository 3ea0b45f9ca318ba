"""A training-free yardstick: how close each kernel comes to some member of the parametric
families (`dwscan.method.families`), and at 7x7 to the best fit a*F + b of a master-key filter.

The autoencoder's clustered fraction depends on the templates a seed finds; these two numbers
depend on nothing but the kernel, so they compare models and runs on a fixed scale. The best
member is found by exact nearest-neighbour search (`DictionaryIndex`: cells of members, searched
only where a cell can beat the best found) over a dictionary of members sampled over each
family's parameters, built once per kernel size and process, then refined by the families'
compass search for kernels just below the threshold.
METHOD.md section 4e says how dense is dense enough, and what the numbers are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dwscan.io.template_index import DictionaryIndex
from dwscan.method.families import (
    FAMILIES,
    FAMILY_ORDER,
    Family,
    grid_spacing,
    nearest_master_keys,
    refine_fit,
)
from dwscan.method.preprocess import VALID, centre_and_normalise

# Values sampled between two neighbouring values of a family's fitting grid; kernels the
# dictionary puts within REFINE_MARGIN below the threshold are then refined by the families'
# compass search (METHOD.md 4e: a denser dictionary moves the demo zoo's shares by less than
# 0.5 points).
DICTIONARY_DENSITY = 2
REFINE_MARGIN = 0.1
# Members equal to this many decimals (after centring and unit norm) are one member: a surround
# of weight 0 is the same Gaussian at every ratio.
_DUPLICATE_DECIMALS = 4


def dictionary_axes(spec: Family, k: int, density: int = DICTIONARY_DENSITY) -> list[np.ndarray]:
    """The values of each parameter in the dictionary: the family's fitting grid widened to its
    bounds (the fit may go there, so the yardstick may too), with `density - 1` evenly spaced
    values between neighbours; a periodic angle at `density` times the grid's step."""
    axes = []
    for axis, (low, high) in zip(spec.grid(k), spec.bounds(k)):
        if low is None:  # periodic: the grid is arange(0, period, step)
            step = float(axis[1] - axis[0])
            axes.append(np.arange(0.0, step * len(axis), step / density))
            continue
        knots = np.unique(np.clip(np.concatenate([[low], axis, [high]]), low, high))
        fine = [np.linspace(a, b, density + 1)[:-1] for a, b in zip(knots[:-1], knots[1:])]
        axes.append(np.concatenate([*fine, knots[-1:]]))
    return axes


@dataclass(frozen=True)
class FamilyDictionary:
    """One family's members on the dictionary grid, centred, unit norm, without duplicates or
    constant members, with their parameters, so a search can be refined from its result. A
    member's negative is left out: the search takes |cosine| (polarity is a free parameter)."""

    family: str
    parameters: np.ndarray  # (n, p) of each member
    step: np.ndarray  # (p,) the dictionary's spacing of each parameter
    index: DictionaryIndex  # sign-invariant: the nearest member of either polarity


def build_family_dictionary(family: str, k: int, density: int = DICTIONARY_DENSITY
                            ) -> FamilyDictionary:
    """One family's dictionary at kernel size k (the four hold about 13,000 members at
    density 1, 210,000 at density 2: 42 MB at 7x7, held once, by the index, sorted by cell)."""
    spec = FAMILIES[family]
    axes = dictionary_axes(spec, k, density)
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    members, why = centre_and_normalise(spec.make(grid, k))
    members, grid = members[why == VALID], grid[why == VALID]
    _, first = np.unique(np.round(members, _DUPLICATE_DECIMALS), axis=0, return_index=True)
    first = np.sort(first)
    return FamilyDictionary(family, grid[first], grid_spacing(axes),
                            DictionaryIndex(members[first]))


@lru_cache(maxsize=32)
def family_dictionary(family: str, k: int, density: int = DICTIONARY_DENSITY
                      ) -> FamilyDictionary:
    """`build_family_dictionary`, once per family and kernel size in each process (an assign
    worker handles many models of few sizes)."""
    return build_family_dictionary(family, k, density)


def family_cosines(kernels: np.ndarray, k: int, threshold: float,
                   density: int = DICTIONARY_DENSITY, margin: float = REFINE_MARGIN
                   ) -> np.ndarray:
    """For each kernel (row: centred, unit norm, k*k), the |cosine| of the closest family member
    found: the nearest dictionary member of each family, refined by compass search in each
    family whose member is within `margin` below `threshold`, for kernels none reaches it (where
    a finer search can change the verdict; above the threshold the verdict stands, far below no
    refinement reaches it)."""
    if not len(kernels):
        return np.zeros(0, np.float32)
    nearest = {name: family_dictionary(name, k, density).index.nearest_with_sign(kernels)
               for name in FAMILY_ORDER}
    best = np.max([cosines for _, cosines, _ in nearest.values()], axis=0)
    below = best < threshold
    for name, (ids, cosines, signs) in nearest.items():
        # refined in each family only where its own best is within the margin: from further
        # below, as for the best of all, no refinement reaches the threshold
        near = np.flatnonzero(below & (cosines >= threshold - margin))
        if len(near):
            dictionary = family_dictionary(name, k, density)
            _, refined = refine_fit(FAMILIES[name], kernels[near], k,
                                    dictionary.parameters[ids[near]],
                                    cosines[near] * signs[near], dictionary.step / 2)
            best[near] = np.maximum(best[near], np.abs(refined))
    return best


def master_key_fits(kernels: np.ndarray, filters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1-based best filter, cosine of the best fit a*F + b) per 7x7 kernel (centred, unit norm):
    the filter of largest |cosine|, since the fit's scale a may be negative."""
    if not len(kernels):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return nearest_master_keys(kernels, filters, signed=False)
