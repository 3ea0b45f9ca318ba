"""Replacement kernels for `dwscan substitute`, as numerics on rows of k*k weights.

A kernel k is replaced by a*P + b, P a pattern (a template, a family member, a master key), with
a and b chosen by least squares: the pattern at the kernel's own scale and offset, so what changes
is only the shape. The controls keep a and b and change the shape: another template, or Gaussian
noise of the kernel's own mean and norm (METHOD.md section 8).
"""

from __future__ import annotations

import numpy as np


def affine_fit(kernels: np.ndarray, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the a and b minimising ||a * pattern + b - kernel||; a = 0 for a flat pattern.
    With pattern = kernel, a is exactly 1 and b exactly 0 (the same sums divide)."""
    kernels = np.asarray(kernels, np.float64)
    patterns = np.asarray(patterns, np.float64)
    centred = patterns - patterns.mean(axis=1, keepdims=True)
    power = (centred * centred).sum(axis=1)
    cross = ((kernels - kernels.mean(axis=1, keepdims=True)) * centred).sum(axis=1)
    a = np.divide(cross, power, out=np.zeros_like(power), where=power > 0)
    b = kernels.mean(axis=1) - a * patterns.mean(axis=1)
    return a, b


def affine(patterns: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[:, None] * np.asarray(patterns, np.float64) + b[:, None]


def fitted(kernels: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """Each kernel's least-squares fit a * pattern + b."""
    return affine(patterns, *affine_fit(kernels, patterns))


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (flat rows stay zero)."""
    centred = np.asarray(rows, np.float64) - np.mean(rows, axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)


def nearest_pattern(kernels: np.ndarray, patterns: np.ndarray,
                    sign_invariant: bool = False) -> np.ndarray:
    """Index of each kernel's nearest pattern by cosine (|cosine| when sign-invariant)."""
    cosine = unit_rows(kernels) @ unit_rows(patterns).T
    return (np.abs(cosine) if sign_invariant else cosine).argmax(axis=1)


def other_index(ids: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """For each id in [0, n), a different one drawn uniformly; -1 where n < 2 (no other)."""
    if n < 2:
        return np.full(len(ids), -1)
    shift = rng.integers(1, n, size=len(ids))
    return (np.asarray(ids) + shift) % n


def gaussian_like(kernels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with each kernel's mean and the norm of its centred part."""
    kernels = np.asarray(kernels, np.float64)
    mean = kernels.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(kernels - mean, axis=1, keepdims=True)
    return mean + norm * unit_rows(rng.standard_normal(kernels.shape))
