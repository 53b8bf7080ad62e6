"""The ``snr`` scorer: signal-to-noise ratio of each unit's weight, as in Spectrum
(Hartford et al., arXiv 2406.06623), with no data and no training.

Random-matrix view: a weight W (m x n) that holds no learned structure behaves like a
matrix of i.i.d. noise of some scale sigma, whose singular values all lie below the
Marchenko-Pastur upper edge eps = sigma (sqrt(m) + sqrt(n)). Singular values above eps
are structure ("signal"). For each unit this module computes, in float32:

1. s = the singular values of W.
2. sigma from the median singular value. For i.i.d. noise with entries of standard
   deviation sigma, s_k^2 / N (N = max(m, n)) follows the Marchenko-Pastur law with ratio
   beta = min(m, n) / N, so median(s) ~= sigma sqrt(N mu_beta), mu_beta being that law's
   median (computed numerically by :func:`mp_median`). Hence
   sigma = median(s) / sqrt(N mu_beta). The median is used, not the spread of all
   singular values or the standard deviation of W, because a few large signal singular
   values barely move it.
3. eps = sigma (sqrt(m) + sqrt(n)).
4. SNR = sum(s_k > eps) / sum(s_k <= eps). Since eps lies above the median, at least
   half the singular values count as noise. The denominator is floored at
   float32-epsilon x sum(s), so an exactly low-rank W (noise-free) gets a large finite
   SNR (at most ~8e6) rather than a division by zero; W = 0 gets SNR 0.

Importance is SNR divided by the largest SNR; raw is SNR. SNR is scale-free
(W and cW score the same). Spectrum picks the top-SNR modules per module type; here the
ranking is global, like every other scorer's. Cost: one SVD per unit (seconds for a
small model, minutes for 7B on a CPU); no data.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ila.core.scores import LayerScores
from ila.scorers.base import ScoringContext
from ila.scorers.common import module_scores, normalise_by_max

__all__ = ["mp_median", "noise_sigma", "score_snr", "weight_snr"]

_GRID = 4096  # midpoints of the quadrature of the Marchenko-Pastur density


@lru_cache(maxsize=64)
def mp_median(beta: float) -> float:
    """Median of the Marchenko-Pastur law (unit variance, ratio ``beta`` in (0, 1]).

    Density f(x) = sqrt((b - x)(x - a)) / (2 pi beta x) on [a, b], a, b = (1 -+ sqrt(beta))^2.
    Substituting x = a + (b - a) sin^2(t), t in [0, pi/2], makes the integrand
    (b - a)^2 sin^2(t) cos^2(t) / (pi beta x) smooth (also at a = 0 when beta = 1), so a
    midpoint rule converges fast; the CDF is normalised by its total and inverted by
    linear interpolation.
    """
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    h = (math.pi / 2) / _GRID
    ts = [(k + 0.5) * h for k in range(_GRID)]
    xs = [a + (b - a) * math.sin(t) ** 2 for t in ts]
    weights = [
        (b - a) ** 2 * math.sin(t) ** 2 * math.cos(t) ** 2 / (math.pi * beta * x) * h
        for t, x in zip(ts, xs, strict=True)
    ]
    total = sum(weights)
    cdf = 0.0
    for k, w in enumerate(weights):
        if cdf + w >= total / 2:
            # x_k is the midpoint of cell k: interpolate inside the cell.
            t = (k + (total / 2 - cdf) / w) * h
            return a + (b - a) * math.sin(t) ** 2
        cdf += w
    return b  # unreachable: the weights sum to total


def noise_sigma(singular_values: torch.Tensor, m: int, n: int) -> float:
    """The entry-wise noise scale sigma implied by the median singular value (step 2)."""
    big, small = max(m, n), min(m, n)
    median = float(singular_values.median())
    return median / math.sqrt(big * mp_median(small / big))


def weight_snr(weight: torch.Tensor) -> float:
    """SNR of a 2-D weight: singular-value mass above the Marchenko-Pastur edge over below."""
    if weight.dim() != 2:
        raise ValueError(f"weight_snr needs a 2-D weight, got shape {tuple(weight.shape)}")
    m, n = weight.shape
    s = torch.linalg.svdvals(weight.detach().float())
    eps = noise_sigma(s, m, n) * (math.sqrt(m) + math.sqrt(n))
    total = float(s.sum())
    if total == 0:
        return 0.0
    signal = float(s[s > eps].sum())
    noise = max(float(s[s <= eps].sum()), torch.finfo(torch.float32).eps * total)
    return signal / noise


def score_snr(ctx: ScoringContext) -> LayerScores:
    """Rank units by the signal-to-noise ratio of their weight's singular values."""
    with torch.no_grad():
        snrs = [
            weight_snr(ctx.model.get_submodule(u.module_path).weight) for u in ctx.layer_map.units
        ]
    meta = {
        "granularity": "module",
        "noise_estimate": "median singular value / sqrt(max(m, n) * MP median(beta))",
        "threshold": "sigma * (sqrt(m) + sqrt(n))",
    }
    return module_scores(ctx, "snr", normalise_by_max(snrs), snrs, meta)
