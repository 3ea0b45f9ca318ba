import numpy as np

from dwscan.method.preprocess import INVALID_REASONS, centre_and_normalise


def test_hand_computed_kernel():
    normalised, reasons = centre_and_normalise(np.array([[1.0, 2.0, 3.0, 4.0]]))
    # mean 2.5 -> [-1.5, -0.5, 0.5, 1.5], norm sqrt(5)
    np.testing.assert_allclose(normalised[0], np.array([-1.5, -0.5, 0.5, 1.5]) / np.sqrt(5),
                               rtol=1e-6)
    assert INVALID_REASONS[reasons[0]] is None


def test_scale_and_offset_do_not_matter_but_sign_does():
    rng = np.random.default_rng(0)
    k = rng.normal(size=(1, 25))
    base, _ = centre_and_normalise(k)
    moved, _ = centre_and_normalise(3.7 * k + 11.0)
    flipped, _ = centre_and_normalise(-k)
    np.testing.assert_allclose(moved, base, atol=1e-5)
    np.testing.assert_allclose(flipped, -base, atol=1e-6)


def test_zero_constant_and_non_finite_kernels_are_flagged_and_zeroed():
    weights = np.array([
        [0.0, 0.0, 0.0, 0.0],
        [5e-5, -5e-5, 0.0, 1e-5],  # every |w| <= 1e-4: the authors' zero rule
        [0.3, 0.3, 0.3, 0.3],
        [1.0, np.nan, 0.0, 0.0],
        [1.0, np.inf, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    normalised, reasons = centre_and_normalise(weights)
    assert [INVALID_REASONS[c] for c in reasons] == [
        "zero", "zero", "constant", "non_finite", "non_finite", None]
    assert np.all(normalised[:5] == 0) and np.isfinite(normalised).all()
    assert np.isclose(np.linalg.norm(normalised[5]), 1.0)
