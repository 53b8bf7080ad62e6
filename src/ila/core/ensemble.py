"""Several independent identifications of one model on one dataset: consensus and stability.

``ila score --seeds N`` runs N complete identifications (stage 1 and stage 2, each with
its own seed: LoRA init, data order, dropout, gates) and combines them here
(docs/method.md, "Stability you can see"):

- the **consensus ranking**: each unit's importance (and raw value) averaged over the
  runs, ranked as usual;
- per unit, the **top-K frequency**: the share of runs that put it in their top K;
- the **single-run agreement**: the top K of every pair of runs compared (what one run
  of this setting can be expected to agree with another), next to chance;
- the **split-half agreement**: the runs split into two disjoint halves of floor(N/2)
  runs, the two halves' consensus rankings compared (mean over every split), which says
  how reproducible a consensus of that many runs is.

Both are given on every scale of :mod:`ila.core.agreement`: the Jaccard, the shared
fraction |A∩B|/k (the share of one run's top set the other holds, which the Jaccard is
not) and kappa (0 at chance, 1 identical), at the top 10/25/50/75% and for the bottom 25%
(the set "freeze the bottom 25%" acts on).

An ensemble's figures are the ensemble's: ``meta["ensemble"]`` says how many runs stand
behind them, and reports label them so. No torch here.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from ila.core.agreement import SetAgreement, set_agreement, unit_set
from ila.core.scores import LayerScores, UnitScore
from ila.errors import IlaError

__all__ = [
    "ENSEMBLE_BOTTOM_FRACTIONS",
    "ENSEMBLE_FRACTIONS",
    "consensus",
    "consensus_scores",
    "ensemble_stability",
    "split_agreement",
    "split_set_agreements",
    "stability_lines",
]

ENSEMBLE_FRACTIONS = (0.1, 0.25, 0.5, 0.75)
ENSEMBLE_BOTTOM_FRACTIONS = (0.25,)
"""Bottom sets whose agreement an ensemble reports: what "freeze the bottom 25%" acts on."""


def _check_members(runs: Sequence[LayerScores]) -> None:
    if len(runs) < 2:
        raise IlaError(f"an ensemble needs at least 2 runs, got {len(runs)}")
    first = runs[0]
    for other in runs[1:]:
        if other.names != first.names or other.unit_kind != first.unit_kind:
            raise IlaError("the runs of an ensemble must score the same units of one model")
        if other.method != first.method:
            raise IlaError(f"an ensemble mixes scorers {first.method!r} and {other.method!r}")


def _mean_units(runs: Sequence[LayerScores]) -> list[UnitScore]:
    first = runs[0]
    return [
        UnitScore(
            name=u.name,
            block=u.block,
            module_type=u.module_type,
            importance=statistics.fmean(r.units[i].importance for r in runs),
            raw=statistics.fmean(r.units[i].raw for r in runs),
        )
        for i, u in enumerate(first.units)
    ]


def consensus(runs: Sequence[LayerScores]) -> LayerScores:
    """The consensus ranking of ``runs``: each unit's importance and raw value averaged
    (no meta; :func:`consensus_scores` is the one that records where it came from)."""
    first = runs[0]
    return LayerScores(
        first.method, first.model_id, first.unit_kind, _mean_units(runs), first.layout, {}
    )


MAX_GROUP_PAIRS = 500


def _group_pairs(n_runs: int, size: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every unordered pair of disjoint groups of ``size`` of ``n_runs`` runs, or, where
    there are more than :data:`MAX_GROUP_PAIRS`, that many drawn with a fixed seed."""
    total = math.comb(n_runs, size) * math.comb(n_runs - size, size) // 2
    if total <= MAX_GROUP_PAIRS:
        pairs = []
        for a in itertools.combinations(range(n_runs), size):
            rest = [i for i in range(n_runs) if i not in a]
            pairs += [(a, b) for b in itertools.combinations(rest, size) if a < b]
        return pairs
    rng = random.Random(0)
    pairs = []
    for _ in range(MAX_GROUP_PAIRS):
        drawn = rng.sample(range(n_runs), 2 * size)
        pairs.append((tuple(sorted(drawn[:size])), tuple(sorted(drawn[size:]))))
    return pairs


