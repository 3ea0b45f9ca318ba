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
    """Centred unit-norm templates of size k x k by name, flattened row-major.

    A kernel and its negative are different members (the paper keeps on/off-centre apart). x grows
    to the right (columns), y downwards (rows).
    """
    s = max(k / 6, 0.5)
    y, x = _grid(k)
    g = _gaussian(k, s)
    wide = _gaussian(k, 2 * s)
    dog = g - wide * (g.sum() / wide.sum())
    shapes = {"centre": dog, "d/dx": x * g, "d/dy": y * g, "d2/dxdy": x * y * g}
    family = {}
    for name, t in shapes.items():
        if name == "centre":
            family["on-centre"], family["off-centre"] = _unit(t), _unit(-t)
        else:
            family[f"+{name}"], family[f"-{name}"] = _unit(t), _unit(-t)
    return family


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


