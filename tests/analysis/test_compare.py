"""`ila compare` and ila.analysis.compare: overlap, rank correlation, outputs and refusals.

Scores are built in memory with known rankings (no model), written as real
layer_scores.json files where the CLI is exercised.
"""

import json
import math
import random

import numpy as np
import pytest

from conftest import make_scores, write_score_runs
from ila.analysis.compare import (
    CURVE_FRACTIONS,
    compare_scores,
    kendall_tau_b,
    load_runs,
    run_labels,
    spearman,
)
from ila.cli import main
from ila.core.scores import LayerScores, expected_random_jaccard
from ila.errors import IlaError

TYPES = ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj"]


def test_rank_correlations_match_hand_computed_values_with_ties():
    # x has one tie, y another: C = 4, D = 0, n0 = 6, n1 = n2 = 1 -> tau-b = 4 / 5.
    x, y = [1, 2, 2, 3], [1, 3, 2, 3]
    assert kendall_tau_b(x, y) == pytest.approx(0.8)
    # Average ranks (1, 2.5, 2.5, 4) and (1, 3.5, 2, 3.5): rho = 3.75 / 4.5.
    assert spearman(x, y) == pytest.approx(3.75 / 4.5)
    z = [0.3, 0.1, 0.9, 0.5, 0.7]
    assert spearman(z, [v**3 for v in z]) == pytest.approx(1.0)  # ranks only
    assert kendall_tau_b(z, [-v for v in z]) == pytest.approx(-1.0)
    # Spearman with one swap of neighbours among n: 1 - 6 * 2 / (n (n^2 - 1)).
    assert spearman([1, 2, 3, 4, 5], [2, 1, 3, 4, 5]) == pytest.approx(1 - 12 / 120)
    with pytest.raises(ValueError, match="constant"):
        spearman([1, 1, 1], [1, 2, 3])


def test_planted_overlap_and_random_expectation():
    n = 20
    a = make_scores(range(n, 0, -1))  # unit 0 most important
    swapped = list(range(n, 0, -1))
    swapped[1], swapped[2] = swapped[2], swapped[1]
    b = make_scores(swapped)
    c = make_scores(range(1, n + 1))  # reversed ranking
    result = compare_scores([a, b, c], ["a", "b", "c"], [0.1, 0.5])
    # Top 10% = 2 units: a {0, 1}, b {0, 2}: Jaccard 1/3; a vs reversed: disjoint.
    assert result.pair("a", "b").jaccard == {0.1: pytest.approx(1 / 3), 0.5: 1.0}
    assert result.pair("c", "a").jaccard == {0.1: 0.0, 0.5: 0.0}
    assert result.pair("a", "c").spearman == pytest.approx(-1.0)
    assert result.pair("a", "b").kendall_tau_b == pytest.approx(1 - 2 * 2 / (n * (n - 1)))
    first = result.by_fraction[0]
    assert (first.fraction, first.k) == (0.1, 2)
    assert first.mean_jaccard == pytest.approx((1 / 3 + 0 + 0) / 3)
    assert (first.min_jaccard, first.max_jaccard) == (0.0, pytest.approx(1 / 3))
    # Hypergeometric by hand for N = 20, k = 2: (36/190 * 1/3 + 1/190 * 1) = 13/190.
    assert first.random_jaccard == pytest.approx(13 / 190)
    assert result.matrix("jaccard", 0.1)[0] == [1.0, pytest.approx(1 / 3), 0.0]
    # Beside the Jaccard: shared fraction |A n B|/k = 1/2 (chance k/N = 0.1), kappa
    # (0.5 - 0.1) / 0.9; the disjoint reversed pair is below chance: -0.1 / 0.9.
    top = result.pair("a", "b").top[0.1]
    assert (top.shared_fraction, top.chance_shared_fraction) == (0.5, 0.1)
    assert top.kappa == pytest.approx(4 / 9)
    assert result.pair("a", "c").top[0.1].kappa == pytest.approx(-1 / 9)
    assert first.mean_shared_fraction == pytest.approx(0.5 / 3)
    assert (first.min_kappa, first.max_kappa) == (pytest.approx(-1 / 9), pytest.approx(4 / 9))
    # The bottom sets, at 25% always and at every fraction asked for: a and b share their
    # bottom 5 (the swap is at the top); the reversed run's bottom is a's top.
    assert [s.fraction for s in result.bottom] == [0.1, 0.25, 0.5]
    assert result.pair("a", "b").bottom[0.25].jaccard == 1.0
    assert result.pair("a", "b").bottom[0.25].kappa == 1.0
    assert result.pair("a", "c").bottom[0.25].shared_fraction == 0.0
    bottom = result.bottom[1]
    assert (bottom.side, bottom.k, bottom.pairs) == ("bottom", 5, 3)
    assert bottom.mean_jaccard == pytest.approx(1 / 3)
    assert bottom.chance_shared_fraction == 0.25
    assert len(result.curve["mean"]) == len(CURVE_FRACTIONS)
    assert result.curve["pairs"]["a vs b"][-1] == 1.0  # everything at 100%


