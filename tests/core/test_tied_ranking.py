"""A ranking whose importances do not separate is a tie (ila.core.ties): reported as one, and
not selected from unless asked for (probe cases P11 and M8).

The planted tests build LayerScores by hand; the end-to-end tests score the tiny Llama with
a stage-1 learning rate of 1e-30 (nothing is learned: every importance is the same float)
and, as the control, with the usual 1e-3 at the shortest settings the tests use.
"""

from __future__ import annotations

import json

import pytest

import ila
from conftest import fails, tree
from ila.cli import main
from ila.core.layers import find_layers
from ila.core.scores import LayerScores, UnitScore
from ila.core.selection import Selection
from ila.core.ties import TIE_TOLERANCE, loss_moved
from ila.errors import IlaError

QUICK = ["--limit", "40", "--max-length", "64", "--stage1-max-steps", "4"]
QUICK += ["--stage1-min-steps", "0", "--stage2-steps", "2", "--threads", "1", "--device", "cpu"]


def _scores(layer_map, importance, *, method="ila", raw=None, meta=None) -> LayerScores:
    units = [
        UnitScore(
            u.name,
            u.block,
            u.module_type,
            importance(i),
            importance(i) if raw is None else raw(i),
        )
        for i, u in enumerate(layer_map.units)
    ]
    return LayerScores(method, "tiny", "module", units, layer_map.to_dict(), meta or {})


def test_equal_importances_are_a_tie_and_separated_ones_are_not(tiny_llama):
    layer_map = find_layers(tiny_llama)
    assert _scores(layer_map, lambda i: 0.9308).separation().tie
    # Within float32's rounding of the largest value: still a tie.
    below = _scores(layer_map, lambda i: 0.9 * (1 + 0.5 * TIE_TOLERANCE * (i % 2)))
    assert below.separation().tie
    # Four float32 steps apart: a ranking (the shortest test runs spread about 2e-7).
    above = _scores(layer_map, lambda i: 0.9 * (1 + 4 * TIE_TOLERANCE * (i % 2)))
    assert not above.separation().tie
    # ILA: sigmoid(s) saturated to one float, s still ordered -> not a tie.
    saturated = _scores(layer_map, lambda i: 1.0, raw=lambda i: 20.0 + i)
    assert not saturated.separation().tie
    assert _scores(layer_map, lambda i: 1.0, method="lora-norm", raw=lambda i: i).separation().tie
    # Stage 1 learned nothing: a tie whatever the gates did.
    flat = _scores(layer_map, lambda i: 0.1 * i, meta={"stage1_loss_moved": False})
    assert "stage-1 loss did not move" in flat.separation().reason


def test_a_stage1_loss_that_never_moves():
    assert not loss_moved([0.6931471805599453] * 6)
    assert loss_moved([0.6931, 0.6925, 0.69])
    assert loss_moved([2.5])  # one value: nothing to judge


def test_layer_scores_json_records_the_tie_and_the_spread(tiny_llama, tmp_path):
    layer_map = find_layers(tiny_llama)
    _scores(layer_map, lambda i: 0.5).save(tmp_path / "tied.json")
    _scores(layer_map, lambda i: 0.1 + 0.01 * i).save(tmp_path / "ranked.json")
    tied = json.loads((tmp_path / "tied.json").read_text())
    ranked = json.loads((tmp_path / "ranked.json").read_text())
    assert tied["tie"] is True and tied["separation"]["spread"] == 0.0
    assert tied["separation"]["tolerance"] == TIE_TOLERANCE and tied["schema_version"] == 1
    assert ranked["tie"] is False and ranked["separation"]["reason"] is None
    assert LayerScores.load(tmp_path / "tied.json").separation().tie  # still read


@pytest.fixture()
def tied_run(tmp_path, tiny_llama):
    """A run directory whose layer_scores.json is an exact tie (the M8 case's values)."""
    layer_map = find_layers(tiny_llama)
    _scores(layer_map, lambda i: 0.9308).save(tmp_path / "run" / "layer_scores.json")
    return tmp_path / "run"


