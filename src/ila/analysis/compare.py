"""Compare the rankings of several runs: overlap of important sets and rank correlation.

The paper's headline (arXiv 2410.17875) is an overlap figure: the important units found
on very different alignment datasets largely coincide. For every pair of runs this module
measures, on the same model and the same kind of unit (docs/method.md, "Output"):

- the Jaccard index of the important sets at several fractions K (top ``k(K)`` units),
  next to the Jaccard expected of two random sets of that size, so an overlap can be
  read against chance (0.66 means little at K = 75%, where chance alone gives 0.6);
- beside each Jaccard, the shared fraction |A∩B|/k (the share of either top set the other
  holds, which the Jaccard is not) with its chance k/N, and kappa, the shared fraction
  rescaled so chance is 0 and identity 1 (:mod:`ila.core.agreement`);
- the structural null (each run's top set redrawn within module type) and the excess of
  the Jaccard over it, and the within-module-type Jaccard (each type's own top K), two
  views of the agreement that module-type composition cannot explain;
- the same Jaccard, shared fraction and kappa for the bottom sets (the least important
  k units, what "freeze the bottom 25%" acts on) at 25% and at every fraction asked;
- Spearman's rho and Kendall's tau-b between the importance values of all units, which
  use the whole ranking rather than one cut. Tied importances get average ranks
  (Spearman) and the tau-b tie correction (Kendall).

Nothing here needs torch or a model: it reads ``layer_scores.json`` files only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from ila.config import setting
from ila.core.agreement import (
    AgreementSummary,
    SetAgreement,
    chance_within_type_jaccard,
    set_agreement,
    spread,
    summarize_agreements,
    top_set,
    within_type_jaccard,
)
from ila.core.scores import SCORES_FILE, LayerScores, expected_random_jaccard, jaccard, top_count
from ila.errors import IlaError, argument
from ila.model.identity import fingerprint_of_record
from ila.progress import track
from ila.run_files import COMPARISON_SCHEMA_VERSION

__all__ = [
    "BOTTOM_FRACTIONS",
    "COMPARISON_SCHEMA_VERSION",
    "CURVE_FRACTIONS",
    "DEFAULT_FRACTIONS",
    "MEASURE_DEFINITIONS",
    "Comparison",
    "FractionSummary",
    "PairComparison",
    "RunScores",
    "compare_scores",
    "kendall_tau_b",
    "load_runs",
    "run_labels",
    "spearman",
    "structural_null_jaccard",
    "update_norm_correlation",
]


DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 0.75)
BOTTOM_FRACTIONS = (0.25,)
"""Bottom sets always compared (with every fraction asked for): "freeze the bottom 25%"."""
MEASURE_DEFINITIONS = {
    "jaccard": "|A∩B| / |A∪B| of the two runs' sets of k units",
    "shared_fraction": "|A∩B| / k: the share of either run's set that the other run's holds",
    "kappa": "(shared_fraction - k/N) / (1 - k/N): 0 at chance, 1 identical, < 0 below chance",
    "chance_jaccard": "Jaccard expected of two random sets of k units (random_jaccard)",
    "chance_shared_fraction": "shared fraction expected of two random sets of k units: k/N",
    "structural_null": "Jaccard expected when each run's top set is redrawn within module type",
    "jaccard_minus_structural_null": "Jaccard minus the structural null",
    "within_type_jaccard": "Jaccard of the top K of each module type's units, averaged over "
    "types weighted by unit count; chance_within_type_jaccard is its random expectation",
}
"""What each measure of comparison.json is (written there as ``measures``)."""
CURVE_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 21))
"""Fractions of the overlap-vs-fraction curves (5% steps up to 100%)."""


@dataclass(frozen=True)
class PairComparison:
    """Two runs compared: Jaccard at each fraction and rank correlations of all units."""

    a: str
    b: str
    jaccard: dict[float, float]
    spearman: float
    kendall_tau_b: float
    structural_null: dict[float, float]
    """Jaccard expected at each fraction when each run's importances are shuffled within
    module type (its top sets keep their composition by module type)."""
    top: dict[float, SetAgreement]
    """The top sets at each fraction on every scale: Jaccard, shared fraction |A∩B|/k,
    kappa and the chance of each (:class:`ila.core.agreement.SetAgreement`)."""
    bottom: dict[float, SetAgreement]
    """The same for the bottom sets (least important k units), at
    :data:`BOTTOM_FRACTIONS` and every fraction compared."""
    within_type_jaccard: dict[float, float]
    """At each fraction, the Jaccard of the top K of each module type's units, averaged
    over types weighted by unit count (:func:`ila.core.agreement.within_type_jaccard`)."""

    @property
    def jaccard_minus_structural_null(self) -> dict[float, float]:
        """Jaccard minus the structural null at each fraction: the agreement that the top
        sets' module-type composition does not explain."""
        return {f: self.jaccard[f] - self.structural_null[f] for f in self.jaccard}


