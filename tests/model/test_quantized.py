"""A 4-bit (NF4) base for stages 1 and 2 and the fine-tune, where CUDA and bitsandbytes exist.

ila loads the base through bitsandbytes with ``--quantization nf4`` (docs/distributed.md,
"A 70B model"); LoRA and the gates stay in float32 on top. The CPU-side refusals are tested
in tests/analysis/test_plan.py and tests/jobs/test_finetune.py; these tests run only on a
CUDA machine with bitsandbytes installed and skip with the reason elsewhere.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from ila.cli import main

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
    reason="needs a CUDA GPU and bitsandbytes (a 4-bit base)",
)

COMMON = ["--data", "ila-instruct", "--limit", "64", "--max-length", "64", "--batch-size", "4"]


def test_score_and_qlora_finetune_on_a_4bit_base(tiny_model_dir, tmp_path):
    out = tmp_path / "nf4"
    argv = ["score", "--model", str(tiny_model_dir), *COMMON, "--quantization", "nf4",
            "--stage1-max-steps", "20", "--stage2-steps", "10",
            "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    scores = json.loads((out / "layer_scores.json").read_text())
    assert scores["meta"]["base"]["quantization"] == "nf4"
    importance = [u["importance"] for u in scores["units"]]
    assert all(0.0 <= value <= 1.0 for value in importance)
    assert max(importance) > min(importance)  # the gates learned an order
    ft = tmp_path / "ft"
    argv = ["finetune", "--model", str(tiny_model_dir), *COMMON, "--scores", str(out),
            "--tune-top-fraction", "0.3", "--method", "qlora", "--max-steps", "10",
            "--output-dir", str(ft)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((ft / "finetune_summary.json").read_text())
    assert summary["eval_loss"] is not None and summary["eval_loss"] < 20.0
    assert (ft / "adapter" / "adapter_model.safetensors").is_file()
