"""Stage 2: the paper's preprocessing, centre each kernel and scale it to unit L2 norm."""

from __future__ import annotations

import numpy as np

# The paper's authors drop kernels whose every |w| is at most 1e-4 (tonylindeberg/masterfiltmodel).
ZERO_ABS_TOL = 1e-4
# A kernel that is (nearly) constant has no direction once centred.
CONSTANT_NORM_TOL = 1e-6

INVALID_NON_FINITE = "non_finite"
INVALID_ZERO = "zero"
INVALID_CONSTANT = "constant"


def centre_and_normalise(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred unit-norm rows and a per-row reason they cannot be used (None when they can).

    Invalid rows come back as zeros so that they never look similar to anything.
    """
    weights = np.asarray(weights, dtype=np.float32)
    reasons = np.full(weights.shape[0], None, dtype=object)
    finite = np.isfinite(weights).all(axis=1)
    reasons[~finite] = INVALID_NON_FINITE
    safe = np.where(finite[:, None], weights, 0.0).astype(np.float32)
    zero = finite & (np.abs(safe).max(axis=1, initial=0.0) <= ZERO_ABS_TOL)
    reasons[zero] = INVALID_ZERO
    centred = safe - safe.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    constant = finite & ~zero & (norms <= CONSTANT_NORM_TOL * np.abs(safe).max(axis=1, initial=0.0))
    reasons[constant] = INVALID_CONSTANT
    valid = reasons == None  # noqa: E711 - elementwise comparison on an object array
    normalised = np.zeros_like(centred)
    normalised[valid] = centred[valid] / norms[valid, None]
    return normalised, reasons
