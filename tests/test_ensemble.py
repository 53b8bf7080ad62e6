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


def test_independent_random_runs_agree_at_chance_and_consensus_averages():
    rng = random.Random(0)
    runs = [scores_from([rng.random() for _ in range(200)]) for _ in range(6)]
    row = next(r for r in ensemble_stability(runs)["by_fraction"] if r["fraction"] == 0.25)
    assert abs(row["single_run_jaccard_mean"] - row["random_jaccard"]) < 0.05
    assert abs(row["split_half_jaccard_mean"] - row["random_jaccard"]) < 0.08
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
    assert stability_lines(both)[0].startswith("2 runs (seeds 0, 1)")
    assert len(stability_lines(both)) == 2  # one run per half: no growth to show
    four = consensus_scores(runs * 2, seeds=[0, 1, 2, 3], members=["a", "b", "c", "d"])
    assert stability_lines(four)[2] == (
        "consensus of K runs against a consensus of K other runs, top 25%: 1 run 1.00, 2 runs 1.00"
    )


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
