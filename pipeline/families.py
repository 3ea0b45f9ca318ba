"""Named analytic templates: difference-of-Gaussians and Gaussian derivatives at any kernel size.

They give discovered templates human names (the nearest family member by cosine) and give the
tests kernels with a known answer. They use a sampled Gaussian with sigma = k/6.
"""

from __future__ import annotations

import numpy as np

# A template is named after its nearest family member only when at least this close.
LABEL_MIN_COSINE = 0.8
UNLABELLED = "unlabelled"


def _grid(k: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(k, dtype=np.float64) - (k - 1) / 2
    return np.meshgrid(r, r, indexing="ij")  # (y, x), row-major like a conv weight


def _gaussian(k: int, sigma: float) -> np.ndarray:
    y, x = _grid(k)
    return np.exp(-(x**2 + y**2) / (2 * sigma**2))


def _unit(t: np.ndarray) -> np.ndarray:
    t = t.ravel() - t.mean()
    return (t / np.linalg.norm(t)).astype(np.float32)


def dog_family(k: int) -> dict[str, np.ndarray]:
    """The named templates of size k x k, centred, unit norm, flattened row-major.

    Difference-of-Gaussians centre-surround, first derivatives (x, y and both diagonals), second
    derivatives (xx, yy, xy), the Laplacian of Gaussian and a cross (two orthogonal elongated
    Gaussians), all of a Gaussian sampled with sigma = k/6. A kernel and its negative are
    different members, as the paper keeps on- and off-centre apart: 'on-'/'off-' for the
    centre-surround and cross, '+'/'-' for the rest. x grows to the right, y downwards.
    """
    s = max(k / 6, 0.5)
    y, x = _grid(k)
    g = _gaussian(k, s)
    wide = _gaussian(k, 2 * s)
    u, v = (x + y) / np.sqrt(2), (x - y) / np.sqrt(2)
    elongated_x = np.exp(-(x**2) / (2 * (2 * s) ** 2) - y**2 / (2 * (s / 2) ** 2))
    elongated_y = np.exp(-(y**2) / (2 * (2 * s) ** 2) - x**2 / (2 * (s / 2) ** 2))
    centre_surround = g - wide * (g.sum() / wide.sum())
    signed = {
        "d/dx": x * g, "d/dy": y * g, "d/du": u * g, "d/dv": v * g,  # u: down-right, v: up-right
        "d2/dx2": (x**2 / s**2 - 1) * g, "d2/dy2": (y**2 / s**2 - 1) * g, "d2/dxdy": x * y * g,
        "LoG": ((x**2 + y**2) / s**2 - 2) * g,
    }
    family = {"on-centre": _unit(centre_surround), "off-centre": _unit(-centre_surround),
              "on-cross": _unit(elongated_x + elongated_y), "off-cross": _unit(-(elongated_x + elongated_y))}
    for name, t in signed.items():
        family[f"+{name}"], family[f"-{name}"] = _unit(t), _unit(-t)
    return family


# The well-separated members used for synthetic checkpoints (at 3x3 the full family has more
# members than dimensions, so some are near-duplicates of others there).
CORE_NAMES = ("on-centre", "off-centre", "+d/dx", "-d/dx", "+d/dy", "-d/dy", "+d2/dxdy", "-d2/dxdy")


def core_family(k: int) -> dict[str, np.ndarray]:
    family = dog_family(k)
    return {name: family[name] for name in CORE_NAMES}


def label_templates(templates: np.ndarray, kernel_size: int,
                    min_cosine: float = LABEL_MIN_COSINE) -> tuple[list[str], np.ndarray]:
    """Name of the nearest family member for each template (or 'unlabelled'), and its cosine."""
    family = dog_family(kernel_size)
    names = list(family)
    cosines = np.asarray(templates, dtype=np.float32) @ np.stack(list(family.values())).T
    best = cosines.argmax(axis=1)
    best_cos = cosines[np.arange(len(best)), best]
    labels = [names[b] if c >= min_cosine else UNLABELLED for b, c in zip(best, best_cos)]
    return labels, best_cos


