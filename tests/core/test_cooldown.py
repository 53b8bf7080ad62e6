"""Stage 1's cool-down after the stop (docs/method.md, Stage 1): the schedule as a pure
function, and a real stage 1 on the tiny model that stops C steps after T."""

import itertools
import json

import pytest
from tests.conftest import score_tiny_ila

from ila.config import ScoreConfig, Stage1Config, Stage2Config, TrainConfig
from ila.core.cooldown import cooldown_length, learning_rate_factor
from ila.errors import IlaError


def test_cooldown_length_is_the_ceiling_of_the_fraction_of_the_stop():
    assert cooldown_length(100, 0.5) == 50
    assert cooldown_length(101, 0.5) == 51
    assert cooldown_length(7, 0.0) == 0
    assert cooldown_length(20, 1.0) == 20
    with pytest.raises(ValueError):
        cooldown_length(10, 1.5)


def test_factor_warms_up_holds_then_falls_linearly_to_zero_after_the_stop():
    factors = [
        learning_rate_factor(i, warmup_steps=4, stop_step=10, cooldown_steps=5) for i in range(18)
    ]
    # Warm-up as transformers' constant_with_warmup (0, 1/4, 2/4, 3/4), then constant.
    assert factors[:4] == [0.0, 0.25, 0.5, 0.75]
    assert factors[4:11] == [1.0] * 7
    # Steps 10..14 (the 5 after the stop): 1, 0.8, 0.6, 0.4, 0.2; zero from then on.
    assert factors[10:15] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert factors[15:] == [0.0, 0.0, 0.0]


def test_factor_is_constant_while_the_stop_is_unknown_or_without_cooldown():
    for stop, steps in ((None, 5), (10, 0)):
        assert {
            learning_rate_factor(i, warmup_steps=0, stop_step=stop, cooldown_steps=steps)
            for i in range(30)
        } == {1.0}


def test_setting_is_validated_with_its_flag():
    with pytest.raises(IlaError, match="stage1_cooldown_fraction"):
        Stage1Config(cooldown_fraction=1.5)
    with pytest.raises(IlaError, match="stage1_cooldown_fraction"):
        Stage1Config(cooldown_fraction=-0.1)


def _score(model, tokenizer, out, cooldown: float, max_steps: int = 40):
    config = ScoreConfig(
        train=TrainConfig(batch_size=4, precision="fp32"),
        stage1=Stage1Config(
            max_steps=max_steps,
            min_steps=4,
            window=4,
            patience=1,
            warmup_steps=2,
            criterion="drop",
            epsilon=0.9,
            cooldown_fraction=cooldown,
        ),
        stage2=Stage2Config(steps=2, grad_accum=1),
    )
    scores, rows = score_tiny_ila(model, tokenizer, out, config, limit=80)
    return scores, [r for r in rows if r["stage"] == "stage1"]


def test_stage1_trains_the_cooldown_after_t_and_learns_the_mask_there(
    tiny_llama, tiny_tokenizer, tmp_path
):
    scores, rows = _score(tiny_llama, tiny_tokenizer, tmp_path, cooldown=0.5)
    summary = json.loads((tmp_path / "stage1" / "summary.json").read_text())
    t = summary["T"]
    assert summary["stable"] and t < 40
    assert summary["cooldown_steps"] == -(-t // 2)
    assert summary["steps"] == len(rows) == t + summary["cooldown_steps"]
    rates = [r["learning_rate"] for r in rows]
    # Constant after the warm-up until the stop, then strictly falling to the end.
    assert len(set(rates[2 : t - 1])) == 1
    after = rates[t:]
    assert all(b < a for a, b in itertools.pairwise(after))
    assert scores.meta["stage1"]["cooldown_steps"] == summary["cooldown_steps"]


def test_cooldown_also_follows_a_stop_at_the_cap(tiny_llama, tiny_tokenizer, tmp_path):
    _, rows = _score(tiny_llama, tiny_tokenizer, tmp_path, cooldown=0.5, max_steps=4)
    summary = json.loads((tmp_path / "stage1" / "summary.json").read_text())
    assert not summary["stable"] and summary["T"] == 4
    assert summary["steps"] == len(rows) == 6 and summary["cooldown_steps"] == 2


def test_without_cooldown_the_run_is_unchanged(tiny_llama, tiny_tokenizer, tmp_path):
    _, rows = _score(tiny_llama, tiny_tokenizer, tmp_path, cooldown=0.0)
    summary = json.loads((tmp_path / "stage1" / "summary.json").read_text())
    assert summary["steps"] == summary["T"] == len(rows) and summary["cooldown_steps"] == 0
