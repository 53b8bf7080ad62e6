"""ila.IlaCallback: ILA stage 2 on the LoRA adapter a transformers Trainer is training,
inside that run (docs/method.md, "Stage 2: the gates", "Output").

Real transformers Trainers on a peft LoRA model of the tiny Llama, on CPU in float32: at
"end" the run directory is one `ila select`, `ila compare` and `ila report` accept and the
user's model is left as it was; at "stable" the ranking happens at the step the stage-1
rule fires and `then` freezes the units outside the kept set for the rest of the run (also
under TRL's SFTTrainer, and in a 2-process DDP run: tests/integrations/callback_ddp_worker.py); the
refusals come before the first training step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import ila
from ila.config import Stage1Config, Stage2Config
from ila.core.scores import LayerScores
from ila.data import PaddingCollator, load_examples
from ila.data.tokenization import tokenize_examples
from ila.errors import IlaError

REPO = Path(__file__).resolve().parents[2]
DDP_WORKER = Path(__file__).resolve().parent / "callback_ddp_worker.py"
TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
# Gates start at the budget (sigmoid(0) = H = 0.5), so the task loss alone moves them
# apart at first and the tiny run gives distinct importances.
STAGE2 = Stage2Config(steps=4, grad_accum=1, init_score=0.0)
# Small enough for the rule to fire on the tiny run (a check every 2 logged losses).
QUICK_RULE = Stage1Config(window=2, patience=1, min_steps=2, epsilon=0.9, rank_epsilon=0.5)


@pytest.fixture(scope="module")
def features(tiny_model_dir) -> list[dict[str, list[int]]]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = load_examples("ila-instruct", limit=40)
    return tokenize_examples(examples, tokenizer, max_length=64).features


@pytest.fixture(scope="module")
def collator(tiny_model_dir) -> PaddingCollator:
    return PaddingCollator(AutoTokenizer.from_pretrained(tiny_model_dir).pad_token_id)


def _lora_model(model_dir: Path, **lora: Any) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, **lora)
    return get_peft_model(model, config)


def _trainer(
    model: torch.nn.Module,
    features: list[dict[str, list[int]]],
    collator: PaddingCollator,
    out: Path,
    callbacks: list[TrainerCallback],
    *,
    steps: int = 6,
    **args: Any,
) -> Trainer:
    settings = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "max_steps": steps,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        **args,
    }
    return Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=features,
        data_collator=collator,
        callbacks=callbacks,
    )


def _lora_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


class _Probe(TrainerCallback):
    """What the model looks like at on_train_end, before or after IlaCallback's turn."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch
        self.seen: dict[str, Any] = {}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        rng = torch.get_rng_state()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            logits = model(**self.batch).logits
        self.seen = {
            "flags": {n: p.requires_grad for n, p in model.named_parameters()},
            "modes": {n: m.training for n, m in model.named_modules()},
            "forward": model.__dict__.get("forward"),
            "lora": _lora_weights(model),
            "logits": logits,
            "rng": rng,
        }


class _ProbeAfter(_Probe):
    """The same probe, registered after IlaCallback (a Trainer warns of two of a class)."""


class _Snapshot(TrainerCallback):
    """The LoRA weights right after IlaCallback ranked at "stable" (it logs first)."""

    def __init__(self, ranker: ila.IlaCallback) -> None:
        self.ranker = ranker
        self.weights: dict[str, torch.Tensor] | None = None

    def on_log(self, args, state, control, model=None, **kwargs):
        if self.weights is None and self.ranker.scores is not None:
            self.weights = _lora_weights(model)


@pytest.fixture(scope="module")
def end_run(tiny_model_dir, features, collator, tmp_path_factory):
    out = tmp_path_factory.mktemp("end") / "trainer"
    model = _lora_model(tiny_model_dir)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    batch = collator(features[:2])
    before, after = _Probe(batch), _ProbeAfter(batch)
    ranker = ila.IlaCallback(at="end", stage2=STAGE2, seed=3)
    callbacks = [before, ranker, after]
    _trainer(model, features, collator, out, callbacks, gradient_accumulation_steps=2).train()
    return {
        "ranker": ranker,
        "out": out / "ila",
        "model": model,
        "flags": flags,
        "probes": (before, after),
        "examples": len(features),
    }


@pytest.fixture(scope="module")
def stable_run(tiny_model_dir, features, collator, tmp_path_factory):
    out = tmp_path_factory.mktemp("stable") / "trainer"
    model = _lora_model(tiny_model_dir)
    ranker = ila.IlaCallback(
        at="stable", stage1=QUICK_RULE, stage2=STAGE2, then="freeze-bottom", fraction=0.5
    )
    snapshot = _Snapshot(ranker)
    trainer = _trainer(model, features, collator, out, [ranker, snapshot], steps=12)
    trainer.train()
    return {"ranker": ranker, "out": out / "ila", "model": model, "snapshot": snapshot}