@dataclass(frozen=True)
class FractionSummary:
    """All pairs' top sets at one fraction K: mean, min and max of each measure, and the
    random expectation of each.

    ``random_jaccard`` is the Jaccard's chance; the shared fraction |A∩B|/k has chance
    ``chance_shared_fraction`` = k/N, and kappa has 0 (None throughout when k = N).
    """

    fraction: float
    k: int
    mean_jaccard: float
    min_jaccard: float
    max_jaccard: float
    random_jaccard: float
    structural_null_jaccard: float
    """Mean over pairs of the structural null (see :func:`structural_null_jaccard`)."""
    mean_shared_fraction: float
    """Mean over pairs of |A∩B|/k, the share of either run's top set the other's holds."""
    min_shared_fraction: float
    max_shared_fraction: float
    chance_shared_fraction: float
    """k/N: the shared fraction of two random sets of k units."""
    mean_kappa: float | None
    """Mean over pairs of (shared fraction - k/N) / (1 - k/N); chance is 0."""
    min_kappa: float | None
    max_kappa: float | None
    mean_jaccard_minus_structural_null: float
    """Mean over pairs of Jaccard minus the pair's structural null (= mean_jaccard -
    structural_null_jaccard): agreement the top sets' type composition does not explain."""
    min_jaccard_minus_structural_null: float
    max_jaccard_minus_structural_null: float
    mean_within_type_jaccard: float
    """Mean over pairs of the within-module-type Jaccard
    (:attr:`PairComparison.within_type_jaccard`)."""
    min_within_type_jaccard: float
    max_within_type_jaccard: float
    chance_within_type_jaccard: float
    """Within-type Jaccard of two random rankings (each type's random-set Jaccard)."""

    def to_dict(self) -> dict[str, Any]:
        """The fields by name: ``by_fraction`` of comparison.json (schema 1's seven keys
        first, then the measures added beside them)."""
        return asdict(self)


@dataclass(frozen=True)
class RunScores:
    """One run's scores and the label it is shown under."""

    label: str
    source: str
    scores: LayerScores


@dataclass
class Comparison:
    """Every pairwise comparison of a set of runs of one model and one unit kind."""

    runs: list[dict[str, Any]]
    num_units: int
    unit_kind: str
    model_id: str
    fractions: list[float]
    pairs: list[PairComparison]
    by_fraction: list[FractionSummary]
    curve: dict[str, Any]
    """Jaccard at :data:`CURVE_FRACTIONS`: ``fraction``, ``k``, ``random``, ``mean`` and
    ``pairs`` (one list per pair, keyed 'A vs B')."""
    models_differ: bool = False
    """The runs come from models with one layout but different files (allowed by
    ``allow_other_model``)."""
    bottom: list[AgreementSummary] = field(default_factory=list)
    """All pairs' bottom sets (least important k units) at each bottom fraction: Jaccard,
    shared fraction and kappa (mean, min, max) and their chance."""

    @property
    def labels(self) -> list[str]:
        return [run["label"] for run in self.runs]

    def pair(self, a: str, b: str) -> PairComparison:
        """The comparison of runs ``a`` and ``b`` (in either order)."""
        for pair in self.pairs:
            if {pair.a, pair.b} == {a, b}:
                return pair
        raise KeyError(f"no pair {a!r}, {b!r}")

    def matrix(self, metric: str, fraction: float | None = None) -> list[list[float]]:
        """Labels x labels matrix of 'jaccard' (at ``fraction``), 'spearman' or 'kendall_tau_b'.

        The diagonal is 1 (a run against itself).
        """
        labels = self.labels
        out = [[1.0] * len(labels) for _ in labels]
        for pair in self.pairs:
            if metric == "jaccard":
                if fraction is None:
                    raise ValueError("matrix('jaccard') needs a fraction")
                value = pair.jaccard[fraction]
            else:
                value = getattr(pair, metric)
            i, j = labels.index(pair.a), labels.index(pair.b)
            out[i][j] = out[j][i] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        """comparison.json. Schema 1's keys are kept as they were; added beside them:
        ``measures`` (what each measure is), ``bottom_fractions`` and ``bottom_by_fraction``
        (:class:`AgreementSummary` of the bottom sets), per ``by_fraction`` entry the
        shared fraction, kappa, Jaccard minus structural null and within-type Jaccard
        (mean/min/max, with chance), per pair ``top`` and ``bottom`` (fraction ->
        :class:`SetAgreement`), ``jaccard_minus_structural_null`` and
        ``within_type_jaccard`` (fraction -> value)."""
        return {
            "schema_version": COMPARISON_SCHEMA_VERSION,
            "model_id": self.model_id,
            "models_differ": self.models_differ,
            "unit_kind": self.unit_kind,
            "num_units": self.num_units,
            "fractions": self.fractions,
            "runs": self.runs,
            "measures": MEASURE_DEFINITIONS,
            "by_fraction": [s.to_dict() for s in self.by_fraction],
            "bottom_fractions": [s.fraction for s in self.bottom],
            "bottom_by_fraction": [s.to_dict() for s in self.bottom],
            "pairs": [_pair_dict(p) for p in self.pairs],
            "curve": self.curve,
        }


