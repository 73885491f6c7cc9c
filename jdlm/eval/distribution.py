"""How far two sets of generated continuations are apart as distributions (docs/eval/distribution.md).

Two measures, both over continuations of the same prompts (e.g. a parallel decoding strategy's samples against
exact one-token-per-forward sampling's, or against the real continuations):

- `ngram_js`: the mean over n = 1..4 of the Jensen-Shannon divergence (base 2, so in [0, 1]) between the pooled
  n-gram distributions of the two sets, over token ids or characters. 0 for identical sets, 1 for sets that share
  no n-gram at any n. No model needed.
- `mauve`: MAUVE (Pillutla et al., 2021) over feature vectors, e.g. the model's mean final hidden state over each
  continuation (`mean_hidden_features`): the features of both sets are normalised, reduced by PCA, quantised
  together by k-means, and the area under the divergence frontier of the two cluster histograms is returned.
  1 for identical histograms, near 0 (5 B(5, 6) ~ 0.004 at scaling 5) for disjoint ones.

Both are estimates from finite samples: two independent sample sets of the same distribution are not at 0. Report
the distance between two seeds of the reference sampler next to the result (its noise floor).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Hashable, Sequence

import numpy as np

MAX_N = 4
MAUVE_SCALING = 5.0  # the MAUVE paper's c: frontier points are exp(-c KL)
FRONTIER_POINTS = 25  # mixture weights on the divergence frontier, as in the authors' code
PCA_VARIANCE = 0.9  # fraction of the feature variance PCA keeps before clustering, as in the authors' code


def ngram_counts(sequences: Sequence[Sequence[Hashable]], n: int) -> collections.Counter:
    """Counts of the n-grams (tuples) in `sequences`; n-grams never cross from one sequence to the next."""
    counts = collections.Counter()
    for seq in sequences:
        seq = tuple(seq)
        counts.update(seq[i:i + n] for i in range(len(seq) - n + 1))
    return counts


def js_divergence(p: collections.Counter, q: collections.Counter) -> float:
    """Jensen-Shannon divergence in bits between the distributions that counts `p` and `q` normalise to.

    In [0, 1]: 0 iff the distributions are equal, 1 iff their supports are disjoint. Both must be non-empty.
    """
    total_p, total_q = sum(p.values()), sum(q.values())
    if total_p <= 0 or total_q <= 0:
        raise ValueError("js_divergence needs two non-empty count tables")
    # Weighted by counts, not by rounded probabilities, so identical and disjoint tables give exactly 0 and 1.
    # Each side's term is its count times log2(own probability / mean probability).
    from_p, from_q = [], []
    for key in p.keys() | q.keys():
        a, b = p.get(key, 0), q.get(key, 0)
        mean = (a / total_p + b / total_q) / 2
        if a:
            from_p.append(a * (1.0 if not b else math.log2(a / total_p / mean)))
        if b:
            from_q.append(b * (1.0 if not a else math.log2(b / total_q / mean)))
    divergence = (math.fsum(from_p) / total_p + math.fsum(from_q) / total_q) / 2
    return min(max(divergence, 0.0), 1.0)


def ngram_js(a: Sequence[Sequence[Hashable]], b: Sequence[Sequence[Hashable]], max_n: int = MAX_N) -> float:
    """The mean over n = 1..max_n of the JS divergence between the n-gram distributions of `a` and `b`.

    Args:
      a, b: continuations, each a sequence of token ids or a string (characters); the sets may differ in size.
      max_n: the longest n-gram.
    Returns:
      A float in [0, 1]. An n at which neither set has an n-gram (every continuation shorter than n) is left out
      of the mean; one at which only one set has n-grams counts as 1.
    Raises:
      ValueError: both sets are empty of tokens.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    values = []
    for n in range(1, max_n + 1):
        p, q = ngram_counts(a, n), ngram_counts(b, n)
        if p and q:
            values.append(js_divergence(p, q))
        elif p or q:
            values.append(1.0)
    if not values:
        raise ValueError("ngram_js needs at least one continuation with a token")
    return float(np.mean(values))


