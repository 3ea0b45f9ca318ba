"""The paper's preprocessing: centre each kernel and scale it to unit L2 norm."""

from __future__ import annotations

import numpy as np

# The paper's authors drop kernels whose every |w| is at most 1e-4 (tonylindeberg/masterfiltmodel).
ZERO_ABS_TOL = 1e-4
# A kernel that is (nearly) constant has no direction once centred.
CONSTANT_NORM_TOL = 1e-6

# Why a kernel cannot be used, by code: 0 means it can.
VALID, NON_FINITE, ZERO, CONSTANT = 0, 1, 2, 3
INVALID_REASONS = (None, "non_finite", "zero", "constant")


def centre_and_normalise(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred unit-norm rows (float32) and a uint8 code per row: VALID, or why it is not
    (`INVALID_REASONS[code]` names it). Invalid rows come back as zeros, similar to nothing."""
    weights = np.asarray(weights, dtype=np.float32)
    codes = np.zeros(len(weights), dtype=np.uint8)
    finite = np.isfinite(weights).all(axis=1)
    if not finite.all():
        codes[~finite] = NON_FINITE
        weights = np.where(finite[:, None], weights, np.float32(0))
    largest = np.abs(weights).max(axis=1, initial=0.0)
    codes[finite & (largest <= ZERO_ABS_TOL)] = ZERO
    centred = weights - weights.mean(axis=1, keepdims=True, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", centred, centred))
    codes[(codes == VALID) & (norms <= CONSTANT_NORM_TOL * largest)] = CONSTANT
    valid = codes == VALID
    norms[~valid] = 1.0
    centred /= norms[:, None]
    centred[~valid] = 0.0
    return centred, codes