def test_within_type_agreement_sees_through_the_ordering_of_types():
    # Both runs order the units of each module type by block (block 0 first), but a puts
    # the types in the order of TYPES and b in the reverse: the global top 25% (k = 4) is
    # all q_proj in a and all down_proj in b.
    n = 16

    def values(type_weight):
        return [10 * type_weight(i % 4) - i // 4 for i in range(n)]

    a = make_scores(values(lambda t: 4 - t))
    b = make_scores(values(lambda t: t + 1))
    pair = compare_scores([a, b], ["a", "b"], [0.25]).pair("a", "b")
    assert pair.jaccard[0.25] == 0.0 and pair.structural_null[0.25] == 0.0
    assert pair.jaccard_minus_structural_null[0.25] == 0.0
    assert pair.within_type_jaccard[0.25] == 1.0  # each type's top unit is block 0 in both
    # Reversing the order within one type (mlp.up_proj) costs that type's quarter.
    c = make_scores(
        [v if i % 4 != 2 else 10 * 2 + i // 4 for i, v in enumerate(values(lambda t: t + 1))]
    )
    assert compare_scores([a, c], ["a", "c"], [0.25]).pairs[0].within_type_jaccard[0.25] == 0.75


def test_random_rankings_overlap_as_the_random_expectation_says():
    rng = random.Random(0)
    runs = []
    for _ in range(12):
        values = list(range(200))
        rng.shuffle(values)
        runs.append(make_scores(values))
    result = compare_scores(runs, [f"r{i}" for i in range(12)], [0.25])
    summary = result.by_fraction[0]
    assert summary.random_jaccard == pytest.approx(expected_random_jaccard(200, 50))
    assert abs(summary.mean_jaccard - summary.random_jaccard) < 0.03  # 66 pairs
    assert abs(summary.mean_shared_fraction - 0.25) < 0.03 and abs(summary.mean_kappa) < 0.04
    assert abs(summary.mean_within_type_jaccard - summary.chance_within_type_jaccard) < 0.03
    assert abs(result.bottom[0].mean_kappa) < 0.04
    assert abs(np.mean([p.spearman for p in result.pairs])) < 0.05


@pytest.mark.parametrize(
    ("others", "message"),
    [
        ([], "at least 2 runs"),
        ([make_scores(range(5), unit_kind="block")], "different unit kinds"),
        ([make_scores(range(8), model_id="other")], "different models"),
        ([make_scores(range(12))], "different model layouts"),
        ([make_scores(range(8), model_type="mistral")], "different model layouts"),
        ([make_scores([1.0] * 8)], "all 8 importances are equal"),
    ],
)
def test_refusals(others, message):
    base = make_scores(range(8))
    with pytest.raises(IlaError, match=message):
        compare_scores([base, *others], [f"r{i}" for i in range(1 + len(others))])


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ([0.0], r"each must be in \(0, 1\], got 0.0"),
        ([1.5], "got 1.5"),
        ([0.2, 0.2], "0.2 is given twice"),
        ([], "give at least one"),
    ],
)
def test_fractions_out_of_range_are_refused(fractions, message):
    runs = [make_scores(range(8)), make_scores(range(8, 0, -1))]
    with pytest.raises(IlaError, match="fractions: .*" + message):
        compare_scores(runs, ["a", "b"], fractions)


def test_labels_are_directory_names_made_unique(tmp_path):
    paths = [
        tmp_path / "x" / "seed0",
        tmp_path / "y" / "seed0",
        tmp_path / "y" / "other",
        tmp_path / "z" / "bench.json",
        tmp_path / "w" / "layer_scores.json",
    ]
    assert run_labels(paths) == ["x/seed0", "y/seed0", "other", "bench", "w"]


