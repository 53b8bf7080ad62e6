"""Agreement of two rankings' unit sets, on every scale a reader may mean.

docs/method.md, "Output": the important set at fraction K is the top
``k = top_count(N, K)`` units of a ranking, and two rankings overlap at K by the Jaccard
index of their sets, next to the Jaccard of two random sets of k units. A Jaccard is
easily misread as "the share of the top set two runs have in common". It is not: two
sets of k units sharing I of them have J = I / (2k - I), while the share of either set
that the other holds is O = I / k = 2J / (1 + J); J = 0.5 means two thirds of each set
is shared. Neither number says how far above chance it is: random sets of k of N units
share k / N of themselves on average, so O = 0.75 at K = 75% is chance. For two
equal-size sets of N units this module gives:

- the Jaccard |A∩B| / |A∪B| and its chance (hypergeometric,
  :func:`ila.core.scores.expected_random_jaccard`);
- the **shared fraction** O = |A∩B| / k (the overlap coefficient) and its chance k / N;
- **kappa** = (O - k/N) / (1 - k/N): 1 for identical sets, 0 at chance, negative below.
  It is Cohen's kappa of the two rankings' in/out classification of all N units (both put
  k units in), so the top k and the N - k units outside it have the same kappa;
- the same for the **bottom** k units (the set "freeze the bottom 25%" acts on);
- the **within-module-type** Jaccard: per module type, the Jaccard of the top fraction K
  of that type's units in each ranking (as Spectrum selects per type), averaged over the
  types weighted by their unit counts. Both sets then hold the same number of units of
  each type, so this is agreement that module-type composition cannot explain
  (docs/method.md, "What the ranking measures").

Rankings are sequences of unit names, most important first (``LayerScores.ranking()``).
Nothing here needs torch or a model.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ila.core.scores import expected_random_jaccard, jaccard, top_count

__all__ = [
    "SIDES",
    "AgreementSummary",
    "SetAgreement",
    "bottom_set",
    "chance_shared_fraction",
    "chance_within_type_jaccard",
    "kappa",
    "set_agreement",
    "shared_fraction",
    "spread",
    "summarize_agreements",
    "top_set",
    "unit_set",
    "within_type_jaccard",
]

SIDES = ("top", "bottom")
"""Which end of a ranking a set is cut from: the most or the least important units."""

_chance_jaccard = functools.lru_cache(maxsize=4096)(expected_random_jaccard)


def unit_set(ranking: Sequence[str], fraction: float, side: str = "top") -> frozenset[str]:
    """The first (``side='top'``) or last (``'bottom'``) ``top_count(N, fraction)`` names
    of ``ranking``: one k rule for both ends, so a top and a bottom set at one fraction
    have the same size (``LayerScores.top`` / ``LayerScores.bottom``)."""
    k = top_count(len(ranking), fraction)
    if side == "top":
        return frozenset(ranking[:k])
    if side == "bottom":
        return frozenset(ranking[len(ranking) - k :])
    raise ValueError(f"side must be one of {SIDES}, got {side!r}")


def top_set(ranking: Sequence[str], fraction: float) -> frozenset[str]:
    """The important set at ``fraction``: the top ``top_count(N, fraction)`` units."""
    return unit_set(ranking, fraction, "top")


def bottom_set(ranking: Sequence[str], fraction: float) -> frozenset[str]:
    """The least important ``top_count(N, fraction)`` units (what a freeze acts on)."""
    return unit_set(ranking, fraction, "bottom")


def shared_fraction(a: Collection[str], b: Collection[str]) -> float:
    """|A∩B| / k for two sets of k units: the share of either set that the other holds.

    The overlap coefficient; for equal sizes it is 2J / (1 + J) of the Jaccard J. Sets of
    different sizes are refused: then the share differs by side and no chance applies.
    """
    sa, sb = set(a), set(b)
    if len(sa) != len(sb) or not sa:
        raise ValueError(f"need two non-empty sets of one size, got {len(sa)} and {len(sb)}")
    return len(sa & sb) / len(sa)


def chance_shared_fraction(num_units: int, k: int) -> float:
    """E[|A∩B| / k] = k / N for two independent random k-subsets of N units."""
    if not 0 < k <= num_units:
        raise ValueError(f"need 0 < k <= N, got k={k}, N={num_units}")
    return k / num_units


def kappa(shared: float, num_units: int, k: int) -> float | None:
    """(O - k/N) / (1 - k/N): the shared fraction O rescaled so chance is 0 and identity 1.

    Equal to Cohen's kappa of the two in/out classifications of the N units. None when
    k = N: every unit is in both sets, and agreement beyond chance is undefined.
    """
    chance = chance_shared_fraction(num_units, k)
    if k == num_units:
        return None
    return (shared - chance) / (1 - chance)


@dataclass(frozen=True)
class SetAgreement:
    """Two rankings' sets at one end and fraction, measured on every scale at once."""

    side: str
    """'top' (the important set) or 'bottom' (the least important units)."""
    fraction: float
    k: int
    """Units in each set: ``top_count(num_units, fraction)``."""
    num_units: int
    jaccard: float
    """|A∩B| / |A∪B|."""
    shared_fraction: float
    """|A∩B| / k: the share of either set that the other holds."""
    kappa: float | None
    """(shared_fraction - k/N) / (1 - k/N); None when k = N."""
    chance_jaccard: float
    """E[Jaccard] of two random k-subsets (hypergeometric)."""
    chance_shared_fraction: float
    """E[shared fraction] of two random k-subsets: k / N."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def set_agreement(
    ranking_a: Sequence[str], ranking_b: Sequence[str], fraction: float, side: str = "top"
) -> SetAgreement:
    """Agreement of two rankings of the same units at ``fraction``, from ``side``."""
    if len(ranking_a) != len(ranking_b) or set(ranking_a) != set(ranking_b):
        raise ValueError("the two rankings must order the same units")
    a, b = unit_set(ranking_a, fraction, side), unit_set(ranking_b, fraction, side)
    n, k = len(ranking_a), len(a)
    shared = shared_fraction(a, b)
    return SetAgreement(
        side=side,
        fraction=fraction,
        k=k,
        num_units=n,
        jaccard=jaccard(a, b),
        shared_fraction=shared,
        kappa=kappa(shared, n, k),
        chance_jaccard=_chance_jaccard(n, k),
        chance_shared_fraction=chance_shared_fraction(n, k),
    )


def _by_type(
    ranking: Sequence[str], module_types: Mapping[str, str | None]
) -> dict[str | None, list[str]]:
    """``ranking`` split into one sub-ranking per module type (order kept)."""
    out: dict[str | None, list[str]] = {}
    for name in ranking:
        out.setdefault(module_types[name], []).append(name)
    return out


def within_type_jaccard(
    ranking_a: Sequence[str],
    ranking_b: Sequence[str],
    module_types: Mapping[str, str | None],
    fraction: float,
    side: str = "top",
) -> float:
    """Jaccard of the two rankings' top (or bottom) ``fraction`` of each module type's
    units, averaged over the types weighted by their unit counts.

    Each type's sets hold ``top_count(n_t, fraction)`` units in both rankings, so module-type
    composition cannot raise this; compare it with :func:`chance_within_type_jaccard`.
    Block units (module type None) form one type: the plain Jaccard.
    """
    if len(ranking_a) != len(ranking_b) or set(ranking_a) != set(ranking_b):
        raise ValueError("the two rankings must order the same units")
    by_a, by_b = _by_type(ranking_a, module_types), _by_type(ranking_b, module_types)
    total = 0.0
    for kind, members in by_a.items():
        sets = unit_set(members, fraction, side), unit_set(by_b[kind], fraction, side)
        total += len(members) * jaccard(*sets)
    return total / len(ranking_a)


def chance_within_type_jaccard(module_types: Mapping[str, str | None], fraction: float) -> float:
    """E[:func:`within_type_jaccard`] of two random rankings: each type's random-set
    Jaccard for its own n_t and k_t, weighted by n_t (the same for either side)."""
    counts = Counter(module_types.values())
    weighted = sum(n_t * _chance_jaccard(n_t, top_count(n_t, fraction)) for n_t in counts.values())
    return weighted / sum(counts.values())


@dataclass(frozen=True)
class AgreementSummary:
    """Many pairs' :class:`SetAgreement` at one side and fraction: mean, min and max."""

    side: str
    fraction: float
    k: int
    pairs: int
    mean_jaccard: float
    min_jaccard: float
    max_jaccard: float
    mean_shared_fraction: float
    min_shared_fraction: float
    max_shared_fraction: float
    mean_kappa: float | None
    """None when k = N (kappa undefined)."""
    min_kappa: float | None
    max_kappa: float | None
    chance_jaccard: float
    chance_shared_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, min, max) of ``values``: how a measure is summarized over pairs."""
    return sum(values) / len(values), min(values), max(values)


def summarize_agreements(agreements: Sequence[SetAgreement]) -> AgreementSummary:
    """Mean, min and max of each measure over ``agreements`` (one side, fraction and N)."""
    if not agreements:
        raise ValueError("nothing to summarize")
    first = agreements[0]
    key = (first.side, first.fraction, first.num_units)
    if any((a.side, a.fraction, a.num_units) != key for a in agreements):
        raise ValueError("summarize agreements of one side, fraction and number of units")
    kappas = [a.kappa for a in agreements if a.kappa is not None]
    mean_k, min_k, max_k = spread(kappas) if kappas else (None, None, None)
    mean_j, min_j, max_j = spread([a.jaccard for a in agreements])
    mean_o, min_o, max_o = spread([a.shared_fraction for a in agreements])
    return AgreementSummary(
        side=first.side,
        fraction=first.fraction,
        k=first.k,
        pairs=len(agreements),
        mean_jaccard=mean_j,
        min_jaccard=min_j,
        max_jaccard=max_j,
        mean_shared_fraction=mean_o,
        min_shared_fraction=min_o,
        max_shared_fraction=max_o,
        mean_kappa=mean_k,
        min_kappa=min_k,
        max_kappa=max_k,
        chance_jaccard=first.chance_jaccard,
        chance_shared_fraction=first.chance_shared_fraction,
    )