def _pair_dict(p: PairComparison) -> dict[str, Any]:
    """One pair in comparison.json: the keys of schema 1 first, then the added measures."""
    return {
        "a": p.a,
        "b": p.b,
        "jaccard": {str(f): v for f, v in p.jaccard.items()},
        "spearman": p.spearman,
        "kendall_tau_b": p.kendall_tau_b,
        "structural_null": {str(f): v for f, v in p.structural_null.items()},
        "jaccard_minus_structural_null": {
            str(f): v for f, v in p.jaccard_minus_structural_null.items()
        },
        "within_type_jaccard": {str(f): v for f, v in p.within_type_jaccard.items()},
        "top": {str(f): v.to_dict() for f, v in p.top.items()},
        "bottom": {str(f): v.to_dict() for f, v in p.bottom.items()},
    }


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Short unique labels: each run's directory name, with parents added until unique.

    ``a/seed0`` and ``b/seed0`` become ``a/seed0`` and ``b/seed0``; ``x/run`` and ``y/z``
    stay ``run`` and ``z``. A scores file not named layer_scores.json is labelled by its stem.
    """
    parts: list[tuple[str, ...]] = []
    for path in paths:
        path = Path(path).absolute()
        if path.is_dir() or path.name == SCORES_FILE:
            run = path if path.is_dir() else path.parent
            parts.append(run.parts)
        else:
            parts.append((*path.parent.parts, path.stem))
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        clashes = {label for label in labels if labels.count(label) > 1}
        grow = [
            i for i, label in enumerate(labels) if label in clashes and depth[i] < len(parts[i])
        ]
        if not grow:
            return labels
        for i in grow:
            depth[i] += 1


def load_runs(paths: Sequence[Path]) -> list[RunScores]:
    """Read ``layer_scores.json`` of each run directory (or file) and label it.

    Refuses fewer than two runs and a run given twice.
    """
    if len(paths) < 2:
        raise IlaError(f"compare needs at least 2 runs, got {len(paths)}; pass RUN_A RUN_B [...]")
    resolved: dict[Path, Path] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise IlaError(f"{path}: no such run directory or {SCORES_FILE} file")
        if path.is_dir() and not (path / SCORES_FILE).is_file():
            raise IlaError(
                f"{path} holds no {SCORES_FILE}; pass the directory of a finished "
                "'ila score' or 'ila run', or a scores file"
            )
        file = (path / SCORES_FILE if path.is_dir() else path).resolve()
        if file in resolved:
            raise IlaError(f"{path}: the same scores as {resolved[file]} are given twice")
        resolved[file] = path
    labels = run_labels(paths)
    return [
        RunScores(label, str(path), LayerScores.load(path))
        for label, path in zip(labels, paths, strict=True)
    ]


def compare_scores(
    scores: Sequence[LayerScores],
    labels: Sequence[str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    sources: Sequence[str] | None = None,
    allow_other_model: bool = False,
) -> Comparison:
    """Compare every pair of ``scores`` (one model, one unit kind) at ``fractions``.

    Raises :class:`IlaError` for fewer than two runs, runs of different models (by
    fingerprint, ila.model.identity, unless ``allow_other_model``; by resolved path for
    runs that record none) or unit kinds or layouts, fractions outside (0, 1] or
    repeated, and a run whose ranking is a tie (ila.core.ties; its rank correlation is
    undefined).
    """
    if len(scores) < 2:
        raise IlaError(f"compare needs at least 2 runs, got {len(scores)}")
    if len(labels) != len(scores) or len(set(labels)) != len(labels):
        raise IlaError(f"need one distinct label per run, got {list(labels)}")
    fractions = _check_fractions(fractions)
    models_differ = _check_comparable(scores, labels, allow_other_model=allow_other_model)
    first = scores[0]
    n = len(first.units)
    _refuse_ties(scores, labels)
    order = first.names
    types = {u.name: u.module_type for u in first.units}
    ranked = [
        _Ranked(label, s.ranking(), _importance_vector(s, order))
        for label, s in zip(labels, scores, strict=True)
    ]
    bottom_fractions = sorted({*BOTTOM_FRACTIONS, *fractions})
    pairs = [
        _compare_pair(a, b, types, fractions, bottom_fractions)
        for a, b in track(list(combinations(ranked, 2)), "compare: pairs of runs", unit="pair")
    ]
    by_fraction = [_fraction_summary(pairs, f, types) for f in fractions]
    bottom = [summarize_agreements([p.bottom[f] for p in pairs]) for f in bottom_fractions]
    curve = _curve(ranked, n)
    runs = [
        _run_facts(label, s, source)
        for label, s, source in zip(labels, scores, sources or [None] * len(scores), strict=True)
    ]
    return Comparison(
        runs=runs,
        num_units=n,
        unit_kind=first.unit_kind,
        model_id=first.model_id,
        fractions=fractions,
        pairs=pairs,
        by_fraction=by_fraction,
        curve=curve,
        models_differ=models_differ,
        bottom=bottom,
    )


@dataclass(frozen=True)
class _Ranked:
    """One run as compared: its label, ranking and importances in model order."""

    label: str
    ranking: list[str]
    importance: np.ndarray


def _compare_pair(
    a: _Ranked,
    b: _Ranked,
    types: dict[str, str | None],
    fractions: Sequence[float],
    bottom_fractions: Sequence[float],
) -> PairComparison:
    """Every measure of one pair of runs (see :class:`PairComparison`)."""
    names, kinds = list(types), list(types.values())
    top = {f: set_agreement(a.ranking, b.ranking, f) for f in fractions}
    return PairComparison(
        a=a.label,
        b=b.label,
        jaccard={f: top[f].jaccard for f in fractions},
        spearman=spearman(a.importance, b.importance),
        kendall_tau_b=kendall_tau_b(a.importance, b.importance),
        structural_null={
            f: structural_null_jaccard(
                names, kinds, set(top_set(a.ranking, f)), set(top_set(b.ranking, f))
            )
            for f in fractions
        },
        top=top,
        bottom={f: set_agreement(a.ranking, b.ranking, f, "bottom") for f in bottom_fractions},
        within_type_jaccard={
            f: within_type_jaccard(a.ranking, b.ranking, types, f) for f in fractions
        },
    )


def _fraction_summary(
    pairs: Sequence[PairComparison], fraction: float, types: dict[str, str | None]
) -> FractionSummary:
    """Mean, min and max over ``pairs`` of every top-set measure at ``fraction``."""
    top = summarize_agreements([p.top[fraction] for p in pairs])
    excess = spread([p.jaccard_minus_structural_null[fraction] for p in pairs])
    within = spread([p.within_type_jaccard[fraction] for p in pairs])
    return FractionSummary(
        fraction=fraction,
        k=top.k,
        mean_jaccard=top.mean_jaccard,
        min_jaccard=top.min_jaccard,
        max_jaccard=top.max_jaccard,
        random_jaccard=top.chance_jaccard,
        structural_null_jaccard=sum(p.structural_null[fraction] for p in pairs) / len(pairs),
        mean_shared_fraction=top.mean_shared_fraction,
        min_shared_fraction=top.min_shared_fraction,
        max_shared_fraction=top.max_shared_fraction,
        chance_shared_fraction=top.chance_shared_fraction,
        mean_kappa=top.mean_kappa,
        min_kappa=top.min_kappa,
        max_kappa=top.max_kappa,
        mean_jaccard_minus_structural_null=excess[0],
        min_jaccard_minus_structural_null=excess[1],
        max_jaccard_minus_structural_null=excess[2],
        mean_within_type_jaccard=within[0],
        min_within_type_jaccard=within[1],
        max_within_type_jaccard=within[2],
        chance_within_type_jaccard=chance_within_type_jaccard(types, fraction),
    )


def _curve(ranked: Sequence[_Ranked], n: int) -> dict[str, Any]:
    """Jaccard of every pair at :data:`CURVE_FRACTIONS`, their mean and random sets."""
    tops = {r.label: [top_set(r.ranking, f) for f in CURVE_FRACTIONS] for r in ranked}
    pairs = {
        f"{a.label} vs {b.label}": [
            jaccard(x, y) for x, y in zip(tops[a.label], tops[b.label], strict=True)
        ]
        for a, b in combinations(ranked, 2)
    }
    return {
        "fraction": list(CURVE_FRACTIONS),
        "k": [top_count(n, f) for f in CURVE_FRACTIONS],
        "random": [expected_random_jaccard(n, top_count(n, f)) for f in CURVE_FRACTIONS],
        "mean": [
            sum(values[c] for values in pairs.values()) / len(pairs)
            for c in range(len(CURVE_FRACTIONS))
        ],
        "pairs": pairs,
    }


def structural_null_jaccard(
    names: Sequence[str],
    module_types: Sequence[str | None],
    top_a: set[str],
    top_b: set[str],
    *,
    draws: int = 20000,
    seed: int = 0,
) -> float:
    """E[Jaccard] of two top sets whose units are redrawn at random *within module type*.

    The null of "the two rankings agree only on which kinds of module matter": it is what
    shuffling each run's importances within module type gives, since that keeps the
    number of each type in its top set. For type t with n_t units, a_t of them in A and
    b_t in B, the overlap |A_t n B_t| of the redrawn sets is hypergeometric; the sum over
    types gives |A n B| and Jaccard = I / (|A| + |B| - I). Monte Carlo with a fixed seed
    (deterministic; standard error below 0.002). Block units (no module type) reduce to
    the random-set expectation.
    """
    rng = np.random.default_rng(seed)
    by_type: dict[str | None, list[str]] = {}
    for name, kind in zip(names, module_types, strict=True):
        by_type.setdefault(kind, []).append(name)
    overlap = np.zeros(draws)
    for members in by_type.values():
        a = sum(name in top_a for name in members)
        b = sum(name in top_b for name in members)
        if a and b:
            overlap += rng.hypergeometric(a, len(members) - a, b, size=draws)
    return float(np.mean(overlap / (len(top_a) + len(top_b) - overlap)))


def update_norm_correlation(scores: LayerScores) -> float | None:
    """Spearman's rho between an ILA run's importances and its stage-1 ||Delta_i||.

    The gates scale Delta_i, so big updates clear the budget more easily (docs/method.md,
    "What the ranking measures"): rho near 1 means the ranking adds little to the
    `lora-norm` scorer on the same adapter. None when the run did not record the norms
    (other scorers, block units, ensembles, older runs).
    """
    norms = scores.meta.get("stage1_update_norms")
    if scores.unit_kind != "module" or not norms or len(norms) != len(scores.units):
        return None
    return spearman([u.importance for u in scores.units], norms)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks of ``x`` and ``y``."""
    rx, ry = _average_ranks(np.asarray(x, float)), _average_ranks(np.asarray(y, float))
    if len(rx) != len(ry) or len(rx) < 2:
        raise ValueError("spearman needs two sequences of the same length >= 2")
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denominator == 0:
        raise ValueError("spearman is undefined for a constant sequence")
    return float(dx @ dy) / denominator


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (C - D) / sqrt((n0 - n1)(n0 - n2)).

    C and D count concordant and discordant pairs, n0 = n(n-1)/2 all pairs, n1 and n2 the
    pairs tied in ``x`` and in ``y``. Exact, O(n^2) pairs: a few hundred units take
    milliseconds.
    """
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if len(xa) != len(ya) or len(xa) < 2:
        raise ValueError("kendall_tau_b needs two sequences of the same length >= 2")
    i, j = np.triu_indices(len(xa), k=1)
    sx, sy = np.sign(xa[i] - xa[j]), np.sign(ya[i] - ya[j])
    n0 = len(i)
    n1, n2 = int((sx == 0).sum()), int((sy == 0).sum())
    denominator = math.sqrt((n0 - n1) * (n0 - n2))
    if denominator == 0:
        raise ValueError("kendall_tau_b is undefined for a constant sequence")
    return float((sx * sy).sum()) / denominator


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], len(values))
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends - 1) / 2 + 1)[group]
    return ranks


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    out = [float(f) for f in fractions]
    if not out:
        raise IlaError(argument("fractions"), ": give at least one fraction, e.g. 0.1 0.25")
    for f in out:
        if not (math.isfinite(f) and 0 < f <= 1):
            raise IlaError(argument("fractions"), f": each must be in (0, 1], got {f}")
        if out.count(f) > 1:
            raise IlaError(argument("fractions"), f": {f} is given twice")
    return sorted(out)


def _layout_key(layout: dict[str, Any]) -> tuple[Any, ...]:
    units = layout.get("units") or []
    return (
        layout.get("model_type"),
        layout.get("num_blocks"),
        tuple(
            (u.get("name"), tuple(u.get("shape") or ())) if isinstance(u, dict) else u
            for u in units
        ),
    )


def _model_identity(model_id: str) -> str:
    """A model id, with local paths resolved (./m and /abs/m are one model)."""
    path = Path(model_id).expanduser()
    return str(path.resolve()) if path.exists() else model_id


def _same_model(a: LayerScores, b: LayerScores) -> bool:
    """By fingerprint when both runs record one, else by the resolved model path."""
    fa, fb = (fingerprint_of_record(s.meta.get("model_fingerprint")) for s in (a, b))
    if fa is not None and fb is not None:
        return fa.same_model(fb)
    return _model_identity(a.model_id) == _model_identity(b.model_id)


def _model_text(scores: LayerScores) -> str:
    """A run's model as an error names it: its id, and its fingerprint where recorded (two
    runs of ``--model model`` from different folders differ only there)."""
    fingerprint = fingerprint_of_record(scores.meta.get("model_fingerprint"))
    return scores.model_id + (f", fingerprint {fingerprint.id}" if fingerprint else "")


def _refuse_ties(scores: Sequence[LayerScores], labels: Sequence[str]) -> None:
    """Refuse a run whose ranking is a tie (ila.core.ties): its order is arbitrary and its
    rank correlation undefined."""
    for label, s in zip(labels, scores, strict=True):
        found = s.separation()
        if found.tie:
            raise IlaError(
                f"run {label}: the ranking is a tie ({found.reason}); its order is arbitrary "
                "and its rank correlation undefined"
            )


def _check_comparable(
    scores: Sequence[LayerScores], labels: Sequence[str], *, allow_other_model: bool
) -> bool:
    """Raise unless the runs are comparable; return whether their models differ (allowed)."""
    first, label0 = scores[0], labels[0]
    models_differ = False
    for s, label in zip(scores[1:], labels[1:], strict=True):
        if s.unit_kind != first.unit_kind:
            raise IlaError(
                f"runs {label0} and {label} score different unit kinds ({first.unit_kind} vs "
                f"{s.unit_kind}); compare runs made with the same ",
                setting("stage2", "unit"),
            )
        if not _same_model(s, first):
            if not allow_other_model:
                raise IlaError(
                    f"runs {label0} and {label} come from different models ({_model_text(first)} "
                    f"vs {_model_text(s)}); compare runs of one model, or pass ",
                    argument("allow_other_model"),
                    " if comparing these models is what you mean",
                )
            models_differ = True
        if _layout_key(s.layout) != _layout_key(first.layout) or s.names != first.names:
            raise IlaError(
                f"runs {label0} and {label} have different model layouts (unit names or "
                "shapes differ, e.g. another ",
                setting("lora", "module_types"),
                "); compare runs of one model with the same units",
            )
    return models_differ


def _importance_vector(scores: LayerScores, order: list[str]) -> np.ndarray:
    by_name = {u.name: u.importance for u in scores.units}
    return np.array([by_name[name] for name in order], dtype=float)


def _run_facts(label: str, scores: LayerScores, source: str | None) -> dict[str, Any]:
    meta = scores.meta
    return {
        "label": label,
        "source": source,
        "method": scores.method,
        "model_id": scores.model_id,
        "seed": meta.get("seed"),
        "data_fingerprint": meta.get("data_fingerprint"),
        "T": meta.get("T"),
        "spearman_vs_update_norm": update_norm_correlation(scores),
        "ensemble_runs": (meta.get("ensemble") or {}).get("stability", {}).get("runs"),
    }
