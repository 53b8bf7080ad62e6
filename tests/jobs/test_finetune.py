"""Stage 3: fine-tune only the selected units; everything else stays bit-identical."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import fails
from ila.cli import main
from ila.config import (
    DataConfig,
    FinetuneConfig,
    FinetuneSettings,
    LoraSettings,
    ModelConfig,
    TrainConfig,
)
from ila.core.layers import find_layers
from ila.core.selection import Selection, SelectionRule
from ila.errors import IlaError
from ila.jobs.finetune import finetune, freeze_all_but

SELECTED_BLOCK = 2


def config(model_dir, method="full", **finetune_kwargs):
    return FinetuneConfig(
        model=ModelConfig(model=str(model_dir), device="cpu"),
        data=DataConfig(max_length=96, limit=60, eval_fraction=0.2),
        lora=LoraSettings(rank=4),
        train=TrainConfig(batch_size=4),
        finetune=FinetuneSettings(
            method=method, max_steps=6, learning_rate=1e-2, **finetune_kwargs
        ),
    )


# A rule typed by hand: the job applies it to the loaded model's units.
block_selection = SelectionRule(
    "units", [f"layers.{SELECTED_BLOCK}.mlp.up_proj", f"layers.{SELECTED_BLOCK}.self_attn.q_proj"]
)


def test_full_finetune_changes_only_selected_parameters(tiny_model_dir, tmp_path):
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    run = finetune(config(tiny_model_dir), block_selection, tmp_path / "ft")
    changed = load_file(str(tmp_path / "ft" / "changed_weights" / "changed_weights.safetensors"))
    expected = {
        f"model.layers.{SELECTED_BLOCK}.mlp.up_proj.weight",
        f"model.layers.{SELECTED_BLOCK}.self_attn.q_proj.weight",
    }
    assert set(changed) == expected
    for name in expected:
        assert not torch.equal(changed[name], before[name])
    # Apply the saved tensors to a fresh copy: every other parameter is bit-identical.
    after = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for name, tensor in after.items():
        if name not in expected:
            assert torch.equal(tensor, before[name]), name
    s = run.summary
    assert s.trainable_parameters == 32 * 64 + 32 * 32
    # AdamW: two fp32 moments per trained parameter, plus a scalar step count per tensor.
    assert s.optimizer_state_bytes == 2 * 4 * s.trainable_parameters + 2 * 4
    assert s.eval_loss is not None and s.steps == 6
    files = {p.name for p in (tmp_path / "ft").iterdir()}
    assert {"selection.json", "finetune_summary.json", "config.yaml", "metrics.jsonl"} <= files


def test_lora_finetune_adapts_only_selected_modules(tiny_model_dir, tmp_path):
    finetune(config(tiny_model_dir, method="lora", merge=True), block_selection, tmp_path / "lora")
    adapter = tmp_path / "lora" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == sorted(
        [
            f"model.layers.{SELECTED_BLOCK}.mlp.up_proj",
            f"model.layers.{SELECTED_BLOCK}.self_attn.q_proj",
        ]
    )
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert {k.split(".lora_")[0].removeprefix("base_model.model.") for k in weights} == set(
        cfg["target_modules"]
    )
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())
    # The merged model differs from the base only in the selected modules.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "merged").state_dict()
    differ = {n for n in base if not torch.equal(base[n], merged[n])}
    assert differ == {f"{m}.weight" for m in cfg["target_modules"]}


def test_no_gradient_below_the_lowest_trainable_block(tiny_llama):
    layer_map = find_layers(tiny_llama)
    freeze_all_but(
        tiny_llama, layer_map, {f"layers.{SELECTED_BLOCK}.mlp.up_proj"}, train_embeddings=False
    )
    outputs = {}
    for i, block in enumerate(tiny_llama.model.layers):
        block.register_forward_hook(
            lambda _m, _i, out, i=i: outputs.__setitem__(
                i, out[0] if isinstance(out, tuple) else out
            )
        )
    ids = torch.randint(3, 300, (2, 8))
    tiny_llama(input_ids=ids, labels=ids).loss.backward()
    assert [outputs[i].requires_grad for i in range(4)] == [False, False, True, True]
    grads = {n for n, p in tiny_llama.named_parameters() if p.grad is not None}
    assert grads == {f"model.layers.{SELECTED_BLOCK}.mlp.up_proj.weight"}


def test_qlora_without_cuda_is_a_clear_error(tiny_model_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(IlaError, match="qlora needs a CUDA GPU"):
        finetune(config(tiny_model_dir, method="qlora"), block_selection, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_cli_finetune_from_scores_and_errors(tiny_model_dir, tmp_path, capsys):
    from ila.core.scores import LayerScores, UnitScore

    layer_map = find_layers(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    units = [
        UnitScore(u.name, u.block, u.module_type, 1.0 - 0.01 * i, 0.0)
        for i, u in enumerate(layer_map.units)
    ]
    LayerScores("ila", "tiny", "module", units, layout=layer_map.to_dict()).save(
        tmp_path / "layer_scores.json"
    )
    common = [
        "--model",
        str(tiny_model_dir),
        "--limit",
        "40",
        "--max-length",
        "96",
        "--max-steps",
        "2",
        "--device",
        "cpu",
    ]
    out = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "--scores",
                str(tmp_path),
                "--tune-top-fraction",
                "0.25",
                "--output-dir",
                str(out),
                *common,
            ]
        )
        == 0
    )
    assert "on 7 of 28 units" in capsys.readouterr().out
    assert Selection.load(out).selected == tuple(u.name for u in layer_map.units[:7])
    assert (
        main(
            [
                "finetune",
                "--tune-top-fraction",
                "0.25",
                "--output-dir",
                str(tmp_path / "x"),
                *common,
            ]
        )
        == 2
    )
    assert "need --scores" in capsys.readouterr().err
    assert (
        main(
            [
                "finetune",
                "--units",
                "layers.9.mlp.up_proj",
                "--output-dir",
                str(tmp_path / "y"),
                *common,
            ]
        )
        == 2
    )
    assert "unknown unit" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    # Within module type: 0.3 of each type's 4 units rounds to 1, so block 0 (the global
    # top 0.3 is 8 units). A saved selection keeps its rule; block scores have no types.
    within = tmp_path / "ft-within"
    rule = ["--scores", str(tmp_path), "--tune-top-fraction", "0.3", "--within-module-type"]
    assert main(["finetune", *rule, "--output-dir", str(within), *common]) == 0
    assert "(tune-top-fraction within module type: q_proj 1/4, k_proj 1/4," in (
        capsys.readouterr().out
    )
    chosen = Selection.load(within)
    assert chosen.within_module_type
    assert chosen.selected == tuple(u.name for u in layer_map.units if u.block == 0)
    again = ["finetune", "--selection", str(within), "--within-module-type"]
    fails([*again, "--output-dir", str(tmp_path / "z"), *common], capsys, "--within-module-type")
    blocks = [UnitScore(layer_map.block_name(b), b, None, 0.1 * b, 0.0) for b in range(4)]
    LayerScores("ila", "tiny", "block", blocks, layout=layer_map.to_dict()).save(
        tmp_path / "blocks" / "layer_scores.json"
    )
    rule[1] = str(tmp_path / "blocks")
    fails(["finetune", *rule, "--output-dir", str(tmp_path / "z"), *common], capsys,
          "--within-module-type: ", "--stage2-unit block")  # fmt: skip
    assert not (tmp_path / "z").exists()


def test_resume_after_an_interruption_matches_an_uninterrupted_run(
    tiny_model_dir, tmp_path, monkeypatch
):
    import dataclasses

    from ila.train import trainer as training

    cfg = config(tiny_model_dir, method="lora")
    cfg = dataclasses.replace(cfg, train=TrainConfig(batch_size=4, save_steps=2))
    finetune(cfg, block_selection, tmp_path / "straight")

    original = training.MetricsLogger.on_log

    def crash_at_step_5(self, args, state, control, logs=None, **kwargs):
        if state.global_step == 5:
            raise RuntimeError("simulated crash")
        return original(self, args, state, control, logs=logs, **kwargs)

    monkeypatch.setattr(training.MetricsLogger, "on_log", crash_at_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(cfg, block_selection, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "finetune_summary.json").exists()
    monkeypatch.setattr(training.MetricsLogger, "on_log", original)
    with pytest.raises(IlaError, match="already holds files"):
        finetune(cfg, block_selection, tmp_path / "resumed")
    run = finetune(cfg, block_selection, tmp_path / "resumed", resume=True)
    assert run.summary.steps == 6
    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_resume_of_a_finished_run_is_an_error(tiny_model_dir, tmp_path):
    finetune(config(tiny_model_dir, method="lora"), block_selection, tmp_path / "done")
    with pytest.raises(IlaError, match="has finished; nothing to resume"):
        finetune(
            config(tiny_model_dir, method="lora"), block_selection, tmp_path / "done", resume=True
        )