def test_at_end_writes_a_ranking_of_the_adapted_units(end_run):
    ranker, out = end_run["ranker"], end_run["out"]
    assert ranker.output_dir == out and ranker.ranked_step == 6
    scores = LayerScores.load(out / "layer_scores.json")
    assert [u.name for u in scores.units] == [u.name for u in ranker.scores.units]
    assert scores.units and all(u.name.endswith(tuple(TARGETS)) for u in scores.units)
    importances = [u.importance for u in scores.units]
    assert max(importances) - min(importances) > 1e-3
    source = scores.meta["source"]
    assert source["kind"] == "callback" and source["step"] == 6 and source["at"] == "end"
    assert any(n.endswith("self_attn.k_proj") for n in source["not_adapted"])
    assert scores.meta["T"] is None
    assert scores.meta["seed"] == 3 and scores.meta["lora"] == {"rank": 4, "alpha": 8.0}
    assert scores.meta["num_train_examples"] == end_run["examples"]
    assert scores.meta["model_fingerprint"]
    stage1 = json.loads((out / "stage1" / "summary.json").read_text())
    assert stage1["source"] == "callback" and len(stage1["loss_curve"]) == 6
    assert stage1["loss_steps"] == [1, 2, 3, 4, 5, 6] and stage1["steps"] == 6
    stage2 = json.loads((out / "stage2" / "summary.json").read_text())
    # 4 examples x 2 micro-batches of the outer run per stage-2 step.
    assert stage2["steps"] == 4 and stage2["examples_per_step"] == 8
    assert (out / "report" / "ranking.md").is_file()


def test_the_users_model_is_left_as_it_was(end_run):
    model, (before, after) = end_run["model"], end_run["probes"]
    assert before.seen and after.seen
    assert not any("ila_gates" in name for name, _ in model.named_modules())
    assert after.seen["flags"] == before.seen["flags"] == end_run["flags"]
    assert after.seen["modes"] == before.seen["modes"]
    assert after.seen["forward"] is before.seen["forward"]
    for name, weight in before.seen["lora"].items():
        assert torch.equal(after.seen["lora"][name], weight), name
    assert torch.equal(after.seen["logits"], before.seen["logits"])
    # The nested Trainer seeds the generators; the outer run's random state is put back.
    assert torch.equal(after.seen["rng"], before.seen["rng"])


def test_select_compare_and_report_accept_the_callbacks_runs(end_run, stable_run, tmp_path):
    end, stable = end_run["out"], stable_run["out"]
    selection = ila.select(end, tune_top_fraction=0.5)
    names = [u.name for u in end_run["ranker"].scores.units]
    assert selection.selected and set(selection.selected) <= set(names)
    comparison = ila.compare([end, stable], output_dir=tmp_path / "cmp")
    assert (tmp_path / "cmp" / "comparison.json").is_file() and comparison
    page = ila.report(end, output_dir=tmp_path / "report")
    assert page.is_file() and "callback" not in page.name
    assert ila.report(stable, output_dir=tmp_path / "report-stable").is_file()


def test_at_stable_ranks_where_the_rule_fires_then_freezes_the_bottom(stable_run):
    ranker, model, snapshot = stable_run["ranker"], stable_run["model"], stable_run["snapshot"]
    step = ranker.ranked_step
    assert step is not None and 2 <= step < 12, step
    scores = ranker.scores
    assert scores.meta["T"] == step and scores.meta["stage1_stable"] is True
    source = scores.meta["source"]
    assert source == {**source, "kind": "callback", "step": step, "stable_step": step}
    assert LayerScores.load(stable_run["out"] / "layer_scores.json").meta["T"] == step
    stage1 = json.loads((stable_run["out"] / "stage1" / "summary.json").read_text())
    assert stage1["stable"] is True and stage1["T"] == step and len(stage1["loss_curve"]) == step
    selection = ranker.selection
    assert selection is not None and selection.rule == "freeze-bottom-fraction"
    assert set(selection.frozen) == set(scores.bottom(0.5))
    saved = json.loads((stable_run["out"] / "selection.json").read_text())
    assert saved["frozen"] == list(selection.frozen)
    # After the ranking the frozen units' LoRA weights never moved; the others did.
    after = _lora_weights(model)
    assert snapshot.weights is not None
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for unit in (*selection.selected, *selection.frozen):
        names = [n for n in after if f".{unit}.lora_" in n]
        moved = [not torch.equal(after[n], snapshot.weights[n]) for n in names]
        tuned = unit in selection.selected
        assert len(names) == 2 and any(moved) == tuned, unit
        assert all(flags[n] == tuned for n in names), unit


