"""The templates stage with known answers: planted patterns plus noise kernels must give one
template per pattern, each named by its family, the same under a second seed."""

from functools import cache

import numpy as np
import pytest

from dwscan.io.template_index import TemplateIndex
from dwscan.method.autoencoder import AutoencoderConfig, train_autoencoder
from dwscan.method.families import CENTRE_SURROUND, CROSS, FIRST, SECOND
from dwscan.method.preprocess import centre_and_normalise
from dwscan.stages.templates import (
    TemplateConfig,
    TemplateSet,
    compare_runs,
    discover_templates,
    find_missed_patterns,
    keep_attracting,
    kmeans_templates,
    merge_near_duplicates,
    second_seed_templates,
    template_table,
)
from dwscan.testing.synthetic import PlantedPattern, noisy_copies, planted_patterns

THRESHOLD = 0.8
# one pytest-xdist worker for the module: its tests share the autoencoders trained in _trained
pytestmark = pytest.mark.xdist_group("planted-templates")
# The convergence rule as configured by default, checked every 100 steps from step 500 (not 250
# from 1,500): the same rule on the same data at a third of the steps (CI time). Whether the
# default schedule stops where a long run would: tests/method/test_autoencoder.py.
QUICK = AutoencoderConfig(seed=0, min_steps=500, check_every=100)


def _zoo(truth: np.ndarray, seed: int, per_pattern: int = 300, noise_share: float = 0.1
         ) -> tuple[np.ndarray, np.ndarray]:
    """Centred unit kernels: noisy copies (noise 0.3) of each truth row, then Gaussian noise
    kernels (truth index -1)."""
    rng = np.random.default_rng(seed)
    raw, which = noisy_copies(truth, per_pattern, noise=0.3, rng=rng)
    n_noise = int(noise_share * len(raw) / (1 - noise_share))
    raw = np.concatenate([raw, rng.normal(size=(n_noise, truth.shape[1]))])
    kernels, _ = centre_and_normalise(raw)
    return kernels, np.concatenate([which, np.full(n_noise, -1)])


