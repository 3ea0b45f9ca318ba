"""Kernels with a known answer: noisy copies a*T + b + noise of given templates."""

from __future__ import annotations

import numpy as np


def noisy_copies(templates: np.ndarray, n_per_template: int, noise: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw kernels a*T + b + noise (a > 0, any offset b) and the index of the T each came from.

    `noise` is the noise norm relative to a*T, so the expected cosine to T is about
    1 / sqrt(1 + noise^2) whatever the kernel size.
    """
    n_t, d = templates.shape
    truth = np.repeat(np.arange(n_t), n_per_template)
    scale = rng.uniform(0.2, 3.0, size=(len(truth), 1))
    offset = rng.normal(0.0, 0.5, size=(len(truth), 1))
    eps = rng.normal(0.0, noise / np.sqrt(d), size=(len(truth), d))
    kernels = scale * (templates[truth] + eps) + offset
    return kernels.astype(np.float32), truth
