"""Preference data and `--objective dpo` (TRL's DPOTrainer) for stages 1-3 and `ila eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ila.cli import main
from ila.config import LoraSettings
from ila.core.gates import attach_gates, budget_loss
from ila.core.layers import find_layers
from ila.core.lora import add_lora, unit_lora_layer
from ila.core.scores import LayerScores
from ila.data import load_examples
from ila.data.preference import (
    load_preference_pairs,
    preference_rows,
    record_to_pair,
    split_pairs,
)
from ila.errors import IlaError
from ila.evaluation.preference import preference_metrics
from ila.train.trainer import PreferenceTraining, make_training_args, run_trainer

REPO = Path(__file__).resolve().parents[2]
TINY = ["--max-length", "64", "--limit", "40", "--batch-size", "4", "--device", "cpu"]
QUICK = ["--stage1-max-steps", "6", "--stage1-min-steps", "0", "--stage2-steps", "3"]
DPO = ["--data", "ila-preference", "--objective", "dpo"]


def test_shipped_preference_file_equals_a_fresh_generation(tmp_path):
    out = tmp_path / "p.jsonl"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate_data.py"), "--dataset", "preference",
         "--output", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    shipped = REPO / "src" / "ila" / "resources" / "ila_preference.jsonl"
    assert out.read_bytes() == shipped.read_bytes()
    pairs = load_preference_pairs("ila-preference")
    assert len(pairs) == 1200
    for pair in pairs:
        assert pair.chosen != pair.rejected and pair.chosen.endswith(f"Answer: {pair.answer}")
        wrong = pair.rejected.rpartition("Answer: ")[2]
        assert wrong and wrong != pair.answer


@pytest.mark.parametrize(
    ("record", "prompt", "chosen"),
    [
        ({"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"},
         ({"role": "user", "content": "Add 2 and 3."},), "5"),
        ({"prompt": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Add 2 and 3."}],
          "chosen": [{"role": "assistant", "content": "5"}],
          "rejected": [{"role": "assistant", "content": "6"}]},
         ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 2 and 3."}),
         "5"),
        ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
          "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}]},
         ({"role": "user", "content": "Hi"},), "Hello!"),
    ],
)  # fmt: skip
def test_the_preference_layouts(record, prompt, chosen):
    pair = record_to_pair(record, "f.jsonl:1")
    assert pair.prompt == prompt and pair.chosen == chosen


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({"prompt": "Q", "chosen": "A"}, "needs 'chosen' and 'rejected'"),
        ({"prompt": "Q", "chosen": "A", "rejected": "A"}, "the same text: no preference"),
        ({"prompt": "Q", "chosen": " ", "rejected": "B"}, "must both be non-empty"),
        ({"prompt": "", "chosen": "A", "rejected": "B"}, "'prompt' is empty"),
        ({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "A", "rejected": "B"},
         "must end with a user message"),
        ({"prompt": "Q", "chosen": [{"role": "user", "content": "A"}], "rejected": "B"},
         "a list of one assistant message"),
        ({"prompt": "Q", "chosen": 5, "rejected": "B"}, "a string or a list of messages"),
        ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "A", "rejected": "B"},
         "prompt[0] must be"),
        ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
          "rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
         "must share every turn but the last"),
        ({"chosen": [{"role": "assistant", "content": "b"}], "rejected": "d"},
         "must each be a whole conversation"),
    ],
)  # fmt: skip
def test_malformed_pairs_are_refused_with_their_location(record, words):
    with pytest.raises(IlaError, match=r"f\.jsonl:7") as info:
        record_to_pair(record, "f.jsonl:7")
    assert words in str(info.value)


def test_preference_data_needs_the_dpo_objective(tmp_path):
    with pytest.raises(IlaError, match="holds preference pairs; pass objective dpo"):
        load_examples("ila-preference")
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "chosen": "A", "rejected": "B"}) + "\n")
    with pytest.raises(IlaError, match=r"is a preference pair .chosen/rejected.; pass objective"):
        load_examples(str(path))


def test_rows_render_the_prompt_and_each_reply_in_the_training_template(tiny_tokenizer):
    from ila.data.tokenization import render_conversation

    pair = load_preference_pairs("ila-preference", limit=1)[0]
    row = preference_rows([pair], tiny_tokenizer)[0]
    full, _ = render_conversation(
        [*pair.prompt, {"role": "assistant", "content": pair.chosen}], tiny_tokenizer
    )
    assert (row["prompt"] + row["chosen"]).rstrip("\n") == full.rstrip("\n")
    assert row["chosen"].startswith(pair.chosen) and row["rejected"].startswith(pair.rejected)


def test_preference_metrics_read_the_log_probabilities(tiny_llama, tiny_tokenizer):
    pairs = load_preference_pairs("ila-preference", limit=8)
    metrics = preference_metrics(tiny_llama, tiny_tokenizer, pairs, max_length=256, batch_size=4)
    swapped = [type(p)(p.prompt, p.rejected, p.chosen, p.answer, p.source) for p in pairs]
    mirror = preference_metrics(tiny_llama, tiny_tokenizer, swapped, max_length=256, batch_size=4)
    assert metrics["preference_pairs"] + metrics["preference_skipped_long_prompts"] == 8
    assert mirror["preference_margin"] == pytest.approx(-metrics["preference_margin"], abs=1e-4)
    assert metrics["preference_accuracy"] + mirror["preference_accuracy"] == pytest.approx(1.0)


def test_planted_preference_signal_ranks_its_units_first(tiny_llama, tiny_tokenizer, tmp_path):
    """DPO gates (stage 2 through TRL) keep the units whose update carries the preference.

    The signal: LoRA of the MLP of blocks 1 and 3 only, trained with DPO (through the same
    trainer) to prefer the chosen replies of 16 pairs; every other unit gets LoRA too,
    with B = 0 (no update) or a random B. The gates then learn on the DPO loss of the
    masked policy against the base model.
    """
    torch.manual_seed(0)
    layer_map = find_layers(tiny_llama)
    model = add_lora(tiny_llama, layer_map.units, LoraSettings(rank=4, alpha=8.0, dropout=0.0),
                     seed=0)  # fmt: skip
    signal = {u.name for u in layer_map.units if u.block in (1, 3) and "mlp" in u.module_type}
    pairs = load_preference_pairs("ila-preference", limit=16)
    rows = preference_rows(pairs, tiny_tokenizer)
    preference = PreferenceTraining(tiny_tokenizer, beta=0.5, max_length=64)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name and any(f".{s}." in name for s in signal))
    from ila.config import TrainConfig

    train = TrainConfig(batch_size=8, seed=0)
    args = make_training_args(train, output_dir=tmp_path / "plant", learning_rate=1e-2,
                              max_steps=60, device="cpu")  # fmt: skip
    run_trainer(model, args, train_features=rows, preference=preference)
    gen = torch.Generator().manual_seed(1)
    noise = set()
    with torch.no_grad():
        for i, unit in enumerate(u for u in layer_map.units if u.name not in signal):
            if i % 2:
                b = unit_lora_layer(model, unit).lora_B["default"].weight
                b.copy_(torch.randn(b.shape, generator=gen) * 0.5)
                noise.add(unit.name)
    for param in model.parameters():
        param.requires_grad_(False)
    gated = attach_gates(model, layer_map, init_score=3.0)

    def budget():
        return budget_loss(gated.bank(), kind="hinge", weight=1.0, target_fraction=0.5)

    args = make_training_args(train, output_dir=tmp_path / "gates", learning_rate=0.1,
                              max_steps=60, scheduler="constant", device="cpu")  # fmt: skip
    run_trainer(model, args, train_features=rows, preference=preference, extra_loss=budget,
                eval_mode=True)  # fmt: skip
    gate = dict(zip((u.name for u in layer_map.units), gated.gate_values().tolist(), strict=True))
    none = set(gate) - signal - noise
    # Every useful update keeps more of its gate than any unit without an update (only the
    # budget moves those). A random update is not harmful by construction under DPO (it
    # moves both replies' log-probabilities), so it is compared on average only.
    assert min(gate[n] for n in signal) > max(gate[n] for n in none)

    def mean(names):
        return sum(gate[n] for n in names) / len(names)

    assert mean(signal) > mean(noise) + 0.2 and mean(signal) > mean(none) + 0.2


def test_score_run_and_eval_with_the_dpo_objective(tiny_model_dir, tmp_path, capsys):
    model = ["--model", str(tiny_model_dir)]
    out = tmp_path / "run"
    argv = ["-q", "run", *model, *DPO, *TINY, *QUICK, "--max-steps", "3",
            "--eval-generate-examples", "2", "--eval-max-new-tokens", "4",
            "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "prefers chosen" in printed
    scores = LayerScores.load(out)
    assert len(scores.units) == 28 and scores.meta["objective"] == "dpo"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"reward_accuracy", "reward_margin"} <= set(rows[0])
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # DPO at the reference: log 2
    data = json.loads((out / "data.json").read_text())
    assert data["format"] == "preference" and data["num_train"] == 36
    variants = json.loads((out / "eval" / "variants.json").read_text())
    assert all("preference_accuracy" in v for v in variants["variants"].values())

    # ila eval and ila finetune on their own.
    ev = ["-q", "eval", *model, *DPO, *TINY, "--eval-generate-examples", "0",
          "--output-dir", str(tmp_path / "ev")]  # fmt: skip
    assert main(ev) == 0
    metrics = json.loads((tmp_path / "ev" / "eval_results.json").read_text())["metrics"]
    assert metrics["preference_pairs"] == 4 and "loss" in metrics
    ft = ["-q", "finetune", *model, *DPO, *TINY, "--scores", str(out), "--tune-top-fraction",
          "0.25", "--max-steps", "2", "--output-dir", str(tmp_path / "ft")]  # fmt: skip
    assert main(ft) == 0
    summary = json.loads((tmp_path / "ft" / "finetune_summary.json").read_text())
    assert summary["objective"] == "dpo" and summary["preference_pairs"] == 4
    assert summary["eval_loss"] is None and summary["steps"] == 2


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--stage1-method", "full"], "DPO's reference is the model without the stage-1 update"),
        (["--scorer", "grad-norm"], "the grad-norm scorer reads supervised examples"),
    ],
)
def test_dpo_refusals(tiny_model_dir, tmp_path, capsys, extra, words):
    argv = ["-q", "score", "--model", str(tiny_model_dir), *DPO, *TINY,
            "--output-dir", str(tmp_path / "x"), *extra]  # fmt: skip
    assert main(argv) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_dpo_finetune_of_full_weights_is_refused(tiny_model_dir, tmp_path, capsys):
    argv = ["-q", "finetune", "--model", str(tiny_model_dir), *DPO, *TINY, "--all-units",
            "--method", "full", "--output-dir", str(tmp_path / "f")]  # fmt: skip
    assert main(argv) == 2
    assert "--objective dpo with --method full" in capsys.readouterr().err


def test_split_of_pairs_is_by_content():
    pairs = load_preference_pairs("ila-preference", limit=100)
    train, held = split_pairs(pairs, eval_fraction=0.1, seed=0)
    again_train, again_held = split_pairs(list(reversed(pairs)), eval_fraction=0.1, seed=0)
    assert len(held) == 10 and set(map(id, held)) == set(map(id, again_held))
    assert len(train) + len(held) == 100 and len(again_train) == 90
