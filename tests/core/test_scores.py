"""LayerScores: ranking, important sets, overlap and the JSON contract."""

import json
import math

import pytest

from ila.core.scores import (
    SCHEMA_VERSION,
    LayerScores,
    UnitScore,
    expected_random_jaccard,
    jaccard,
    top_count,
)
from ila.errors import IlaError


def make_scores(values, unit_kind="module"):
    units = [
        UnitScore(f"layers.{i // 2}.m{i % 2}", i // 2, f"m{i % 2}", v, v * 10)
        for i, v in enumerate(values)
    ]
    return LayerScores(
        "ila", "tiny", unit_kind, units, layout={"num_blocks": (len(values) + 1) // 2}
    )


def test_ranking_is_descending_with_model_order_tie_break():
    scores = make_scores([0.2, 0.9, 0.5, 0.9])
    assert scores.ranking() == ["layers.0.m1", "layers.1.m1", "layers.1.m0", "layers.0.m0"]


@pytest.mark.parametrize(
    ("n", "fraction", "k"),
    [(224, 0.25, 56), (10, 0.25, 3), (10, 0.24, 2), (7, 0.1, 1), (4, 1.0, 4)],
)
def test_top_count_rounds_half_up_with_a_minimum_of_one(n, fraction, k):
    assert top_count(n, fraction) == k


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_top_count_rejects_bad_fractions(fraction):
    with pytest.raises(IlaError, match="fraction"):
        top_count(10, fraction)


def test_top_and_bottom_partition_the_ranking():
    scores = make_scores([0.1, 0.8, 0.3, 0.6, 0.5, 0.9, 0.2, 0.4])
    assert scores.top(0.25) == ["layers.2.m1", "layers.0.m1"]
    assert scores.bottom(0.25) == ["layers.3.m0", "layers.0.m0"]


def test_block_scores_are_means_of_their_units():
    scores = make_scores([0.2, 0.4, 1.0, 0.0])
    assert scores.block_scores() == {0: pytest.approx(0.3), 1: pytest.approx(0.5)}


def test_json_round_trip(tmp_path):
    scores = make_scores([0.3, 0.7, 0.1, 0.9])
    scores.meta["T"] = 42
    scores.save(tmp_path / "layer_scores.json")
    data = json.loads((tmp_path / "layer_scores.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["ranking"] == scores.ranking()
    assert [u["rank"] for u in data["units"]] == [3, 2, 4, 1]
    loaded = LayerScores.load(tmp_path)  # a run directory works too
    assert loaded.units == scores.units and loaded.meta == {"T": 42}


def test_wrong_schema_version_and_malformed_files_are_errors(tmp_path):
    data = make_scores([0.1, 0.2]).to_dict()
    (tmp_path / "a.json").write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(IlaError, match="schema_version 99"):
        LayerScores.load(tmp_path / "a.json")
    del data["units"][0]["importance"]
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(IlaError, match="malformed"):
        LayerScores.load(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(IlaError, match=r"c.json:1: not valid JSON"):
        LayerScores.load(tmp_path / "c.json")


def test_non_finite_scores_are_refused():
    with pytest.raises(IlaError, match="non-finite"):
        make_scores([0.1, float("nan")])


def test_jaccard():
    assert jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 1.0


def test_expected_random_jaccard_matches_simulation():
    import random

    rng = random.Random(0)
    n, k = 20, 5
    sims = [jaccard(rng.sample(range(n), k), rng.sample(range(n), k)) for _ in range(20000)]
    assert expected_random_jaccard(n, k) == pytest.approx(sum(sims) / len(sims), abs=0.01)
    assert expected_random_jaccard(n, n) == 1.0
    assert math.isclose(expected_random_jaccard(4, 2), (1 / 6) * 1 + (4 / 6) * (1 / 3))
