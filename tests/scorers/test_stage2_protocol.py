"""Stage 2 as docs/method.md specifies it: own data order, eval mode, accumulation, task
loss without the budget, tail-averaged s, ranking on raw s."""

import dataclasses
import hashlib
import json

import pytest
import torch

from ila.config import ScoreConfig, Stage1Config, Stage2Config, TrainConfig
from ila.core.layers import find_layers
from ila.core.scores import LayerScores, UnitScore
from ila.data import PaddingCollator, load_examples
from ila.data.tokenization import tokenize_examples
from ila.scorers.base import ScoringContext
from ila.scorers.ila import score_ila, tail_mean


class RecordingCollator(PaddingCollator):
    """Pads as usual and records a hash of every batch it builds, in order."""

    def __init__(self, pad_token_id):
        super().__init__(pad_token_id)
        self.batches = []

    def __call__(self, features):
        batch = super().__call__(features)
        self.batches.append(hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest())
        return batch


@pytest.fixture()
def scored(tiny_llama, tiny_tokenizer, tmp_path):
    examples = load_examples("ila-instruct", limit=80)
    features = tokenize_examples(examples, tiny_tokenizer, max_length=64).features
    collator = RecordingCollator(tiny_tokenizer.pad_token_id)
    config = ScoreConfig(
        train=TrainConfig(batch_size=4),
        stage1=Stage1Config(
            max_steps=6, min_steps=2, window=2, patience=1, warmup_steps=1, criterion="drop"
        ),
        stage2=Stage2Config(steps=10, grad_accum=2, tail_fraction=0.3),
    )
    # Record whether LoRA dropout was in training mode at each stage-2 forward pass.
    modes = []
    ctx = ScoringContext(
        model=tiny_llama,
        tokenizer=tiny_tokenizer,
        layer_map=find_layers(tiny_llama),
        model_id="tiny",
        train_features=features,
        collator=collator,
        config=config,
        output_dir=tmp_path,
        data_fingerprint="x",
    )
    original = torch.nn.Dropout.forward

    def spy(self, x):
        modes.append(self.training)
        return original(self, x)

    torch.nn.Dropout.forward = spy
    try:
        scores = score_ila(ctx)
    finally:
        torch.nn.Dropout.forward = original
    return scores, collator, modes, tmp_path


def test_stage2_draws_its_own_batches(scored):
    _, collator, _, _ = scored
    # Stage 2 (10 steps x 2 accumulated micro-batches) collated the last 20 batches; with
    # the run's own seed its first ones would repeat stage 1's first ones.
    stage2 = collator.batches[-20:]
    assert len(collator.batches) >= 6 + 20
    assert not set(stage2[:4]) & set(collator.batches[:4])


def test_stage2_runs_without_dropout(scored):
    _, _, modes, out = scored
    stage1 = json.loads((out / "stage1" / "summary.json").read_text())
    # 7 blocks' worth of LoRA dropout modules per forward; stage 1 trains them (p 0.05).
    per_step = len(modes) // (stage1["steps"] + 20)
    assert all(modes[: stage1["steps"] * per_step])
    assert not any(modes[stage1["steps"] * per_step :])


def test_task_loss_excludes_the_budget_and_importance_is_the_tail_mean(scored):
    scores, _, _, out = scored
    summary = json.loads((out / "stage2" / "summary.json").read_text())
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["stage"] == "stage2"]
    for row, task in zip(rows, summary["loss_curve"], strict=True):
        assert task == pytest.approx(row["loss"] - row["budget"])
    assert summary["objective_curve"] == [r["loss"] for r in rows]
    assert summary["examples_per_step"] == 8 and summary["tail_steps"] == 3
    trajectory = json.loads((out / "stage2" / "gate_trajectory.json").read_text())["scores"]
    assert len(trajectory) == 11
    expected = [sum(col) / 3 for col in zip(*trajectory[-3:], strict=True)]
    assert [u.raw for u in scores.units] == pytest.approx(expected)
    assert scores.meta["stage2"]["grad_accum"] == 2
    assert scores.meta["self_stability"]["stage2_tail_top25_jaccard"] is not None
    assert len(scores.meta["stage1_update_norms"]) == len(scores.units)


def test_tail_mean_edges():
    trajectory = [[0.0, 0.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert tail_mean(trajectory, 0.0) == [5.0, 6.0]
    assert tail_mean(trajectory, 0.5) == [4.0, 5.0]  # ceil(0.5 * 3) = 2 rows
    assert tail_mean(trajectory, 1.0) == [3.0, 4.0]


def test_ranking_follows_raw_s_where_sigmoid_saturates():
    units = [UnitScore("a", 0, "q", 1.0, 17.0), UnitScore("b", 0, "k", 1.0, 20.0)]
    scores = LayerScores("ila", "m", "module", units, {"units": ["a", "b"]})
    assert scores.ranking() == ["b", "a"]
    other = dataclasses.replace(scores, method="random")
    assert other.ranking() == ["a", "b"]
