"""Names for templates from fitted parametric families, and members of those families.

Each template (centred, unit norm) is fitted by least squares, with a free scale, to four
families of continuous parameters; with a free scale the least-squares fit is the member of
largest |cosine|. A coarse grid gives the start, a compass search refines it. The best family
names the template, `other` where none reaches FIT_MIN_COSINE. METHOD.md section 4 gives the
families, their parameters and why the thresholds are what they are.

Coordinates: x grows to the right (columns), y downwards (rows); an angle is measured from +x
towards +y, so 90 degrees points down the image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# A family names a template only when its best member is at least this close (METHOD.md 4).
FIT_MIN_COSINE = 0.9
# Below this centre sigma (pixels) a centre-surround's centre is one pixel: the spike limit.
SPIKE_SIGMA = 0.45
# A second derivative whose two curvatures are this close to opposite is a saddle (mixed).
SADDLE_PSI_DEG = -35.0
# Fits this close are ties, won by the family listed first in FAMILY_ORDER (the simpler shape).
TIE_COSINE = 0.005
# A cross or a second derivative must beat every other family by this much: a short-armed
# cross is a round blob with a four-fold ripple, a small second derivative a centre-surround
# with an axis, and templates on those continua move across 0.005 from seed to seed, taking
# their share with the name (METHOD.md 4a gives the measurements).
ELABORATE_TIE_COSINE = 0.02
# And only where every seed's template this close to it is won by that family too (the
# consensus's merge cosine: what counts as one pattern); else the seeds dispute the name
PEER_COSINE = 0.9
# Rounds of the compass search that refines a grid fit (it stops earlier once steps are small).
REFINE_ROUNDS = 80

CENTRE_SURROUND, FIRST, SECOND, CROSS, OTHER = (
    "centre-surround", "first-derivative", "second-derivative", "cross", "other")
FAMILY_ORDER = (CENTRE_SURROUND, FIRST, SECOND, CROSS)
ELABORATE = (SECOND, CROSS)  # the families that must win by ELABORATE_TIE_COSINE


def _grid(k: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(k, dtype=np.float64) - (k - 1) / 2
    y, x = np.meshgrid(r, r, indexing="ij")  # rows are y (down), columns x (right)
    return y.ravel(), x.ravel()


def _rotated(params_theta: np.ndarray, k: int, dx: np.ndarray | float = 0.0,
             dy: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) per member and pixel: u along the angle, v 90 degrees further (n, k*k), about
    the centre (dx, dy)."""
    y, x = _grid(k)
    x, y = x - dx, y - dy
    theta = np.radians(params_theta)[:, None]
    return x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)