def test_cli_writes_every_output(tmp_path, capsys):
    rng = random.Random(1)
    values = [list(range(40, 0, -1))]
    for _ in range(2):
        noisy = [v + rng.uniform(-6, 6) for v in values[0]]
        values.append(noisy)
    runs = write_score_runs(tmp_path, values)
    out = tmp_path / "cmp"
    argv = ["compare", *map(str, runs), "--output-dir", str(out), "--fractions", "0.25", "0.5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 runs of tiny, 40 module units, 3 pairs" in printed and "top 25% (k = 10)" in printed
    assert "mean shared fraction |A n B|/k" in printed and "bottom 25% (k = 10)" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.json",
        "comparison.md",
        "overlap_curves.png",
        "pairwise.png",
        "units.png",
    ]
    data = json.loads((out / "comparison.json").read_text())
    expected = compare_scores([LayerScores.load(r) for r in runs], ["data0", "data1", "data2"])
    pair = expected.pair("data0", "data1")
    assert data["schema_version"] == 1 and data["fractions"] == [0.25, 0.5]
    assert [r["label"] for r in data["runs"]] == ["data0", "data1", "data2"]
    assert data["pairs"][0]["jaccard"]["0.25"] == pytest.approx(pair.jaccard[0.25])
    assert data["pairs"][0]["spearman"] == pytest.approx(pair.spearman)
    assert data["by_fraction"][0]["random_jaccard"] == pytest.approx(
        expected_random_jaccard(40, 10)
    )
    # Every pair also carries the shared fraction and kappa of its top and bottom sets,
    # the excess over the structural null and the within-type Jaccard.
    saved = data["pairs"][0]
    assert saved["top"]["0.25"] == pair.top[0.25].to_dict()
    assert saved["top"]["0.25"]["shared_fraction"] == pytest.approx(pair.top[0.25].shared_fraction)
    assert set(saved["bottom"]) == {"0.25", "0.5"}
    assert saved["bottom"]["0.25"]["kappa"] == pytest.approx(pair.bottom[0.25].kappa)
    assert saved["jaccard_minus_structural_null"]["0.5"] == pytest.approx(
        pair.jaccard[0.5] - pair.structural_null[0.5]
    )
    assert saved["within_type_jaccard"]["0.25"] == pytest.approx(pair.within_type_jaccard[0.25])
    summary = data["by_fraction"][0]
    for key in ("shared_fraction", "kappa", "within_type_jaccard", "jaccard_minus_structural_null"):
        assert summary[f"min_{key}"] <= summary[f"mean_{key}"] <= summary[f"max_{key}"]
    assert summary["chance_shared_fraction"] == 0.25
    assert data["bottom_fractions"] == [0.25, 0.5]
    assert data["bottom_by_fraction"][0]["side"] == "bottom"
    assert data["bottom_by_fraction"][0]["chance_jaccard"] == summary["random_jaccard"]
    assert set(data["measures"]) >= {"jaccard", "shared_fraction", "kappa"}
    markdown = (out / "comparison.md").read_text()
    assert "| data0 | data1 |" in markdown and "| random sets |" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| set | k |"))
    columns = [cell.strip() for cell in header.strip("|").split(" | ")]
    assert columns[2] == "Jaccard" and columns[-1] == "kappa"
    assert "shared fraction \\|A∩B\\|/k" in columns  # pipes escaped for the table
    assert "| top 25% | 10 |" in markdown and "| bottom 25% | 10 |" in markdown
    assert "| data0 | data1 | bottom 25% | 10 |" in markdown
    assert "A Jaccard is not the share" in markdown
    from matplotlib.image import imread

    assert "top 25% outlined" in markdown and "](units.png)" in markdown
    for name in ("pairwise.png", "overlap_curves.png", "units.png"):
        image = imread(out / name)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # drawn, not a blank canvas


