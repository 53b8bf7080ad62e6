"""--seeds N: consensus ranking, top-K frequencies, single-run and split-half agreement."""

import json
import random

import pytest

from ila.cli import main
from ila.core.ensemble import (
    consensus_scores,
    ensemble_stability,
    split_agreement,
    stability_lines,
)
from ila.core.scores import LayerScores, UnitScore
from ila.errors import IlaError


def scores_from(values, *, method="ila", names=None):
    names = names or [f"layers.{i // 4}.mlp.m{i % 4}" for i in range(len(values))]
    units = [
        UnitScore(n, i // 4, f"mlp.m{i % 4}", v, v)
        for i, (n, v) in enumerate(zip(names, values, strict=True))
    ]
    layout = {"model_type": "llama", "num_blocks": len(values) // 4, "units": names}
    return LayerScores(method, "m", "module", units, layout, {"T": 40, "seed": 0})


def test_identical_runs_agree_perfectly():
    runs = [scores_from([float(i) for i in range(40)]) for _ in range(4)]
    stability = ensemble_stability(runs)
    row = next(r for r in stability["by_fraction"] if r["fraction"] == 0.25)
    assert row["single_run_jaccard_mean"] == row["split_half_jaccard_mean"] == 1.0
    assert row["split_half_runs"] == 2 and row["in_every_run"] == row["k"] == 10
    assert sorted(row["top_frequency"].values())[-10:] == [1.0] * 10
    # Every scale, at the top 10/25/50/75% and the bottom 25%.
    rows = stability["by_fraction"] + stability["bottom_by_fraction"]
    assert [(r["side"], r["fraction"]) for r in rows] == [
        ("top", 0.1), ("top", 0.25), ("top", 0.5), ("top", 0.75), ("bottom", 0.25)
    ]  # fmt: skip
    for r in rows:
        for measure in ("jaccard", "shared_fraction", "kappa"):
            for key in ("mean", "min", "max"):
                assert r[f"single_run_{measure}_{key}"] == 1.0
            assert r[f"split_half_{measure}_mean"] == 1.0
    assert stability["bottom_by_fraction"][0]["in_every_run"] == 10


def test_single_run_and_split_half_measures_by_hand():
    # N = 8, top 25% = 2 units: a {u0, u1}, b {u0, u2} (units 1 and 2 swapped). One shared:
    # Jaccard 1/3, shared fraction 1/2 (chance 2/8), kappa (1/2 - 1/4) / (3/4) = 1/3.
    # The bottom 2 are the same: 1 on every scale. A reversed run c shares nothing.
    a = scores_from([8.0, 7, 6, 5, 4, 3, 2, 1])
    b = scores_from([8.0, 6, 7, 5, 4, 3, 2, 1])
    pair = ensemble_stability([a, b])
    top = next(r for r in pair["by_fraction"] if r["fraction"] == 0.25)
    assert top["single_run_jaccard_mean"] == pytest.approx(1 / 3)
    assert top["single_run_shared_fraction_mean"] == 0.5
    assert top["chance_shared_fraction"] == 0.25
    assert top["single_run_kappa_mean"] == pytest.approx(1 / 3)
    # Two runs: each half is one run, so the split-half is that pair.
    assert top["split_half_shared_fraction_mean"] == 0.5
    assert top["split_half_kappa_mean"] == pytest.approx(1 / 3)
    bottom = pair["bottom_by_fraction"][0]
    assert (bottom["k"], bottom["single_run_kappa_mean"], bottom["in_every_run"]) == (2, 1.0, 2)
    c = scores_from([1.0, 2, 3, 4, 5, 6, 7, 8])
    three = ensemble_stability([a, b, c])
    top = next(r for r in three["by_fraction"] if r["fraction"] == 0.25)
    assert top["single_run_shared_fraction_mean"] == pytest.approx(0.5 / 3)
    assert (top["single_run_shared_fraction_min"], top["single_run_shared_fraction_max"]) == (
        0.0,
        0.5,
    )
    assert top["single_run_kappa_min"] == pytest.approx(-1 / 3)  # disjoint: below chance
    bottom = three["bottom_by_fraction"][0]
    assert bottom["single_run_jaccard_mean"] == pytest.approx(1 / 3)  # a-b 1, the rest 0
    assert bottom["in_every_run"] == 0


def test_independent_random_runs_agree_at_chance_and_consensus_averages():
    rng = random.Random(0)
    runs = [scores_from([rng.random() for _ in range(200)]) for _ in range(6)]
    row = next(r for r in ensemble_stability(runs)["by_fraction"] if r["fraction"] == 0.25)
    assert abs(row["single_run_jaccard_mean"] - row["random_jaccard"]) < 0.05
    assert abs(row["split_half_jaccard_mean"] - row["random_jaccard"]) < 0.08
    assert abs(row["single_run_shared_fraction_mean"] - 0.25) < 0.05
    assert abs(row["single_run_kappa_mean"]) < 0.07 and abs(row["split_half_kappa_mean"]) < 0.1
    consensus = consensus_scores(runs, seeds=list(range(6)), members=[f"s{i}" for i in range(6)])
    first = consensus.units[0]
    assert first.importance == pytest.approx(sum(r.units[0].importance for r in runs) / 6)
    assert consensus.meta["ensemble"]["seeds"] == list(range(6))
    assert "not a single run's" in consensus.meta["ensemble"]["note"]
    assert "T" in consensus.meta and "seed" not in consensus.meta


def test_split_agreement_counts_disjoint_groups_and_grows_with_group_size():
    # A shared signal plus run-specific noise: larger groups average more noise away.
    rng = random.Random(2)
    signal = [rng.random() for _ in range(200)]
    runs = [scores_from([s + rng.gauss(0, 0.3) for s in signal]) for _ in range(6)]
    singles, pairs, triples = (split_agreement(runs, k, 0.25) for k in (1, 2, 3))
    assert (len(singles), len(pairs), len(triples)) == (15, 45, 10)
    mean = [sum(v) / len(v) for v in (singles, pairs, triples)]
    assert mean[0] < mean[1] < mean[2]
    half = next(r for r in ensemble_stability(runs)["by_fraction"] if r["fraction"] == 0.25)
    assert half["split_half_jaccard_mean"] == pytest.approx(mean[2])
    assert half["consensus_jaccard_by_runs"] == {
        str(k): pytest.approx(m) for k, m in zip((1, 2, 3), mean, strict=True)
    }
    with pytest.raises(ValueError, match="group size"):
        split_agreement(runs, 4, 0.25)


def test_split_agreement_samples_a_fixed_set_when_the_groups_are_many():
    rng = random.Random(3)
    runs = [scores_from([rng.random() for _ in range(40)]) for _ in range(14)]
    first = split_agreement(runs, 7, 0.25)  # C(14,7) / 2 = 1716 pairs of halves
    assert len(first) == 500 and split_agreement(runs, 7, 0.25) == first
    assert len(split_agreement(runs, 1, 0.25)) == 91  # every pair of single runs


def test_planted_signal_shows_in_frequencies():
    # Units 0-9 are on top in every run; the rest is noise.
    rng = random.Random(1)
    runs = [
        scores_from([10 + rng.random() if i < 10 else rng.random() for i in range(40)])
        for _ in range(3)
    ]
    row = next(r for r in ensemble_stability(runs)["by_fraction"] if r["fraction"] == 0.25)
    names = runs[0].names
    assert all(row["top_frequency"][names[i]] == 1.0 for i in range(10))
    assert row["in_every_run"] == 10


def test_ensemble_refuses_mismatched_runs():
    a = scores_from([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(IlaError, match="at least 2"):
        ensemble_stability([a])
    with pytest.raises(IlaError, match="mixes scorers"):
        ensemble_stability([a, scores_from([1.0, 2.0, 3.0, 4.0], method="random")])
    other = scores_from([1.0, 2.0, 3.0, 4.0], names=["a", "b", "c", "d"])
    with pytest.raises(IlaError, match="same units"):
        ensemble_stability([a, other])


def test_stability_lines_for_a_single_run_and_an_ensemble():
    single = scores_from([float(i) for i in range(8)])
    single.meta["self_stability"] = {
        "stage1_last_ranking_check": 0.9,
        "stage2_tail_top25_jaccard": 1.0,
    }
    lines = stability_lines(single)
    assert "0.90" in lines[0] and "--seeds N" in lines[1]
    runs = [scores_from([float(i) for i in range(8)]) for _ in range(2)]
    both = consensus_scores(runs, seeds=[0, 1], members=["a", "b"])
    lines = stability_lines(both)
    assert lines[0].startswith("2 runs (seeds 0, 1)")
    assert "Jaccard 1.00 (chance 0.18), shared fraction |A n B|/k 1.00 (chance 0.25)" in lines[0]
    assert "kappa 1.00 (chance 0)" in lines[0]
    assert lines[1].startswith("split-half (1 runs per half): Jaccard 1.00, shared fraction")
    assert lines[2].startswith("bottom 25% (k=2): single runs agree at Jaccard 1.00")
    assert lines[3].endswith("2 units are in every run's bottom 25%")
    assert len(lines) == 4  # one run per half: no growth to show
    four = consensus_scores(runs * 2, seeds=[0, 1, 2, 3], members=["a", "b", "c", "d"])
    assert stability_lines(four)[-1] == (
        "consensus of K runs against a consensus of K other runs, top 25%: 1 run 1.00, 2 runs 1.00"
    )
    # A range is shown where the pairs differ.
    other = scores_from([0.0, 1, 2, 3, 4, 6, 5, 7])  # top 2: u7, u5 instead of u7, u6
    mixed = consensus_scores([*runs, other], seeds=[0, 1, 2], members=["a", "b", "c"])
    assert "kappa 0.56 (0.33 to 1.00; chance 0)" in stability_lines(mixed)[0]


def test_stability_of_an_ensemble_recorded_before_shared_fraction_and_kappa():
    runs = [scores_from([float(i) for i in range(8)]) for _ in range(2)]
    old = consensus_scores(runs, seeds=[0, 1], members=["a", "b"])
    stability = old.meta["ensemble"]["stability"]
    del stability["bottom_by_fraction"]
    for row in stability["by_fraction"]:
        for key in [k for k in row if "shared_fraction" in k or "kappa" in k]:
            del row[key]
    lines = stability_lines(old)
    assert len(lines) == 2 and "kappa" not in " ".join(lines)
    assert lines[0].endswith("single runs agree at Jaccard 1.00 (chance 0.18)")


def test_run_report_shows_every_measure_of_the_ensemble(tmp_path):
    from ila.reporting.document import to_markdown
    from ila.reporting.run_record import RunRecord
    from ila.reporting.run_report import build_run_document

    a = scores_from([8.0, 7, 6, 5, 4, 3, 2, 1])
    b = scores_from([8.0, 6, 7, 5, 4, 3, 2, 1])
    scores = consensus_scores([a, b, a], seeds=[0, 1, 2], members=["s0", "s1", "s2"])
    record = RunRecord(
        tmp_path, "score", ["score"], scores, {}, {}, None, None, None, None, None, {}, None
    )
    text = to_markdown(build_run_document(record, {"blocks": "blocks.png"}))
    stability = text[text.index("## Stability") :]
    header = next(line for line in stability.splitlines() if line.startswith("| set | k |"))
    columns = [cell.strip() for cell in header.strip("|").split(" | ")]
    assert columns[2:] == [
        "single-run Jaccard",
        "chance Jaccard",
        "single-run shared fraction \\|A∩B\\|/k",
        "chance shared fraction k/N",
        "single-run kappa",
        "split-half Jaccard",
        "split-half shared fraction \\|A∩B\\|/k",
        "split-half kappa",
    ]
    # Top 25%: pairs a-b, a-a, b-a: shared fraction 1/2, 1, 1/2; kappa 1/3, 1, 1/3.
    assert "| top 25% | 2 | 0.556 [0.333, 1.000] | 0.179 | 0.667 [0.500, 1.000] | 0.250 |" in text
    assert "| bottom 25% | 2 | 1.000 | 0.179 | 1.000 | 0.250 | 1.000 |" in text
    for fraction in ("10%", "50%", "75%"):
        assert f"| top {fraction} |" in stability


FAST = [
    "--max-length", "96", "--limit", "60", "--batch-size", "4",
    "--stage1-max-steps", "12", "--stage1-min-steps", "2", "--stage1-window", "4",
    "--stage2-steps", "6",
]  # fmt: skip


def test_score_with_seeds_writes_members_and_consensus(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ens"
    argv = [
        "score",
        "--model",
        str(tiny_model_dir),
        "--output-dir",
        str(out),
        "--seeds",
        "3",
        "--seed",
        "5",
        *FAST,
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "stability: 3 runs (seeds 5, 6, 7)" in printed and "split-half" in printed
    consensus = LayerScores.load(out)
    members = [LayerScores.load(out / "seeds" / f"seed-{s}") for s in (5, 6, 7)]
    assert [m.meta["seed"] for m in members] == [5, 6, 7]
    for unit in consensus.units[:5]:
        mean = sum(m.units[consensus.names.index(unit.name)].importance for m in members) / 3
        assert unit.importance == pytest.approx(mean)
    ensemble = consensus.meta["ensemble"]
    assert ensemble["members"] == ["seeds/seed-5", "seeds/seed-6", "seeds/seed-7"]
    state = json.loads((out / "run_state.json").read_text())
    assert state["command"] == "score" and "score" in state["completed_stages"]
    # Same split for every member (--split-seed), other training seeds.
    data = [json.loads((out / "seeds" / f"seed-{s}" / "data.json").read_text()) for s in (5, 6)]
    assert data[0]["fingerprint"] == data[1]["fingerprint"]
    # A finished ensemble is refused by --resume; an interrupted one reuses its members.
    assert main([*argv, "--resume"]) == 2
    (out / "layer_scores.json").unlink()
    state["completed_stages"] = []
    (out / "run_state.json").write_text(json.dumps(state))
    before = (out / "seeds" / "seed-6" / "layer_scores.json").stat().st_mtime_ns
    assert main([*argv, "--resume"]) == 0
    assert (out / "seeds" / "seed-6" / "layer_scores.json").stat().st_mtime_ns == before
    assert LayerScores.load(out).ranking() == consensus.ranking()
    # The report shows the ensemble's stability and the first member's stage curves.
    report = tmp_path / "report"
    assert main(["report", str(out), "--output-dir", str(report)]) == 0
    text = (report / "report.md").read_text()
    assert "## Stability" in text and "share of runs in top 25%" in text
    assert "seeds/seed-5" in text


def test_run_selects_from_the_consensus_of_several_seeds(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "run",
        "--model",
        str(tiny_model_dir),
        "--output-dir",
        str(out),
        "--seeds",
        "2",
        *FAST,
        "--tune-top-fraction",
        "0.25",
        "--max-steps",
        "2",
        "--no-evaluate",
    ]
    assert main(argv) == 0
    assert "stability: 2 runs (seeds 0, 1)" in capsys.readouterr().out
    consensus = LayerScores.load(out)
    selection = json.loads((out / "selection.json").read_text())
    assert sorted(selection["selected"]) == sorted(consensus.top(0.25))
    assert (out / "finetune" / "finetune_summary.json").is_file()