GroupRanking = Callable[[tuple[int, ...]], list[str]]
"""The consensus ranking of a group of runs (indices into the ensemble)."""


def _group_rankings(runs: Sequence[LayerScores]) -> GroupRanking:
    """Consensus rankings of groups of ``runs``, each computed once (shared by fractions)."""

    @functools.cache
    def ranking(group: tuple[int, ...]) -> list[str]:
        return consensus([runs[i] for i in group]).ranking()

    return ranking


def split_set_agreements(
    runs: Sequence[LayerScores],
    size: int,
    fraction: float,
    side: str = "top",
    *,
    rankings: GroupRanking | None = None,
) -> list[SetAgreement]:
    """The ``side`` sets at ``fraction`` of the consensus rankings of two disjoint groups of
    ``size`` runs, compared on every scale, for every such pair of groups (each unordered
    pair once; a fixed-seed sample of :data:`MAX_GROUP_PAIRS` of them where there are more).

    ``size = len(runs) // 2`` is the split-half agreement of the ensemble; smaller sizes
    say how reproducible a consensus of fewer runs is (size 1 = single runs). ``rankings``
    (from one ensemble) reuses consensus rankings across calls.
    """
    if not 1 <= size <= len(runs) // 2:
        raise ValueError(f"group size must be in [1, {len(runs) // 2}] for {len(runs)} runs")
    ranking = rankings or _group_rankings(runs)
    return [
        set_agreement(ranking(a), ranking(b), fraction, side)
        for a, b in _group_pairs(len(runs), size)
    ]


def split_agreement(runs: Sequence[LayerScores], size: int, fraction: float) -> list[float]:
    """The top-``fraction`` Jaccard of :func:`split_set_agreements`, pair of groups by pair."""
    return [a.jaccard for a in split_set_agreements(runs, size, fraction)]


_SCALES = ("jaccard", "shared_fraction", "kappa")
"""The scales each agreement of an ensemble is given on (:class:`SetAgreement`)."""


def _measure_keys(
    prefix: str, agreements: Sequence[SetAgreement], spread: bool
) -> dict[str, float | None]:
    """``{prefix}_{measure}_mean`` (and ``_min``, ``_max`` with ``spread``) of each of
    :data:`_SCALES` over ``agreements``; None where undefined (kappa at k = N)."""
    out: dict[str, float | None] = {}
    for measure in _SCALES:
        values = [v for a in agreements if (v := getattr(a, measure)) is not None]
        out[f"{prefix}_{measure}_mean"] = statistics.fmean(values) if values else None
        if spread:
            out[f"{prefix}_{measure}_min"] = min(values) if values else None
            out[f"{prefix}_{measure}_max"] = max(values) if values else None
    return out


def _set_stability(
    runs: Sequence[LayerScores], fraction: float, side: str, rankings: GroupRanking
) -> dict[str, Any]:
    """Single-run and split-half agreement of the ``side`` sets at ``fraction``."""
    half = len(runs) // 2
    single = [
        set_agreement(a.ranking(), b.ranking(), fraction, side)
        for a, b in itertools.combinations(runs, 2)
    ]
    halves = split_set_agreements(runs, half, fraction, side, rankings=rankings)
    return {
        "fraction": fraction,
        "k": single[0].k,
        "side": side,
        "random_jaccard": single[0].chance_jaccard,
        "chance_shared_fraction": single[0].chance_shared_fraction,
        **_measure_keys("single_run", single, spread=True),
        "split_half_runs": half,
        **_measure_keys("split_half", halves, spread=False),
    }


def ensemble_stability(
    runs: Sequence[LayerScores],
    fractions: Sequence[float] = ENSEMBLE_FRACTIONS,
    bottom_fractions: Sequence[float] = ENSEMBLE_BOTTOM_FRACTIONS,
) -> dict[str, Any]:
    """Top-K frequencies, single-run and split-half agreement of ``runs`` (>= 2): the
    top sets at ``fractions`` (``by_fraction``) and the bottom sets at
    ``bottom_fractions`` (``bottom_by_fraction``), each as Jaccard, shared fraction
    |A∩B|/k and kappa (``single_run_<measure>_mean/min/max``,
    ``split_half_<measure>_mean``), with their chance (``random_jaccard``,
    ``chance_shared_fraction``; kappa's is 0)."""
    _check_members(runs)
    rankings = _group_rankings(runs)
    by_fraction = [_top_stability(runs, f, rankings) for f in fractions]
    bottom = [_bottom_stability(runs, f, rankings) for f in bottom_fractions]
    return {"runs": len(runs), "by_fraction": by_fraction, "bottom_by_fraction": bottom}


