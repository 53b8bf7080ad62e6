"""Several independent identifications of one model on one dataset: consensus and stability.

``ila score --seeds N`` runs N complete identifications (stage 1 and stage 2, each with
its own seed: LoRA init, data order, dropout, gates) and combines them here
(docs/method.md, "Stability you can see"):

- the **consensus ranking**: each unit's importance (and raw value) averaged over the
  runs, ranked as usual;
- per unit, the **top-K frequency**: the share of runs that put it in their top K;
- the **single-run agreement**: Jaccard of the top K of every pair of runs (what one run
  of this setting can be expected to agree with another), next to chance;
- the **split-half agreement**: the runs split into two disjoint halves of floor(N/2)
  runs, the two halves' consensus rankings compared (mean over every split), which says
  how reproducible a consensus of that many runs is.

An ensemble's figures are the ensemble's: ``meta["ensemble"]`` says how many runs stand
behind them, and reports label them so. No torch here.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

from ila.core.scores import LayerScores, UnitScore, expected_random_jaccard, jaccard, top_count
from ila.errors import IlaError

__all__ = [
    "ENSEMBLE_FRACTIONS",
    "consensus",
    "consensus_scores",
    "ensemble_stability",
    "split_agreement",
    "stability_lines",
]

ENSEMBLE_FRACTIONS = (0.1, 0.25, 0.5)


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


def split_agreement(runs: Sequence[LayerScores], size: int, fraction: float) -> list[float]:
    """Top-``fraction`` Jaccard between the consensus rankings of two disjoint groups of
    ``size`` runs, for every such pair of groups (each unordered pair once; a fixed-seed
    sample of :data:`MAX_GROUP_PAIRS` of them where there are more).

    ``size = len(runs) // 2`` is the split-half agreement of the ensemble; smaller sizes
    say how reproducible a consensus of fewer runs is (size 1 = single runs).
    """
    if not 1 <= size <= len(runs) // 2:
        raise ValueError(f"group size must be in [1, {len(runs) // 2}] for {len(runs)} runs")
    tops: dict[tuple[int, ...], list[str]] = {}

    def top(group: tuple[int, ...]) -> list[str]:
        if group not in tops:
            tops[group] = consensus([runs[i] for i in group]).top(fraction)
        return tops[group]

    return [jaccard(top(a), top(b)) for a, b in _group_pairs(len(runs), size)]


def ensemble_stability(
    runs: Sequence[LayerScores], fractions: Sequence[float] = ENSEMBLE_FRACTIONS
) -> dict[str, Any]:
    """Top-K frequencies, single-run and split-half agreement of ``runs`` (>= 2)."""
    _check_members(runs)
    n_units, n_runs = len(runs[0].units), len(runs)
    half = n_runs // 2
    by_fraction = []
    for fraction in fractions:
        k = top_count(n_units, fraction)
        tops = [r.top(fraction) for r in runs]
        pairs = [jaccard(a, b) for a, b in itertools.combinations(tops, 2)]
        by_size = {size: split_agreement(runs, size, fraction) for size in range(1, half + 1)}
        halves = by_size[half]
        frequency = {name: sum(name in set(t) for t in tops) / n_runs for name in runs[0].names}
        by_fraction.append(
            {
                "fraction": fraction,
                "k": k,
                "random_jaccard": expected_random_jaccard(n_units, k),
                "single_run_jaccard_mean": statistics.fmean(pairs),
                "single_run_jaccard_min": min(pairs),
                "single_run_jaccard_max": max(pairs),
                "split_half_runs": half,
                "split_half_jaccard_mean": statistics.fmean(halves),
                # Consensus of K runs against K others, K = 1 .. half: how agreement grows
                # with the number of runs (what a larger --seeds would buy).
                "consensus_jaccard_by_runs": {
                    str(size): statistics.fmean(v) for size, v in by_size.items()
                },
                "in_every_run": sum(v == 1.0 for v in frequency.values()),
                "top_frequency": frequency,
            }
        )
    return {"runs": n_runs, "by_fraction": by_fraction}


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


def stability_lines(scores: LayerScores) -> list[str]:
    """What a run can say about its own reproducibility, in one line per fact.

    An ensemble (``--seeds N``) reports the top-25% agreement between its single runs,
    its split-half agreement and the units every run put on top; a single ILA run
    reports how much its rankings still moved at the end of stage 1 and of stage 2.
    """
    ensemble = scores.meta.get("ensemble")
    if ensemble:
        row = next(r for r in ensemble["stability"]["by_fraction"] if r["fraction"] == 0.25)
        n = ensemble["stability"]["runs"]
        return [
            f"{n} runs (seeds {', '.join(map(str, ensemble['seeds']))}); top 25% (k={row['k']}): "
            f"single runs agree at Jaccard {row['single_run_jaccard_mean']:.2f} "
            f"({row['single_run_jaccard_min']:.2f}-{row['single_run_jaccard_max']:.2f}; "
            f"chance {row['random_jaccard']:.2f})",
            f"split-half ({row['split_half_runs']} runs per half): Jaccard "
            f"{row['split_half_jaccard_mean']:.2f}; {row['in_every_run']} units are in "
            "every run's top 25%",
            *_by_runs_line(row),
        ]
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
