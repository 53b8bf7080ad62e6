"""ila.core.agreement: Jaccard, shared fraction and kappa of top and bottom sets, by hand."""

import random

import pytest

from ila.core.agreement import (
    bottom_set,
    chance_shared_fraction,
    chance_within_type_jaccard,
    kappa,
    set_agreement,
    shared_fraction,
    summarize_agreements,
    top_set,
    unit_set,
    within_type_jaccard,
)
from ila.core.scores import expected_random_jaccard

RANKING = [f"u{i}" for i in range(8)]  # u0 most important


def test_hand_made_pair_at_n8_k2():
    # Top 25% of 8 = 2 units: {u0, u1} against {u0, u2}: one shared unit.
    other = ["u0", "u2", "u1", "u3", "u4", "u5", "u7", "u6"]
    top = set_agreement(RANKING, other, 0.25)
    assert (top.side, top.k, top.num_units) == ("top", 2, 8)
    assert top.jaccard == pytest.approx(1 / 3)  # 1 / |{u0, u1, u2}|
    assert top.shared_fraction == pytest.approx(1 / 2)  # = 2J / (1 + J)
    assert top.shared_fraction == pytest.approx(2 * top.jaccard / (1 + top.jaccard))
    assert top.chance_shared_fraction == pytest.approx(2 / 8)
    assert top.kappa == pytest.approx((1 / 2 - 1 / 4) / (1 - 1 / 4))  # 1/3
    # Hypergeometric by hand: P(I=1) = 12/28, P(I=2) = 1/28 -> 12/28 * 1/3 + 1/28 = 5/28.
    assert top.chance_jaccard == pytest.approx(5 / 28)
    # Bottom 2: {u6, u7} against {u7, u6}: the same set.
    bottom = set_agreement(RANKING, other, 0.25, "bottom")
    assert (bottom.jaccard, bottom.shared_fraction, bottom.kappa) == (1.0, 1.0, 1.0)
    assert bottom.to_dict()["side"] == "bottom" and bottom.to_dict()["k"] == 2


def test_identical_rankings_agree_on_every_scale_at_both_ends():
    for fraction in (0.1, 0.25, 0.5, 0.75):
        for side in ("top", "bottom"):
            same = set_agreement(RANKING, list(RANKING), fraction, side)
            assert (same.jaccard, same.shared_fraction, same.kappa) == (1.0, 1.0, 1.0)


def test_reversed_rankings_swap_top_and_bottom():
    reversed_ranking = RANKING[::-1]
    assert top_set(reversed_ranking, 0.25) == bottom_set(RANKING, 0.25) == {"u6", "u7"}
    top = set_agreement(RANKING, reversed_ranking, 0.25)
    bottom = set_agreement(RANKING, reversed_ranking, 0.25, "bottom")
    for disjoint in (top, bottom):
        assert (disjoint.jaccard, disjoint.shared_fraction) == (0.0, 0.0)
        assert disjoint.kappa == pytest.approx(-1 / 3)  # below chance: -(k/N) / (1 - k/N)
    # At 75% (k = 6 of 8) the reversed sets must share 4 units: O = 2/3 is below k/N = 3/4.
    wide = set_agreement(RANKING, reversed_ranking, 0.75)
    assert wide.shared_fraction == pytest.approx(4 / 6) and wide.jaccard == pytest.approx(0.5)
    assert wide.kappa == pytest.approx((4 / 6 - 3 / 4) / (1 / 4))


def test_kappa_is_the_same_for_a_top_set_and_the_units_outside_it():
    # Cohen's kappa of in/out: the top 2 of 8 and the bottom 6 of 8 classify alike.
    rng = random.Random(0)
    other = list(RANKING)
    rng.shuffle(other)
    top = set_agreement(RANKING, other, 0.25)
    rest = set_agreement(RANKING, other, 0.75, "bottom")
    assert top.k + rest.k == 8
    assert top.kappa == pytest.approx(rest.kappa)


def test_sizes_and_undefined_cases():
    assert unit_set(RANKING, 0.1) == {"u0"}  # k = max(1, round(0.8)) = 1
    assert chance_shared_fraction(8, 2) == 0.25
    assert kappa(1.0, 8, 8) is None  # every unit in both sets
    with pytest.raises(ValueError, match="one size"):
        shared_fraction({"a"}, {"a", "b"})
    with pytest.raises(ValueError, match="side"):
        unit_set(RANKING, 0.25, "middle")
    with pytest.raises(ValueError, match="same units"):
        set_agreement(RANKING, [*RANKING[:-1], "x"], 0.25)


def test_within_type_agreement_ignores_how_types_are_ordered_against_each_other():
    # Two types, four units each. Ranking a puts every 'q' unit above every 'v' unit, b the
    # reverse, but within each type both order the units alike.
    types = {f"q{i}": "q" for i in range(4)} | {f"v{i}": "v" for i in range(4)}
    a = ["q0", "q1", "q2", "q3", "v0", "v1", "v2", "v3"]
    b = ["v0", "v1", "v2", "v3", "q0", "q1", "q2", "q3"]
    assert set_agreement(a, b, 0.5).jaccard == 0.0  # the global top halves are disjoint
    assert within_type_jaccard(a, b, types, 0.5) == 1.0
    assert within_type_jaccard(a, b, types, 0.25, "bottom") == 1.0
    # Disagreeing within one type (q order reversed in b): the top 50% of q (2 units) is
    # {q0, q1} vs {q3, q2}: Jaccard 0; v agrees: (4 * 0 + 4 * 1) / 8.
    c = ["v0", "v1", "v2", "v3", "q3", "q2", "q1", "q0"]
    assert within_type_jaccard(a, c, types, 0.5) == pytest.approx(0.5)
    # Chance: each type's random Jaccard for n_t = 4, k_t = 2, weighted alike.
    assert chance_within_type_jaccard(types, 0.5) == pytest.approx(expected_random_jaccard(4, 2))


def test_summary_of_pairs():
    other = ["u0", "u2", "u1", "u3", "u4", "u5", "u7", "u6"]
    agreements = [
        set_agreement(RANKING, other, 0.25),
        set_agreement(RANKING, RANKING, 0.25),
        set_agreement(RANKING, RANKING[::-1], 0.25),
    ]
    summary = summarize_agreements(agreements)
    assert (summary.side, summary.fraction, summary.k, summary.pairs) == ("top", 0.25, 2, 3)
    assert summary.mean_shared_fraction == pytest.approx((0.5 + 1 + 0) / 3)
    assert (summary.min_shared_fraction, summary.max_shared_fraction) == (0.0, 1.0)
    assert summary.mean_kappa == pytest.approx((1 / 3 + 1 - 1 / 3) / 3)
    assert summary.min_kappa == pytest.approx(-1 / 3) and summary.max_kappa == 1.0
    assert summary.mean_jaccard == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert summary.to_dict()["chance_shared_fraction"] == 0.25
    with pytest.raises(ValueError, match="one side"):
        summarize_agreements([*agreements, set_agreement(RANKING, RANKING, 0.25, "bottom")])