def test_cli_refusals_write_nothing(tmp_path, capsys):
    runs = write_score_runs(tmp_path, [range(8), range(8, 0, -1)])
    block = tmp_path / "runs" / "blocks"
    block.mkdir()
    make_scores(range(2), unit_kind="block").save(block / "layer_scores.json")
    broken = tmp_path / "runs" / "broken"
    broken.mkdir()
    (broken / "layer_scores.json").write_text("{not json")
    out = tmp_path / "cmp"
    cases = [
        ([runs[0]], "at least 2 runs"),
        ([runs[0], block], "different unit kinds"),
        ([runs[0], tmp_path / "runs"], "holds no layer_scores.json"),
        ([runs[0], tmp_path / "missing"], "no such run directory"),
        ([runs[0], broken], "not valid JSON"),
        ([runs[0], runs[0] / "layer_scores.json"], "given twice"),
        ([*runs, "--fractions", "1.5"], "--fractions: each must be in (0, 1]"),
    ]
    for args, message in cases:
        assert main(["compare", *map(str, args), "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ila: error:") and message in err[0], err
        assert not out.exists()
    # An output directory holding files, or one that would replace an input, is refused.
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["compare", *map(str, runs), "--output-dir", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main(["compare", *map(str, runs), "--output-dir", str(runs[0]), "--overwrite"]) == 2
    assert "would replace the input" in capsys.readouterr().err
    assert (runs[0] / "layer_scores.json").is_file() and (out / "keep.txt").is_file()
    # --overwrite replaces only ila's own outputs, never a file it did not write.
    assert main(["compare", *map(str, runs), "--output-dir", str(out), "--overwrite"]) == 2
    assert "not an ila run directory" in capsys.readouterr().err
    (out / "keep.txt").unlink()
    (out / "comparison.md").write_text("an older comparison")
    assert main(["compare", *map(str, runs), "--output-dir", str(out), "--overwrite"]) == 0
    assert (out / "comparison.json").is_file()
    assert (out / "comparison.md").read_text() != "an older comparison"
    # A comparison ila wrote, every figure included, is replaced again.
    assert (out / "units.png").is_file()
    assert main(["compare", *map(str, runs), "--output-dir", str(out), "--overwrite"]) == 0


def test_load_runs_reads_directories_and_files(tmp_path):
    runs = write_score_runs(tmp_path, [range(8), range(8, 0, -1)])
    loaded = load_runs([runs[0], runs[1] / "layer_scores.json"])
    assert [r.label for r in loaded] == ["data0", "data1"]
    assert loaded[1].scores.ranking()[0] == "layers.0.self_attn.q_proj"
    assert math.isclose(loaded[0].scores.units[0].importance, 0.0)


def test_structural_null_keeps_each_top_sets_composition():
    from ila.analysis.compare import structural_null_jaccard

    n = 200
    names = [f"u{i}" for i in range(n)]
    types = [TYPES[i % 4] for i in range(n)]
    # Both top sets hold only up_proj units, all 50 of them: the null is exactly 1.
    ups = {names[i] for i in range(n) if types[i] == "mlp.up_proj"}
    assert structural_null_jaccard(names, types, ups, ups) == 1.0
    # Sets spread evenly over the types: the null is the random-set expectation.
    rng = random.Random(0)
    even_a = {names[i] for t in range(4) for i in rng.sample(range(t, n, 4), 12)}
    even_b = {names[i] for t in range(4) for i in rng.sample(range(t, n, 4), 12)}
    expected = expected_random_jaccard(n, 48)
    assert structural_null_jaccard(names, types, even_a, even_b) == pytest.approx(
        expected, abs=0.01
    )
    # Sets concentrated on two types: between chance and 1, and deterministic.
    mlp = [i for i in range(n) if types[i].startswith("mlp")]
    a = {names[i] for i in rng.sample(mlp, 50)}
    b = {names[i] for i in rng.sample(mlp, 50)}
    null = structural_null_jaccard(names, types, a, b)
    assert expected_random_jaccard(n, 50) + 0.1 < null < 0.5
    assert null == structural_null_jaccard(names, types, a, b)


def test_compare_reports_the_structural_null_and_the_norm_correlation():
    rng = random.Random(3)
    runs = [make_scores([rng.random() for _ in range(40)]) for _ in range(2)]
    norms = [u.importance * 2 + 1 for u in runs[0].units]
    runs[0].meta["stage1_update_norms"] = norms
    comparison = compare_scores(runs, ["a", "b"])
    for summary in comparison.by_fraction:
        assert 0 < summary.structural_null_jaccard < 1
        assert summary.structural_null_jaccard == pytest.approx(
            comparison.pairs[0].structural_null[summary.fraction]
        )
    assert comparison.runs[0]["spearman_vs_update_norm"] == pytest.approx(1.0)
    assert comparison.runs[1]["spearman_vs_update_norm"] is None
    saved = comparison.to_dict()
    assert "structural_null_jaccard" in saved["by_fraction"][0]