def _gauss(r2: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return np.exp(-r2 / (2 * sigma**2)) / (2 * np.pi * sigma**2)


def _centre_surround(p: np.ndarray, k: int) -> np.ndarray:
    """sigma, surround ratio, surround weight, dx, dy: G(sigma) - w G(ratio * sigma) at (dx, dy)."""
    sigma, ratio, weight, dx, dy = (p[:, i:i + 1] for i in range(5))
    y, x = _grid(k)
    r2 = (x - dx) ** 2 + (y - dy) ** 2
    return _gauss(r2, sigma) - weight * _gauss(r2, ratio * sigma)


def _first_derivative(p: np.ndarray, k: int) -> np.ndarray:
    """sigma, angle, dx, dy: the Gaussian's derivative along the angle (rises along it); a
    half-pixel offset makes the two-pixel difference [-1, 1]."""
    sigma = p[:, :1]
    u, v = _rotated(p[:, 1], k, p[:, 2:3], p[:, 3:4])
    return u * np.exp(-(u**2 + v**2) / (2 * sigma**2))


def _second_derivative(p: np.ndarray, k: int) -> np.ndarray:
    """sigma, angle, psi: cos(psi) d2/du2 + sin(psi) d2/dv2 of the Gaussian, u along the angle.
    psi = 0 is the second derivative along the angle, psi = -45 deg the saddle (the mixed
    derivative of axes 45 deg away); psi = +45 deg would be the LoG, left to centre-surround."""
    sigma, psi = p[:, :1], np.radians(p[:, 2:3])
    u, v = _rotated(p[:, 1], k)
    g = np.exp(-(u**2 + v**2) / (2 * sigma**2))
    return (np.cos(psi) * (u**2 / sigma**2 - 1) + np.sin(psi) * (v**2 / sigma**2 - 1)) * g


def _cross(p: np.ndarray, k: int) -> np.ndarray:
    """long sigma, aspect, angle: two orthogonal elongated Gaussians, one along the angle."""
    long, short = p[:, :1], p[:, :1] / p[:, 1:2]
    u, v = _rotated(p[:, 2], k)
    return (np.exp(-(u**2) / (2 * long**2) - v**2 / (2 * short**2))
            + np.exp(-(v**2) / (2 * long**2) - u**2 / (2 * short**2)))


@dataclass(frozen=True)
class Family:
    name: str
    parameters: tuple[str, ...]
    make: Callable[[np.ndarray, int], np.ndarray]  # (n, p) parameters -> (n, k*k) raw members
    grid: Callable[[int], list[np.ndarray]]  # per parameter, the grid values at size k
    bounds: Callable[[int], list[tuple[float | None, float | None]]]  # None: periodic angle


def _sigmas(k: int, low: float) -> np.ndarray:
    return np.geomspace(low, k / 2, 10)


FAMILIES = {f.name: f for f in (
    Family(CENTRE_SURROUND, ("sigma", "surround_ratio", "surround_weight", "dx", "dy"),
           _centre_surround,
           lambda k: [_sigmas(k, 0.2), np.array([1.2, 1.6, 2.2, 3.2]),
                      np.array([0.0, 0.5, 0.9, 1.1]), np.array([-0.5, 0, 0.5]),
                      np.array([-0.5, 0, 0.5])],
           # weight < ratio^2 keeps the centre the sign of the member: polarity is well defined
           lambda k: [(0.2, k / 2), (1.1, 5.0), (0.0, 1.2), (-0.75, 0.75), (-0.75, 0.75)]),
    Family(FIRST, ("sigma", "angle_deg", "dx", "dy"), _first_derivative,
           lambda k: [_sigmas(k, 0.3), np.arange(0, 360, 15.0), np.array([-0.5, 0, 0.5]),
                      np.array([-0.5, 0, 0.5])],
           lambda k: [(0.3, k / 2), (None, None), (-0.75, 0.75), (-0.75, 0.75)]),
    Family(SECOND, ("sigma", "angle_deg", "psi_deg"), _second_derivative,
           lambda k: [_sigmas(k, 0.3), np.arange(0, 180, 15.0), np.array([-45, -20, 0, 20.0])],
           lambda k: [(0.3, k / 2), (None, None), (-45.0, 30.0)]),
    Family(CROSS, ("sigma", "aspect", "angle_deg"), _cross,
           lambda k: [_sigmas(k, 0.4), np.array([2.0, 3.0, 5.0]), np.arange(0, 90, 15.0)],
           lambda k: [(0.4, k), (1.5, 8.0), (None, None)]),
)}


def _unit_rows(raw: np.ndarray) -> np.ndarray:
    centred = raw - raw.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.where(norms > 1e-12, centred / np.where(norms > 1e-12, norms, 1), 0.0)


def member(family: str, parameters: dict[str, float], k: int) -> np.ndarray:
    """The family member with these parameters (offsets dx, dy default to 0), centred, unit
    norm, flattened row-major."""
    spec = FAMILIES[family]
    given = {"dx": 0.0, "dy": 0.0, **parameters}
    p = np.array([[given[name] for name in spec.parameters]], np.float64)
    return _unit_rows(spec.make(p, k))[0].astype(np.float32)


@dataclass
class FamilyFit:
    family: str  # one of FAMILY_ORDER, or 'other'
    polarity: str | None  # on/off (centre-surround, cross), +/- (derivatives)
    orientation_deg: float | None  # [0, 360) first derivatives, [0, 180) the rest, None: none
    sigma: float | None  # pixels
    fit_cosine: float  # cosine of the template to its fitted member (best family)
    parameters: dict[str, float] = field(default_factory=dict)  # the fitted member's
    weights: np.ndarray | None = None  # the fitted member (signed like the template)
    label: str = OTHER


def _fit_one_family(spec: Family, templates: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Best parameters and signed cosine of one family for every template: the best point of a
    grid, then `refine_fit` from there."""
    axes = spec.grid(k)
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    cosines = templates @ _unit_rows(spec.make(grid, k)).T
    best = np.abs(cosines).argmax(axis=1)
    rows = np.arange(len(templates))
    # start at half the grid spacing (refine_fit stops at 1/32 of that: ~0.2 deg, ~1% of sigma)
    return refine_fit(spec, templates, k, grid[best], cosines[rows, best],
                      grid_spacing(axes) / 2)


def grid_spacing(axes: list[np.ndarray]) -> np.ndarray:
    """Mean step of each parameter's grid (0.25 for a single value)."""
    return np.array([np.ptp(a) / max(len(a) - 1, 1) if len(a) > 1 else 0.25 for a in axes])


def refine_fit(spec: Family, templates: np.ndarray, k: int, params: np.ndarray,
               signed_cosine: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compass search from `params` (n, p), whose members have `signed_cosine` to the templates
    (rows centred, unit norm): each parameter up and down by its `step`, halved when nothing
    improves, until 1/32 of the start, for all templates at once (each round is one batch of
    members). Returns the parameters and signed cosines, never worse than the start."""
    rows = np.arange(len(templates))
    sign = np.where(signed_cosine >= 0, 1.0, -1.0)
    params, value = params.astype(np.float64), np.abs(signed_cosine).astype(np.float64)
    n, p = params.shape
    low = np.array([-np.inf if b[0] is None else b[0] for b in spec.bounds(k)])
    high = np.array([np.inf if b[1] is None else b[1] for b in spec.bounds(k)])
    start = np.asarray(step, np.float64)
    step = np.tile(start, (n, 1))
    moves = np.concatenate([np.eye(p), -np.eye(p)])  # (2p, p)
    for _ in range(REFINE_ROUNDS):
        if not n or (step <= start / 32).all():
            break
        trial = np.clip(params[:, None, :] + moves[None] * step[:, None, :], low, high)
        members = _unit_rows(spec.make(trial.reshape(-1, p), k)).reshape(n, 2 * p, -1)
        scores = sign[:, None] * np.einsum("nmd,nd->nm", members, templates)
        pick = scores.argmax(axis=1)
        better = scores[rows, pick] > value + 1e-9
        params[better] = trial[rows, pick][better]
        value[better] = scores[rows, pick][better]
        step[~better] /= 2
    return params, sign * value


def fit_families(templates: np.ndarray, k: int, min_cosine: float = FIT_MIN_COSINE,
                 peers: np.ndarray | None = None) -> list[FamilyFit]:
    """The best-fitting family member of each template (rows centred, unit norm, k*k).

    `peers`: every seed's own templates of the same kernels (rows as templates; may be the
    templates themselves). With them an elaborate family (a cross, a second derivative) names a
    template only where every peer within PEER_COSINE of it is won by that family too; where
    the seeds dispute it, the better of the simple families (centre-surround, first derivative)
    names the template, as a tie goes to the simpler family (METHOD.md 4a)."""
    templates = np.asarray(templates, np.float64).reshape(len(templates), k * k)
    if not len(templates):
        return []
    fits = {name: _fit_one_family(FAMILIES[name], templates, k) for name in FAMILY_ORDER}
    scores = np.abs(np.stack([fits[name][1] for name in FAMILY_ORDER], axis=1))
    winners = [_winning_family(row) for row in scores]
    if peers is not None and len(peers):
        peers = np.asarray(peers, np.float64).reshape(len(peers), k * k)
        same = peers.shape == templates.shape and np.array_equal(peers, templates)
        peer_winners = winners if same else [f.family for f in fit_families(peers, k, 0.0)]
        winners = _undisputed(winners, scores, templates, peers, peer_winners)
    out = []
    for i, winner in enumerate(winners):
        params, signed = fits[winner][0][i], float(fits[winner][1][i])
        fit = describe(winner, dict(zip(FAMILIES[winner].parameters, map(float, params))),
                       signed, k)
        if fit.fit_cosine < min_cosine:
            fit = FamilyFit(OTHER, None, None, None, fit.fit_cosine, weights=fit.weights)
        out.append(fit)
    return out


def _undisputed(winners: list[str], scores: np.ndarray, templates: np.ndarray,
                peers: np.ndarray, peer_winners: list[str]) -> list[str]:
    """Each template's winning family, an elaborate one replaced by the better simple family
    (by _winning_family over those) where a peer within PEER_COSINE is won by another family
    (|cosine|: a pattern's negative fits the same families)."""
    elaborate = [FAMILY_ORDER.index(f) for f in ELABORATE]
    near = np.abs(templates @ peers.T) >= PEER_COSINE
    peer_winners = np.array(peer_winners)
    out = list(winners)
    for i, winner in enumerate(winners):
        if winner in ELABORATE and (peer_winners[near[i]] != winner).any():
            simple_only = scores[i].copy()
            simple_only[elaborate] = -np.inf
            out[i] = _winning_family(simple_only)
    return out


def _winning_family(scores: np.ndarray) -> str:
    """The first family in FAMILY_ORDER (the simplest) that no other family beats by that
    family's margin: TIE_COSINE, or ELABORATE_TIE_COSINE for an elaborate family (a cross, a
    second derivative) over one before it in the order. So a cross must beat every other
    family by 0.02, a second derivative the centre-surround and the first derivative by 0.02,
    and ties of 0.005 go to the simpler family. The best-scoring family always qualifies."""
    n = len(FAMILY_ORDER)

    def margin(g: int, f: int) -> float:  # what g needs over f to take the name
        return ELABORATE_TIE_COSINE if FAMILY_ORDER[g] in ELABORATE and f < g else TIE_COSINE

    return next(FAMILY_ORDER[f] for f in range(n)
                if all(scores[f] >= scores[g] - margin(g, f) for g in range(n) if g != f))


def describe(family: str, parameters: dict[str, float], signed_cosine: float, k: int
             ) -> FamilyFit:
    """Polarity, orientation, sigma and label of a fitted member, in the canonical form of its
    family (a first derivative's sign is its direction; a saddle's is a 90 degree turn)."""
    p = dict(parameters)
    positive = signed_cosine >= 0  # the template is +member (after canonical parameters)
    orientation = None
    if family == CENTRE_SURROUND:
        polarity = "on" if positive else "off"
    elif family == FIRST:
        p["angle_deg"] = (p["angle_deg"] + (0 if positive else 180)) % 360
        polarity, orientation, positive = "+", p["angle_deg"], True
    elif family == SECOND:
        if p["psi_deg"] <= SADDLE_PSI_DEG and not positive:  # -saddle(a) = saddle(a + 90)
            p["angle_deg"], p["psi_deg"] = p["angle_deg"] + 90, -90 - p["psi_deg"]
            positive = True
        p["angle_deg"] %= 180
        polarity, orientation = ("+" if positive else "-"), p["angle_deg"]
    else:
        p["angle_deg"] %= 90
        polarity, orientation = ("on" if positive else "off"), p["angle_deg"]
    weights = member(family, p, k) * (1 if positive else -1)
    fit = FamilyFit(family, polarity, orientation, p["sigma"], abs(signed_cosine), p, weights)
    fit.label = _label(fit)
    return fit


def _label(fit: FamilyFit) -> str:
    """Short name of a fit; angles to 5 degrees and sigma to 0.1 px, what a fit can tell apart."""
    angle = ""
    if fit.orientation_deg is not None:
        period = {FIRST: 360, SECOND: 180, CROSS: 90}[fit.family]
        angle = f"{int(5 * round(fit.orientation_deg / 5)) % period} deg"
    sigma = f"sigma {fit.sigma:.1f}"
    if fit.family == CENTRE_SURROUND:
        return (f"{fit.polarity}-centre spike" if fit.sigma < SPIKE_SIGMA
                else f"{fit.polarity}-centre DoG {sigma}")
    if fit.family == FIRST:
        return f"d/dtheta {angle} {sigma}"
    if fit.family == SECOND:
        if fit.parameters["psi_deg"] <= SADDLE_PSI_DEG:
            return f"saddle {angle} {sigma}"
        return f"{fit.polarity}d2/dtheta2 {angle} {sigma}"
    if fit.family == CROSS:
        return f"{fit.polarity}-cross {angle} {sigma}"
    return OTHER


# The universal 7x7 filters of Babaiee et al., NeurIPS 2025, shipped with dwscan under their
# CC BY 4.0 licence (SOURCE.md beside the file gives the source and the papers to cite).
MASTER_KEY_SIZE = 7
SHIPPED_MASTER_KEY_FILTERS = Path(__file__).parents[1] / "data" / "master_key_filters" / "8Filters.txt"


def default_master_key_filters() -> str:
    """The master-key filter file: $DWSCAN_MASTER_KEY_FILTERS where set (another version of the
    filters), else the copy shipped with dwscan (data/master_key_filters, CC BY 4.0)."""
    return os.environ.get("DWSCAN_MASTER_KEY_FILTERS") or str(SHIPPED_MASTER_KEY_FILTERS)


def read_master_key_filters(path: str | Path) -> np.ndarray:
    """The 'Filter N:' blocks of a master-key file as (n, 49) rows, centred, unit norm."""
    blocks = re.split(r"Filter \d+:", Path(path).read_text())[1:]
    rows = [np.array(block.split(), np.float64) for block in blocks]
    if not rows or any(r.size != MASTER_KEY_SIZE**2 for r in rows):
        raise ValueError(f"{path}: expected 'Filter N:' blocks of {MASTER_KEY_SIZE}x"
                         f"{MASTER_KEY_SIZE} numbers")
    return _unit_rows(np.stack(rows)).astype(np.float32)


def nearest_master_keys(templates: np.ndarray, filters: np.ndarray, signed: bool = True
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(1-based number of the nearest filter, its cosine) for each 7x7 row (centred, unit norm).

    Signed (a template: a filter and its negative are different patterns), or not: the best fit
    a*F + b of the authors' analysis, whose free a takes either sign, is the filter of largest
    |cosine| and the fit's cosine is that |cosine|."""
    cosines = np.asarray(templates, np.float32) @ filters.T
    if not signed:
        cosines = np.abs(cosines)
    best = cosines.argmax(axis=1)
    return best + 1, cosines[np.arange(len(best)), best]
