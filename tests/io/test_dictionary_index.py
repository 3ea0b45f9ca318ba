"""The dictionary index skips cells by a bound: it must still find what a flat search finds, the
nearest member by |cosine| and its sign, for kernels near the members, far from them and exactly
on them."""

import numpy as np
import pytest

from dwscan.io.template_index import DictionaryIndex
from dwscan.method.families import FAMILIES
from dwscan.method.preprocess import centre_and_normalise
from dwscan.method.yardstick import build_family_dictionary


def _assert_as_flat_search(index: DictionaryIndex, members: np.ndarray, queries: np.ndarray):
    ids, cosines, signs = index.nearest_with_sign(queries)
    flat = np.abs(queries @ members.T).max(axis=1)
    np.testing.assert_allclose(cosines, flat, atol=1e-6)
    # the id found is a member at that cosine, on the side the sign says
    np.testing.assert_allclose(np.sum(queries * members[ids], axis=1) * signs, cosines,
                               atol=1e-6)


@pytest.mark.parametrize("family", ["first-derivative", "centre-surround"])
def test_the_nearest_family_member_is_what_a_flat_search_finds(family):
    """A real dictionary (5x5, density 1: a few thousand members, many cells) against kernels of
    every kind: noisy members of either polarity, scaled and offset, and isotropic noise, whose
    nearest member is far and whose bounds prune least."""
    rng = np.random.default_rng(1)
    dictionary = build_family_dictionary(family, 5, density=1)
    index = dictionary.index
    members, _ = centre_and_normalise(FAMILIES[family].make(dictionary.parameters, 5))
    members = members.astype(np.float32)
    np.testing.assert_allclose(index.members, members, atol=1e-6)  # what the index holds
    assert len(index._cells) > 10  # the bound is really used
    near = members[rng.integers(0, len(members), 600)] * rng.choice([-1.0, 1.0], (600, 1))
    raw = np.concatenate([2.0 * (near + rng.normal(0, 0.05, near.shape)) + 0.3,
                          rng.standard_normal((600, 25))])
    queries, _ = centre_and_normalise(raw)
    _assert_as_flat_search(index, members, queries.astype(np.float32))


def test_members_on_a_curve_and_kernels_between_the_cells():
    """Members along a closed curve (a smooth 1-D family, as the families are) and kernels at
    the midpoints between neighbouring members, off the curve by a little: the nearest is often
    in the next cell, where only a sound bound keeps the search from stopping early."""
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.standard_normal((16, 4)))[0].T  # 4 orthonormal directions
    t = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    curve = (np.cos(t)[:, None] * basis[0] + np.sin(t)[:, None] * basis[1]
             + 0.3 * np.cos(3 * t)[:, None] * basis[2] + 0.3 * np.sin(5 * t)[:, None] * basis[3])
    members = (curve / np.linalg.norm(curve, axis=1, keepdims=True)).astype(np.float32)
    index = DictionaryIndex(members)
    assert len(index._cells) > 10
    middle = members + np.roll(members, -1, axis=0) + rng.normal(0, 0.02, members.shape)
    queries = (middle / np.linalg.norm(middle, axis=1, keepdims=True)).astype(np.float32)
    _assert_as_flat_search(index, members, queries)


def test_a_member_finds_itself_and_its_negative_finds_it_with_sign_minus_one():
    rng = np.random.default_rng(3)
    members, _ = centre_and_normalise(rng.standard_normal((300, 9)))
    members = members.astype(np.float32)
    index = DictionaryIndex(members)
    which = np.arange(0, 300, 7)
    ids, cosines, signs = index.nearest_with_sign(np.concatenate([members[which],
                                                                  -members[which]]))
    assert np.array_equal(ids, np.concatenate([which, which]))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-6)
    assert np.array_equal(signs, np.repeat([1, -1], len(which)))


def test_a_dictionary_too_small_for_cells_is_one_cell_and_still_exact():
    rng = np.random.default_rng(4)
    members, _ = centre_and_normalise(rng.standard_normal((40, 25)))
    index = DictionaryIndex(members)
    assert len(index._cells) == 1
    queries, _ = centre_and_normalise(rng.standard_normal((200, 25)))
    _assert_as_flat_search(index, members.astype(np.float32), queries.astype(np.float32))
    assert index.nearest_with_sign(np.zeros((0, 25), np.float32))[0].shape == (0,)
    for bad in (np.zeros((0, 25)), np.zeros((3, 25)), np.ones(25)):
        with pytest.raises(ValueError, match="non-empty matrix of non-zero rows"):
            DictionaryIndex(bad)
