"""The training-free yardstick: family members found at any width, orientation and polarity;
random kernels only at the chance level; master keys recovered from a*F + b."""

import numpy as np
import pytest

from dwscan.method.families import (
    CENTRE_SURROUND,
    FIRST,
    SECOND,
    SHIPPED_MASTER_KEY_FILTERS,
    member,
    read_master_key_filters,
)
from dwscan.method.preprocess import centre_and_normalise
from dwscan.method.yardstick import family_cosines, master_key_fits
from dwscan.stages.templates import default_master_key_filters


def _random_member(rng: np.random.Generator, k: int) -> np.ndarray:
    """A family member at parameters off the dictionary's grid, of either polarity."""
    kind = rng.integers(3)
    sigma = rng.uniform(0.6, 0.25 * k)
    if kind == 0:
        weights = member(FIRST, {"sigma": sigma, "angle_deg": rng.uniform(0, 360)}, k)
    elif kind == 1:
        weights = member(SECOND, {"sigma": sigma, "angle_deg": rng.uniform(0, 180),
                                  "psi_deg": rng.uniform(-45, 20)}, k)
    else:
        weights = member(CENTRE_SURROUND, {"sigma": rng.uniform(0.3, 0.2 * k),
                                           "surround_ratio": rng.uniform(1.3, 3.0),
                                           "surround_weight": rng.uniform(0.6, 1.0)}, k)
    return weights * rng.choice([-1.0, 1.0])


@pytest.mark.parametrize("k", [5, 7])
def test_planted_family_members_give_the_planted_share(k):
    """300 noisy family members (noise 0.04 per weight: cosine ~0.9 to the member, scaled and
    offset) among 700 random Gaussian kernels: the share is the planted 30% plus chance (0.5%
    at 5x5, 0 at 7x7) on the rest, within 1.5 points."""
    rng = np.random.default_rng(k)
    planted = np.stack([_random_member(rng, k) for _ in range(300)])
    planted = 3.0 * (planted + rng.normal(0, 0.04, planted.shape)) + 0.5
    raw = np.concatenate([planted, rng.standard_normal((700, k * k))])
    kernels, _ = centre_and_normalise(raw)
    cosines = family_cosines(kernels, k, 0.8, density=1)  # the coarser dictionary: faster
    assert (cosines[:300] >= 0.8).mean() > 0.98  # the planted ones are found
    chance = {5: 0.005, 7: 0.0}[k]
    assert (cosines >= 0.8).mean() == pytest.approx(0.3 + 0.7 * chance, abs=0.015)


def test_random_kernels_reach_a_family_member_only_by_chance():
    """Isotropic Gaussian kernels (the chance level, METHOD.md 4e): 0.5% at 5x5 and none at
    7x7, but about 95% at 3x3, whose 8 dimensions the families nearly fill at cosine 0.8
    (density 1 here for speed; the default dictionary finds slightly more)."""
    rng = np.random.default_rng(0)
    share = {}
    for k in (3, 5, 7):
        kernels, _ = centre_and_normalise(rng.standard_normal((2000, k * k)))
        share[k] = float((family_cosines(kernels, k, 0.8, density=1) >= 0.8).mean())
    assert share[3] == pytest.approx(0.95, abs=0.03)
    assert share[5] < 0.015 and share[7] < 0.002


def test_master_key_fits_recover_the_filter_and_its_scale_sign():
    """a*F_i + b + small noise, a of either sign: best filter i, fit cosine ~1."""
    filters = read_master_key_filters(SHIPPED_MASTER_KEY_FILTERS)
    rng = np.random.default_rng(3)
    which = rng.integers(0, 8, 400)
    a = rng.uniform(0.5, 3.0, 400) * rng.choice([-1.0, 1.0], 400)
    raw = a[:, None] * filters[which] + rng.normal(0, 1, (400, 1)) + rng.normal(0, 0.01, (400, 49))
    kernels, _ = centre_and_normalise(raw)
    numbers, cosines = master_key_fits(kernels, filters)
    assert np.array_equal(numbers, which + 1)
    assert (cosines >= 0.8).mean() == 1.0 and cosines.min() > 0.95
    noise, _ = centre_and_normalise(rng.standard_normal((2000, 49)))
    assert (master_key_fits(noise, filters)[1] >= 0.8).mean() == 0.0  # chance: none


def test_shipped_master_key_file_holds_eight_unit_filters(monkeypatch):
    """The packaged copy: eight 7x7 filters of mean 0 and norm 1 as written in the file (not
    only after read_master_key_filters normalises them); the default unless the env says."""
    text = SHIPPED_MASTER_KEY_FILTERS.read_text()
    # each block is 'N:' and 49 numbers
    raw = np.stack([np.array(block.split()[1:], np.float64) for block in text.split("Filter")[1:]])
    assert raw.shape == (8, 49)
    np.testing.assert_allclose(raw.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1, atol=1e-4)
    assert read_master_key_filters(SHIPPED_MASTER_KEY_FILTERS).shape == (8, 49)
    assert "Attribution 4.0" in (SHIPPED_MASTER_KEY_FILTERS.parent / "SOURCE.md").read_text()
    monkeypatch.delenv("DWSCAN_MASTER_KEY_FILTERS", raising=False)
    assert default_master_key_filters() == str(SHIPPED_MASTER_KEY_FILTERS)
    monkeypatch.setenv("DWSCAN_MASTER_KEY_FILTERS", "/elsewhere/filters.txt")
    assert default_master_key_filters() == "/elsewhere/filters.txt"


def test_refinement_near_the_threshold_gives_the_verdicts_of_refining_every_family():
    """Noisy 5x5 family members, many just below 0.8 on the dictionary: refined only in the
    families within the 0.1 band, as by refining all four, the same verdict for every kernel,
    and refinement does change verdicts (the band matters)."""
    from dwscan.method.families import FAMILIES, FAMILY_ORDER, refine_fit
    from dwscan.method.yardstick import family_dictionary

    rng = np.random.default_rng(11)
    planted = np.stack([_random_member(rng, 5) for _ in range(600)])
    # unit members; noise of 0.1 to 0.3 a weight puts them at cosine ~0.55 to 0.95
    raw = planted + rng.normal(0, 1, planted.shape) * rng.uniform(0.1, 0.3, (600, 1))
    kernels, _ = centre_and_normalise(raw)
    found = family_cosines(kernels, 5, 0.8, density=1)
    nearest = {name: family_dictionary(name, 5, 1).index.nearest_with_sign(kernels)
               for name in FAMILY_ORDER}
    dictionary_only = np.max([cosines for _, cosines, _ in nearest.values()], axis=0)
    every = dictionary_only.copy()
    band = np.flatnonzero((dictionary_only >= 0.7) & (dictionary_only < 0.8))
    for name, (ids, cosines, signs) in nearest.items():
        dictionary = family_dictionary(name, 5, 1)
        _, refined = refine_fit(FAMILIES[name], kernels[band], 5, dictionary.parameters[ids[band]],
                                cosines[band] * signs[band], dictionary.step / 2)
        every[band] = np.maximum(every[band], np.abs(refined))
    assert len(band) > 100
    assert ((every >= 0.8) != (dictionary_only >= 0.8)).sum() > 10
    np.testing.assert_array_equal(found >= 0.8, every >= 0.8)
    assert (found <= every + 1e-6).all()