# ---------------------------------------------------------------------------------------------- MAUVE


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, restarts: int = 5, iterations: int = 100) -> np.ndarray:
    """Cluster labels [N] of points x [N, D] by Lloyd's k-means with k-means++ seeding; the best of `restarts`."""
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        centers = [x[rng.integers(len(x))]]
        for _ in range(1, k):  # k-means++: each next center far from the chosen ones
            d2 = np.min(((x[:, None] - np.asarray(centers)[None]) ** 2).sum(-1), axis=1)
            centers.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
        centers = np.asarray(centers)
        for _ in range(iterations):
            labels = ((x[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
            moved = np.asarray([x[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(k)])
            if np.allclose(moved, centers):
                break
            centers = moved
        labels = ((x[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
        inertia = ((x - centers[labels]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _kl(p: np.ndarray, r: np.ndarray) -> float:
    """KL(p || r) in nats for histograms with r > 0 wherever p > 0."""
    support = p > 0
    return float(np.sum(p[support] * np.log(p[support] / r[support])))


def frontier_area(p: np.ndarray, q: np.ndarray, scaling: float = MAUVE_SCALING,
                  points: int = FRONTIER_POINTS) -> float:
    """MAUVE of two histograms [K]: the area under the divergence frontier.

    For mixtures r = w p + (1 - w) q (w on a grid of `points` in (0, 1)), the frontier holds the points
    (exp(-c KL(q || r)), exp(-c KL(p || r))), closed by (0, 1) and (1, 0); the area under it by the trapezoid rule
    (as in the authors' code, github.com/krishnap25/mauve). 1 iff p == q.
    """
    p, q = np.asarray(p, np.float64) / np.sum(p), np.asarray(q, np.float64) / np.sum(q)
    curve = [(0.0, 1.0), (1.0, 0.0)]
    for w in np.linspace(1e-6, 1 - 1e-6, points):
        r = w * p + (1 - w) * q
        curve.append((math.exp(-scaling * _kl(q, r)), math.exp(-scaling * _kl(p, r))))
    x, y = np.asarray(sorted(curve)).T
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def mauve(p_features: np.ndarray, q_features: np.ndarray, *, clusters: int | None = None, seed: int = 0,
          scaling: float = MAUVE_SCALING) -> float:
    """MAUVE between two sets of feature vectors, p [N, D] and q [M, D].

    Features are L2-normalised, projected by PCA onto the components holding PCA_VARIANCE of the variance of both
    sets together, and quantised together by k-means into `clusters` (default max(2, min(N, M) // 10), as the
    authors' default); the two cluster histograms go to `frontier_area`. In (0, 1], higher is closer.
    """
    p_features, q_features = np.asarray(p_features, np.float64), np.asarray(q_features, np.float64)
    if p_features.ndim != 2 or q_features.ndim != 2 or p_features.shape[1] != q_features.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D], got {p_features.shape} and {q_features.shape}")
    if min(len(p_features), len(q_features)) < 2:
        raise ValueError("mauve needs at least two feature vectors in each set")
    x = np.concatenate([p_features, q_features])
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    if s.sum() > 0:
        kept = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), PCA_VARIANCE)) + 1
        x = x @ vt[:kept].T
    k = clusters or max(2, min(len(p_features), len(q_features)) // 10)
    labels = kmeans(x, k, seed=seed)
    p_hist = np.bincount(labels[:len(p_features)], minlength=k)
    q_hist = np.bincount(labels[len(p_features):], minlength=k)
    return frontier_area(p_hist, q_hist, scaling)


def mean_hidden_features(params, tokens: np.ndarray, continuation: np.ndarray, key_mask: np.ndarray | None = None,
                         batch_size: int = 64) -> np.ndarray:
    """The model's final hidden state averaged over each continuation's positions: features for `mauve`.

    Args:
      params: a jdlm model (the one that generated, or any on the same tokenizer).
      tokens: [N, L] int token ids, prompt and continuation.
      continuation: [N, L] bool, True at the continuation's tokens (at least one per row).
      key_mask: [N, L] bool, True at real tokens (padding False, never attended to); default all real.
    Returns:
      [N, D] float32.
    """
    import jax
    import jax.numpy as jnp

    from jdlm.model import forward

    tokens, continuation = np.asarray(tokens, np.int32), np.asarray(continuation, bool)
    key_mask = np.ones(tokens.shape, bool) if key_mask is None else np.asarray(key_mask, bool)
    if tokens.shape != continuation.shape or tokens.shape != key_mask.shape:
        raise ValueError(f"tokens, continuation and key_mask must have one shape, got {tokens.shape}, "
                         f"{continuation.shape}, {key_mask.shape}")
    if not continuation.any(axis=1).all():
        raise ValueError("every row needs at least one continuation token")

    @jax.jit
    def features(params, ids, mask, real):  # params an argument, not a constant folded into the program
        hidden = forward(params, ids, key_mask=real, return_hidden=True).hidden.astype(jnp.float32)  # [B, L, D]
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)

    out = []
    for start in range(0, len(tokens), batch_size):
        rows = slice(start, start + batch_size)
        pad = ((0, batch_size - len(tokens[rows])), (0, 0))  # one shape for every batch: one compile
        batch = features(params, np.pad(tokens[rows], pad), np.pad(continuation[rows], pad, constant_values=True),
                         np.pad(key_mask[rows], pad, constant_values=True))
        out.append(np.asarray(batch)[:len(tokens[rows])])
    return np.concatenate(out)