def _bottom_stability(
    runs: Sequence[LayerScores], fraction: float, rankings: GroupRanking
) -> dict[str, Any]:
    """:func:`_set_stability` of the bottom sets, with the number of units every run put
    in its bottom set."""
    row = _set_stability(runs, fraction, "bottom", rankings)
    bottoms = [unit_set(r.ranking(), fraction, "bottom") for r in runs]
    row["in_every_run"] = len(frozenset.intersection(*bottoms))
    return row


def _top_stability(
    runs: Sequence[LayerScores], fraction: float, rankings: GroupRanking
) -> dict[str, Any]:
    """:func:`_set_stability` of the top sets, with how agreement grows with the number
    of runs and each unit's share of runs that put it in their top set."""
    row = _set_stability(runs, fraction, "top", rankings)
    sizes = range(1, len(runs) // 2 + 1)
    by_size = {
        size: [a.jaccard for a in split_set_agreements(runs, size, fraction, rankings=rankings)]
        for size in sizes
    }
    tops = [unit_set(r.ranking(), fraction, "top") for r in runs]
    frequency = {name: sum(name in t for t in tops) / len(runs) for name in runs[0].names}
    # Consensus of K runs against K others, K = 1 .. half: how agreement grows with the
    # number of runs (what a larger --seeds would buy).
    row["consensus_jaccard_by_runs"] = {
        str(size): statistics.fmean(v) for size, v in by_size.items()
    }
    row["in_every_run"] = sum(v == 1.0 for v in frequency.values())
    row["top_frequency"] = frequency
    return row


def consensus_scores(
    runs: Sequence[LayerScores],
    *,
    seeds: Sequence[int],
    members: Sequence[str],
    fractions: Sequence[float] = ENSEMBLE_FRACTIONS,
) -> LayerScores:
    """The consensus of ``runs`` (importance and raw averaged), with its stability in meta.

    ``seeds`` and ``members`` (the member runs' directories) are recorded; the meta of
    the first run is kept for what the runs share (data, settings), with per-run facts
    (T, seconds) listed per member.
    """
    _check_members(runs)
    if len(seeds) != len(runs) or len(members) != len(runs):
        raise ValueError("one seed and one member directory per run")
    first = runs[0]
    per_run = ("T", "stage1_stable", "stage1_steps", "stage1_seconds", "stage2_seconds", "seed")
    own = (*per_run, "stage1_update_norms", "self_stability")
    meta = {k: v for k, v in first.meta.items() if k not in own}
    meta["ensemble"] = {
        "seeds": list(seeds),
        "members": list(members),
        "member_facts": [{k: r.meta.get(k) for k in per_run} for r in runs],
        "stability": ensemble_stability(runs, fractions),
        "note": (
            f"consensus of {len(runs)} independent runs (importance averaged); its "
            "agreement figures are the ensemble's, not a single run's"
        ),
    }
    # Mean T over the members, for summaries that show one T.
    ts = [r.meta["T"] for r in runs if isinstance(r.meta.get("T"), int)]
    if ts:
        meta["T"] = round(statistics.fmean(ts), 1)
    meta["stage1_seconds"] = sum(r.meta.get("stage1_seconds") or 0.0 for r in runs)
    meta["stage2_seconds"] = sum(r.meta.get("stage2_seconds") or 0.0 for r in runs)
    return LayerScores(
        first.method, first.model_id, first.unit_kind, _mean_units(runs), first.layout, meta
    )


def _by_runs_line(row: dict[str, Any]) -> list[str]:
    by_runs = row.get("consensus_jaccard_by_runs") or {}
    if len(by_runs) < 2:
        return []
    steps = ", ".join(f"{k} run{'s' if k != '1' else ''} {v:.2f}" for k, v in by_runs.items())
    return [f"consensus of K runs against a consensus of K other runs, top 25%: {steps}"]


SHARED_LABEL = "shared fraction |A n B|/k"
"""The shared fraction as the stability lines name it (ASCII: they are printed)."""


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _single_runs(row: dict[str, Any]) -> str:
    """The single-run agreement of one set on every scale present in ``row`` (ensembles
    made before the shared fraction and kappa were recorded give the Jaccard only)."""

    def measure(name: str, label: str, chance: str) -> str:
        mean, low, high = (row[f"single_run_{name}_{s}"] for s in ("mean", "min", "max"))
        spread = "" if low == high else f"{_number(low)} to {_number(high)}; "
        return f"{label} {_number(mean)} ({spread}chance {chance})"

    parts = [measure("jaccard", "Jaccard", f"{row['random_jaccard']:.2f}")]
    if "single_run_shared_fraction_mean" in row:
        parts.append(
            measure("shared_fraction", SHARED_LABEL, f"{row['chance_shared_fraction']:.2f}")
        )
        parts.append(measure("kappa", "kappa", "0"))
    return f"single runs agree at {', '.join(parts)}"


def _split_half(row: dict[str, Any]) -> str:
    """The split-half agreement of one set on every scale present in ``row``."""
    parts = [f"Jaccard {row['split_half_jaccard_mean']:.2f}"]
    if "split_half_shared_fraction_mean" in row:
        parts.append(f"{SHARED_LABEL} {_number(row['split_half_shared_fraction_mean'])}")
        parts.append(f"kappa {_number(row['split_half_kappa_mean'])}")
    return f"split-half ({row['split_half_runs']} runs per half): {', '.join(parts)}"


def _ensemble_lines(ensemble: dict[str, Any]) -> list[str]:
    """The top-25% and bottom-25% agreement of an ensemble, one line per set and view."""
    stability = ensemble["stability"]
    row = next(r for r in stability["by_fraction"] if r["fraction"] == 0.25)
    lines = [
        f"{stability['runs']} runs (seeds {', '.join(map(str, ensemble['seeds']))}); top 25% "
        f"(k={row['k']}): {_single_runs(row)}",
        f"{_split_half(row)}; {row['in_every_run']} units are in every run's top 25%",
    ]
    bottom = next(
        (r for r in stability.get("bottom_by_fraction", []) if r["fraction"] == 0.25), None
    )
    if bottom is not None:
        lines += [
            f"bottom 25% (k={bottom['k']}): {_single_runs(bottom)}",
            f"bottom 25% {_split_half(bottom)}; {bottom['in_every_run']} units are in every "
            "run's bottom 25%",
        ]
    return [*lines, *_by_runs_line(row)]


def stability_lines(scores: LayerScores) -> list[str]:
    """What a run can say about its own reproducibility, in one line per fact.

    An ensemble (``--seeds N``) reports the agreement between its single runs and its
    split-half agreement for the top 25% and the bottom 25% (Jaccard, shared fraction
    |A n B|/k and kappa, each with its chance), the units every run put on top or at the
    bottom, and how agreement grows with the number of runs; a single ILA run reports how
    much its rankings still moved at the end of stage 1 and of stage 2. A tied ranking
    (ila.core.ties) reports only that it is a tie.
    """
    found = scores.separation()
    if found.tie:  # its overlaps are 1.00 by construction (ila.core.ties)
        return [
            f"none: the ranking is a tie ({found.reason}); the overlaps of a tied ranking "
            "are 1.00 by construction and measure nothing"
        ]
    ensemble = scores.meta.get("ensemble")
    if ensemble:
        return _ensemble_lines(ensemble)
    own = scores.meta.get("self_stability") or {}
    lines = []
    if own.get("stage1_last_ranking_check") is not None:
        lines.append(
            "stage 1: the update-norm top 25% overlapped the previous check's at Jaccard "
            f"{own['stage1_last_ranking_check']:.2f}"
        )
    if own.get("stage2_tail_top25_jaccard") is not None:
        lines.append(
            "stage 2: the gate top 25% at the start and end of the averaged tail overlap at "
            f"Jaccard {own['stage2_tail_top25_jaccard']:.2f} (one run; --seeds N measures "
            "agreement between runs)"
        )
    return lines
