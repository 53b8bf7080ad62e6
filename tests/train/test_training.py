"""Trainer glue: a non-finite loss stops the run with the step and a hint."""

import pytest
import torch

from ila.config import TrainConfig
from ila.data import PaddingCollator
from ila.errors import IlaError
from ila.train.trainer import MetricsLogger, StepValues, make_training_args, run_trainer


def test_nan_loss_stops_with_the_step_and_a_hint(tiny_llama, tmp_path):
    calls = {"n": 0}

    def poison_after_three_steps(_module, _inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 3 else output

    tiny_llama.lm_head.register_forward_hook(poison_after_three_steps)
    features = [{"input_ids": [5, 6, 7, 8], "attention_mask": [1] * 4, "labels": [5, 6, 7, 8]}] * 16
    args = make_training_args(
        TrainConfig(batch_size=2),
        output_dir=tmp_path / "t",
        learning_rate=1e-3,
        max_steps=10,
        device="cpu",
    )
    values = StepValues()
    with pytest.raises(IlaError, match=r"became nan at step 4; lower the learning rate"):
        run_trainer(
            tiny_llama,
            args,
            train_features=features,
            collator=PaddingCollator(0),
            callbacks=[MetricsLogger("stage1", tmp_path / "metrics.jsonl", values)],
        )
    assert len(values.loss) == 3 and all(torch.isfinite(torch.tensor(values.loss)))