def test_select_refuses_a_tie_unless_allowed(tied_run, capsys):
    message = fails(["select", str(tied_run), "--tune-top-fraction", "0.3"], capsys)
    assert "is a tie" in message and "--allow-tied-ranking" in message
    assert not (tied_run / "selection.json").exists()
    with pytest.raises(IlaError, match="allow_tied_ranking"):
        ila.select(tied_run, freeze_bottom_fraction=0.25)
    # Rules that do not read the ranking are not refused.
    assert main(["-q", "select", str(tied_run), "--blocks", "1"]) == 0
    argv = ["-q", "select", str(tied_run), "--tune-top-fraction", "0.3", "--overwrite"]
    capsys.readouterr()
    assert main([*argv, "--allow-tied-ranking"]) == 0
    assert "the ranking is a tie" in capsys.readouterr().out
    selection = Selection.load(tied_run)
    assert selection.source["tied_ranking"] is True
    assert selection.selected[0] == "layers.0.self_attn.q_proj"  # the model's order, as asked


def test_finetune_refuses_a_tie_before_the_model_loads(tied_run, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    argv = ["finetune", "--model", str(tiny_model_dir), "--scores", str(tied_run)]
    argv += ["--tune-top-fraction", "0.3", "--output-dir", str(out)]
    message = fails(argv, capsys, "is a tie", "--allow-tied-ranking")
    assert str(tied_run / "layer_scores.json") in message
    assert not out.exists()


def test_a_stage1_that_learns_nothing_is_reported_as_a_tie(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "m8"
    argv = ["score", "--model", str(tiny_model_dir), *QUICK, "--output-dir", str(run)]
    assert main(["-q", *argv, "--stage1-learning-rate", "1e-30"]) == 0
    out = capsys.readouterr().out
    assert "top units: none, the ranking is a tie" in out
    assert "Jaccard" not in out and "layers.0.self_attn.q_proj" not in out
    data = json.loads((run / "layer_scores.json").read_text())
    assert data["tie"] is True and data["separation"]["spread"] == 0.0
    assert "The ranking is a tie" in (run / "report" / "ranking.md").read_text()
    before = tree(run)
    fails(["select", str(run), "--tune-top-fraction", "0.3"], capsys, "is a tie")
    assert tree(run) == before


def test_run_stops_after_scoring_a_tie(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["run", "--model", str(tiny_model_dir), *QUICK, "--output-dir", str(run)]
    argv += ["--stage1-learning-rate", "1e-30", "--no-evaluate", "--max-steps", "1"]
    fails(argv, capsys, "is a tie", "--resume --allow-tied-ranking")
    state = json.loads((run / "run_state.json").read_text())
    assert "score" in state["completed_stages"] and "select" not in state["completed_stages"]
    assert not (run / "finetune").exists()
    assert main(["-q", *argv, "--resume", "--allow-tied-ranking"]) == 0  # as the error says
    assert json.loads((run / "selection.json").read_text())["source"]["tied_ranking"] is True


def test_the_shortest_real_runs_are_not_ties(tiny_model_dir, tmp_path, capsys):
    """The control: a stage 1 that learns (lr 1e-3) at the tests' shortest settings."""
    run = tmp_path / "real"
    argv = ["-q", "score", "--model", str(tiny_model_dir), *QUICK, "--output-dir", str(run)]
    assert main(argv) == 0
    assert "top units: layers." in capsys.readouterr().out
    scores = LayerScores.load(run)
    assert not scores.separation().tie and scores.meta["stage1_loss_moved"] is True


def test_dpo_whose_loss_never_moves_is_a_tie(tiny_model_dir, tmp_path, capsys):
    """P11: DPO that learns nothing stays at log 2; the ranking is a tie for that reason."""
    run = tmp_path / "dpo"
    argv = ["-q", "score", "--model", str(tiny_model_dir), *QUICK, "--output-dir", str(run)]
    argv += ["--objective", "dpo", "--data", "ila-preference", "--stage1-learning-rate", "1e-30"]
    assert main(argv) == 0
    assert "the ranking is a tie" in capsys.readouterr().out
    scores = LayerScores.load(run)
    assert scores.meta["stage1_loss_moved"] is False
    assert "stage-1 loss did not move" in scores.separation().reason
