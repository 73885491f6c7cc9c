"""Tests for jdlm.eval.distribution: n-gram JS and MAUVE on sets with known answers."""

import collections
import dataclasses
import math

import jax
import numpy as np
import pytest

from jdlm.eval import distribution as D
from jdlm.model import init_params
from jdlm.training.presets import tiny_mdm_config


def test_js_known_values():
    assert D.js_divergence(collections.Counter("aab"), collections.Counter("aab")) == 0.0
    assert D.js_divergence(collections.Counter("ab"), collections.Counter("cd")) == 1.0
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4): JS = (log2(4/3) + (log2(2/3) + log2(2)) / 2) / 2
    expected = (math.log2(4 / 3) + (math.log2(2 / 3) + 1) / 2) / 2
    assert D.js_divergence(collections.Counter("aa"), collections.Counter("ab")) == pytest.approx(expected)
    with pytest.raises(ValueError, match="non-empty"):
        D.js_divergence(collections.Counter(), collections.Counter("a"))


def test_ngrams_stay_inside_each_sequence():
    assert D.ngram_counts(["ab", "cd"], 2) == collections.Counter({("a", "b"): 1, ("c", "d"): 1})
    assert D.ngram_counts([[1, 2, 3]], 3) == collections.Counter({(1, 2, 3): 1})


def test_ngram_js_identical_zero_disjoint_one_and_in_between():
    a = ["def f(x):", "return x + 1", "import os"]
    assert D.ngram_js(a, list(reversed(a))) == 0.0  # order of the set does not matter
    assert D.ngram_js(a, ["QQQQ", "ZZZ"]) == 1.0
    assert D.ngram_js([[1, 2, 3, 4]], [[5, 6, 7, 8]]) == 1.0
    # Same characters, other order: unigrams agree (0), longer n-grams differ.
    mixed = D.ngram_js(["abcd"], ["dcba"])
    assert mixed == pytest.approx(3 / 4)
    assert 0 < D.ngram_js(a, a[:2] + ["import sys"]) < D.ngram_js(a, ["import sys"]) < 1


def test_ngram_js_counts_short_sets():
    assert D.ngram_js(["ab"], ["ab"]) == 0.0  # n = 3, 4 have no n-grams on either side: left out
    # Unigrams equal (0); bigrams {ab, ba} against {ab}; trigrams only on one side (1); no 4-grams (left out).
    bigrams = (math.log2(4 / 3) + (math.log2(2 / 3) + 1) / 2) / 2
    assert D.ngram_js(["aba"], ["ab", "a"]) == pytest.approx((0 + bigrams + 1) / 3)
    with pytest.raises(ValueError, match="at least one"):
        D.ngram_js([""], [[]])


def test_frontier_area_identical_is_one_and_disjoint_is_near_zero():
    assert D.frontier_area(np.array([3, 1, 2]), np.array([6, 2, 4])) == pytest.approx(1.0)
    disjoint = D.frontier_area(np.array([1, 1, 0, 0]), np.array([0, 0, 2, 5]))
    # The frontier is x = (1 - w)^5, y = w^5: area 5 B(5, 6) = 1/252 exactly, the trapezoid rule slightly above.
    assert 1 / 252 <= disjoint < 0.01
    half = D.frontier_area(np.array([1, 1, 0]), np.array([0, 1, 1]))
    assert disjoint < half < 1


def test_mauve_identical_disjoint_and_partial():
    rng = np.random.default_rng(0)
    blob = lambda center, n: rng.normal(size=(n, 8)) * 0.05 + center
    a, b = np.eye(8)[0], np.eye(8)[1]
    p = np.concatenate([blob(a, 40), blob(b, 40)])
    assert D.mauve(p, p.copy()) == pytest.approx(1.0)
    assert D.mauve(blob(a, 60), blob(b, 60)) < 0.01
    shifted = np.concatenate([blob(a, 70), blob(b, 10)])  # same clusters, other proportions
    assert 0.01 < D.mauve(p, shifted) < 0.99
    with pytest.raises(ValueError, match="features"):
        D.mauve(p, p[:, :4])


def test_mean_hidden_features_average_the_continuation_and_ignore_padding():
    config = dataclasses.replace(tiny_mdm_config(), d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16,
                                 mlp_hidden=64)
    params = init_params(config, jax.random.key(0))
    tokens = np.array([[7, 8, 9, 10, 0], [7, 8, 9, 10, 11]])
    continuation = np.array([[0, 0, 1, 1, 0], [0, 0, 1, 1, 0]], bool)
    real = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    features = D.mean_hidden_features(params, tokens, continuation, real, batch_size=4)
    assert features.shape == (2, 32)
    alone = D.mean_hidden_features(params, tokens[:1, :4], continuation[:1, :4], batch_size=4)
    np.testing.assert_allclose(features[0], alone[0], atol=1e-5)  # the masked padding changes nothing
    assert not np.allclose(features[0], features[1], atol=1e-5)  # a real fifth token does