@cache
def _synthetic(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = np.stack([p.weights(k) for p in planted_patterns(k)])
    return (truth, *_zoo(truth, seed=k))


@cache
def _trained(k: int):
    """The autoencoder of the `dwscan synth` patterns at size k (seed 0), trained once per
    module: the tests below select from it in different ways."""
    _, kernels, _ = _synthetic(k)
    model, log = train_autoencoder(kernels, QUICK)
    assert log.losses[-1] < log.losses[0]
    return model


@cache
def _discovered(k: int) -> TemplateSet:
    """Templates of the `dwscan synth` patterns at size k (seed 0)."""
    return discover_templates(_trained(k), _synthetic(k)[1], TemplateConfig(), THRESHOLD)


def _match(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Cosine of each template to each truth pattern."""
    return found @ truth.T


@pytest.mark.slow
@pytest.mark.parametrize("k", [3, 5, 7])
def test_planted_patterns_give_one_template_each_named_by_their_family(k):
    truth, kernels, which = _synthetic(k)
    found = _discovered(k)
    cosines = _match(found.weights, truth)
    assert cosines.max(axis=0).min() >= 0.95, cosines.max(axis=0)
    assert len(found.weights) == len(truth)  # no template for the noise kernels
    assert (found.n_clustered > 0).all()
    ids, cos = TemplateIndex(found.weights).nearest(kernels)
    structured = which >= 0
    assert (cosines.argmax(axis=1)[ids[structured]] == which[structured]).mean() >= 0.98
    assert found.share.sum() == pytest.approx(1.0)
    assert found.share == pytest.approx(np.full(len(truth), 1 / len(truth)), abs=0.01)
    table = template_table(k, found)
    for row, best in zip(table.to_pylist(), cosines.argmax(axis=1)):
        want = planted_patterns(k)[best].expected(k)
        assert (row["family"], row["polarity"]) == (want.family, want.polarity), row["label"]
        if k > 3:  # at 3x3 sigma is not told (tests/method/test_families.py)
            assert row["sigma"] == pytest.approx(want.sigma, rel=0.2), row["label"]
            if want.orientation_deg is not None:
                period = 360.0 if row["family"] == "first-derivative" else 180.0
                gap = abs(row["orientation_deg"] - want.orientation_deg) % period
                assert min(gap, period - gap) <= 10.0, row["label"]


def _richer(k: int) -> list[PlantedPattern]:
    """Nine patterns of every family, widths k/12 .. k/4, orientations 0, 30, 45 and 90 deg,
    no two closer than cosine 0.73 (closer ones may share a template at threshold 0.8)."""
    cs = {"surround_ratio": 2.0, "surround_weight": 1.0, "dx": 0.0, "dy": 0.0}
    members = [
        (CENTRE_SURROUND, {"sigma": k / 12, **cs}, 1),
        (CENTRE_SURROUND, {"sigma": k / 4, **cs}, -1),
        (FIRST, {"sigma": k / 6, "angle_deg": 0.0}, 1),
        (FIRST, {"sigma": k / 8, "angle_deg": 30.0}, -1),
        (FIRST, {"sigma": k / 4, "angle_deg": 90.0}, 1),
        (SECOND, {"sigma": k / 6, "angle_deg": 0.0, "psi_deg": 0.0}, 1),
        (SECOND, {"sigma": k / 6, "angle_deg": 45.0, "psi_deg": -45.0}, 1),
        (SECOND, {"sigma": k / 6, "angle_deg": 0.0, "psi_deg": -45.0}, 1),
        (CROSS, {"sigma": k / 3, "aspect": 3.0, "angle_deg": 30.0}, 1),
    ]
    return [PlantedPattern(family, tuple(p.items()), sign) for family, p, sign in members]


@pytest.mark.slow
def test_a_richer_planted_zoo_at_7x7_gives_its_patterns_with_their_families():
    k = 7
    planted = _richer(k)
    truth = np.stack([p.weights(k) for p in planted])
    overlap = truth @ truth.T - 2 * np.eye(len(truth))
    assert overlap.max() <= 0.73
    kernels, _ = _zoo(truth, seed=1)
    model, _ = train_autoencoder(kernels, QUICK)
    found = discover_templates(model, kernels, TemplateConfig(), THRESHOLD)
    cosines = _match(found.weights, truth)
    assert cosines.max(axis=0).min() >= 0.95, cosines.max(axis=0)
    assert len(truth) <= len(found.weights) <= len(truth) + 1
    assert (found.n_clustered > 0).all()
    for row, best in zip(template_table(k, found).to_pylist(), cosines.argmax(axis=1)):
        want = planted[best].expected(k)
        assert (row["family"], row["polarity"]) == (want.family, want.polarity), row["label"]


@pytest.mark.slow
@pytest.mark.parametrize("k", [5, 7])
def test_a_second_seed_gives_the_same_set(k):
    _, kernels, _ = _synthetic(k)
    found = _discovered(k)
    # 2,500 steps (the product's check allows 5,000): at 1,500, the 128/64 network's second
    # seed had not yet separated one of the eight 5x5 patterns (measured: 7 of 8 found)
    config = TemplateConfig(stability_steps=2500)
    other = second_seed_templates(kernels, config, THRESHOLD, seed=0, autoencoder=QUICK)
    stability = compare_runs(found, other, config)
    assert len(other.weights) == len(found.weights)
    assert stability.cosine.min() >= 0.98
    assert np.abs(found.share - stability.other_share).max() <= 0.01
    assert stability.stable.all()


def test_compare_runs_marks_a_moved_or_missing_template_unstable():
    """Each clause of the rule is the only one a template fails: a share that moved, a match
    that is not mutual (two templates on one of the other run's), a match under
    stable_cosine (0.95), and no match at all."""
    e = np.eye(6, dtype=np.float32)

    def unit(v):
        return (v / np.linalg.norm(v)).astype(np.float32)

    near_0 = unit(e[0] + 0.1 * e[5])  # cosine 0.995 to e[0], but e[0] is template 0's match
    loose_3 = unit(e[3] + 0.5 * e[5])  # mutual best match of template 3, at cosine 0.894
    found_weights = np.stack([e[0], e[1], e[2], e[3], near_0])
    shares = np.array([0.3, 0.2, 0.2, 0.2, 0.1])
    found = TemplateSet(found_weights, np.zeros(5), np.ones(5), np.ones(5), shares, shares)
    # the other run: template 0 again, template 1 with a share 5 points lower, no template 2,
    # template 3 only loosely, and nothing of its own for near_0
    other_weights = np.stack([e[0], unit(e[1] + 0.05 * e[4]), loose_3])
    other_shares = np.array([0.3, 0.15, 0.2])
    other = TemplateSet(other_weights, np.zeros(3), np.ones(3), np.ones(3), other_shares,
                        other_shares)
    stability = compare_runs(found, other, TemplateConfig())
    assert stability.stable.tolist() == [True, False, False, False, False]
    assert stability.cosine[0] == pytest.approx(1.0) and stability.cosine[1] > 0.99
    assert stability.cosine[2] == pytest.approx(0.0)
    assert stability.cosine[3] == pytest.approx(1 / np.sqrt(1.25), abs=1e-6)
    assert stability.cosine[4] > 0.99 and stability.other_share[4] == pytest.approx(0.3)
    assert abs(stability.other_share[4] - shares[4]) > 0.02  # fails the share clause too...
    stability = compare_runs(found, other, TemplateConfig(stable_share_moved=1.0))
    # ...so with shares ignored, only the mutual and cosine clauses mark 4 and 3
    assert stability.stable.tolist() == [True, True, False, False, False]


@pytest.mark.slow
def test_sign_invariant_discovery_folds_each_pair_into_one_template():
    truth, kernels, which = _synthetic(5)  # four patterns, each next to its negative
    folded = discover_templates(_trained(5), kernels, TemplateConfig(sign_invariant=True),
                                THRESHOLD)
    assert len(folded.weights) == 4
    assert np.abs(folded.weights @ truth.T).max(axis=0).min() >= 0.95
    structured = which >= 0
    ids, cos, signs = TemplateIndex(folded.weights, sign_invariant=True).nearest_with_sign(
        kernels[structured])
    assert (cos >= THRESHOLD).mean() >= 0.98
    pair = which[structured] // 2
    for p in range(4):  # a kernel and its negative share a template, with opposite signs
        mine = pair == p
        assert len(set(ids[mine])) == 1
        positive = which[structured] % 2 == 0
        assert set(signs[mine & positive]) != set(signs[mine & ~positive])


@pytest.mark.parametrize("k", [3, 7])
def test_kmeans_fallback_recovers_the_patterns(k):
    truth, kernels, _ = _synthetic(k)
    found = kmeans_templates(kernels, TemplateConfig(method="kmeans"), threshold=THRESHOLD)
    assert len(found.weights) == 8
    assert (found.weights @ truth.T).max(axis=0).min() >= 0.95
    assert np.isnan(found.codes).all()


def test_merge_keeps_the_first_of_each_direction():
    e = np.eye(3, dtype=np.float32)
    near = (e[0] + 0.1 * e[1]) / np.linalg.norm(e[0] + 0.1 * e[1])
    candidates = np.stack([e[0], near, e[1], -e[0]])
    assert merge_near_duplicates(candidates, 0.9).tolist() == [0, 2, 3]


def test_only_clustered_kernels_keep_a_template_alive():
    """Template 2 is nearest for 40% of the kernels, all below the threshold: it goes. Template
    1 holds 1 of 61 clustered kernels, under min_share: it goes too."""
    e = np.eye(4, dtype=np.float32)
    noise = (e[2] + 1.2 * e[3]) / np.linalg.norm(e[2] + 1.2 * e[3])  # cosine 0.64 to e[2]
    kernels = np.concatenate([np.repeat(e[:1], 60, 0), e[1:2], np.repeat(noise[None], 41, 0)])
    assert keep_attracting(e[:3], kernels, min_share=0.05, threshold=0.8).tolist() == [0]
    assert keep_attracting(e[:3], kernels, min_share=0.01, threshold=0.8).tolist() == [0, 1]
    assert keep_attracting(e[2:3], kernels[61:], min_share=0.01, threshold=0.8).tolist() == []


def test_template_config_defaults_are_documented_values():
    config = TemplateConfig()
    assert config.min_share == 0.02 and config.merge_cosine == 0.9
    assert (config.stable_cosine, config.stable_share_moved) == (0.95, 0.02)


def test_template_table_has_fits_stability_and_master_keys():
    k = 7
    truth, kernels, _ = _synthetic(k)
    counts = np.full(len(truth), 100)
    found = TemplateSet(truth, np.full(len(truth), np.nan, np.float32), counts, counts,
                        counts / counts.sum(), counts / 1000)
    stability = compare_runs(found, found, TemplateConfig())
    table = template_table(k, found, stability, master_keys=truth[::-1].copy())
    rows = table.to_pylist()
    assert [r["label"] for r in rows] == [p.expected(k).label for p in planted_patterns(k)]
    assert all(r["stable"] and r["stability_cosine"] == pytest.approx(1.0) for r in rows)
    assert [r["master_key"] for r in rows] == list(range(len(truth), 0, -1))
    assert all(r["master_key_cosine"] == pytest.approx(1.0, abs=1e-5) for r in rows)
    assert all(np.dot(r["fit_weights"], r["weights"]) == pytest.approx(r["fit_cosine"], abs=1e-4)
               for r in rows)
    plain = template_table(5, kmeans_templates(_synthetic(5)[1], TemplateConfig()), None, truth)
    assert set(plain.column("stable").to_pylist()) == {None}
    assert set(plain.column("master_key").to_pylist()) == {None}  # 7x7 filters, 5x5 templates


def test_a_pattern_no_template_reaches_is_reported_with_its_share():
    truth = np.stack([p.weights(5) for p in planted_patterns(5)])
    raw, _ = noisy_copies(truth, 300, noise=0.3, rng=np.random.default_rng(0))
    kernels, _ = centre_and_normalise(raw)
    missed = find_missed_patterns(truth[:7], kernels, threshold=0.8)
    assert len(missed) == 1
    centre, share = missed[0]
    assert float(centre @ truth[7]) >= 0.95 and share == pytest.approx(1 / 8, abs=0.01)
    assert find_missed_patterns(truth, kernels, threshold=0.8) == []
    # a pattern below 2% of the kernels is not "recurring"
    rare = np.concatenate([kernels[:2100], kernels[-30:]])
    assert find_missed_patterns(truth[:7], rare, threshold=0.8) == []