def test_at_stable_a_rule_that_never_fires_ranks_at_the_end_without_then(
    tiny_model_dir, features, collator, tmp_path, caplog
):
    # The default rule never fires before its minimum of 20 steps.
    ranker = ila.IlaCallback(at="stable", stage2=STAGE2, then="tune-top", fraction=0.5)
    model = _lora_model(tiny_model_dir)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with caplog.at_level("WARNING", logger="ila"):
        _trainer(model, features, collator, tmp_path, [ranker], steps=4).train()
    assert "never became epsilon-stable" in caplog.text
    assert ranker.ranked_step == 4 and ranker.selection is None
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    scores = LayerScores.load(tmp_path / "ila" / "layer_scores.json")
    assert scores.meta["T"] is None and scores.meta["stage1_stable"] is False
    assert scores.meta["source"]["stable"] is False and scores.meta["source"]["step"] == 4
    assert not (tmp_path / "ila" / "selection.json").exists()


def test_a_model_without_lora_is_refused_before_training(
    tiny_model_dir, features, collator, tmp_path
):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _trainer(model, features, collator, tmp_path, [ila.IlaCallback()], steps=2)
    with pytest.raises(IlaError, match=r"has none: wrap it with peft") as error:
        trainer.train()
    assert "\n" not in str(error.value)
    assert trainer.state.global_step == 0 and not (tmp_path / "ila").exists()
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_dora_and_a_stable_ranking_without_loss_logs_are_refused_before_training(
    tiny_model_dir, features, collator, tmp_path
):
    dora = _lora_model(tiny_model_dir, use_dora=True)
    trainer = _trainer(dora, features, collator, tmp_path / "a", [ila.IlaCallback()], steps=2)
    with pytest.raises(IlaError, match="DoRA"):
        trainer.train()
    assert trainer.state.global_step == 0
    ranker = ila.IlaCallback(at="stable")
    trainer = _trainer(
        _lora_model(tiny_model_dir),
        features,
        collator,
        tmp_path / "b",
        [ranker],
        steps=2,
        logging_strategy="no",
    )
    with pytest.raises(IlaError, match="logging_strategy='steps'"):
        trainer.train()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"at": "sometimes"}, r"at='sometimes': choose one of end, stable"),
        ({"at": "stable", "then": "freeze-middle", "fraction": 0.5}, "then='freeze-middle'"),
        ({"at": "stable", "then": "tune-top", "fraction": 0.0}, r"fraction=0.0: .*\(0, 1\)"),
        ({"at": "stable", "then": "tune-top", "fraction": 1.0}, r"fraction=1.0"),
        ({"at": "stable", "then": "tune-top", "fraction": 1.5}, r"fraction=1.5"),
        ({"at": "stable", "then": "tune-top"}, "then and fraction go together"),
        ({"at": "stable", "fraction": 0.3}, "then and fraction go together"),
        ({"then": "freeze-bottom", "fraction": 0.3}, "at='end' nothing is left"),
        ({"stage2": {"steps": 3}}, r"stage2=: pass an ila.config.Stage2Config"),
        ({"output_subdir": "../elsewhere"}, "relative folder name"),
    ],
)
def test_the_constructor_refuses_bad_settings(settings, message):
    with pytest.raises(IlaError, match=message):
        ila.IlaCallback(**settings)


def test_trls_sft_trainer_with_a_peft_config_is_ranked_and_tunes_the_top(tiny_model_dir, tmp_path):
    pytest.importorskip("trl")
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    rows = [{"messages": list(e.messages)} for e in load_examples("ila-instruct", limit=40)]
    ranker = ila.IlaCallback(
        at="stable", stage1=QUICK_RULE, stage2=STAGE2, then="tune-top", fraction=0.25
    )
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=64,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        callbacks=[ranker],
    )
    trainer.train()
    assert ranker.ranked_step is not None and ranker.ranked_step < 12
    scores = LayerScores.load(tmp_path / "ila" / "layer_scores.json")
    assert scores.meta["source"]["kind"] == "callback" and len(scores.units) == 8
    assert set(ranker.selection.selected) == set(scores.top(0.25))
    flags = {n: p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" in n}
    for name, flag in flags.items():
        assert flag == any(f".{unit}.lora_" in name for unit in ranker.selection.selected), name
    assert ila.select(tmp_path / "ila", freeze_bottom_fraction=0.5).frozen


def test_a_ddp_run_ranks_at_the_same_step_on_every_process_and_freezes_alike(
    tiny_model_dir, tmp_path
):
    """torchrun, 2 CPU processes (gloo): the nested stage 2 is a DDP run inside the DDP run."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed in this environment")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    command = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port)]
    command += [str(DDP_WORKER), str(tiny_model_dir), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (json.loads((out / f"result-{r}.json").read_text()) for r in (0, 1))
    assert first == second and first["world_size"] == 2
    assert first["step"] < 12 and not first["frozen_moved"]
    assert first["others_moved"] == first["others"] > 0
    scores = LayerScores.load(out / "ila" / "layer_scores.json")
    assert scores.meta["source"]["step"] == first["step"] == scores.meta["T"]
    assert [u.raw for u in scores.units] == first["raw"]
    assert (out / "ila" / "selection.json").is_file()
