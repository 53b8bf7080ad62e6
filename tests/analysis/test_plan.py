"""`ila plan`: counts from the config alone must equal the real model's, the activation
formula must match what autograd keeps, and 7B/70B configs plan without any weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from ila.analysis.plan import activation_bytes, model_shape, plan_run
from ila.cli import main
from ila.config import (
    FinetuneSettings,
    LoraSettings,
    ModelConfig,
    PlanConfig,
    PlanSettings,
    Stage1Config,
)
from ila.core.gates import attach_gates
from ila.core.layers import find_layers
from ila.core.lora import add_lora
from ila.core.selection import select_units
from ila.errors import IlaError
from ila.jobs.finetune import freeze_all_but, trainable_summary

LLAMA2 = {  # the published Llama-2 shapes
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32},
    "70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
            "num_attention_heads": 64, "num_key_value_heads": 8},
}  # fmt: skip


def config_only_dir(tmp_path, name, **dims):
    """A model directory holding a config.json and nothing else: no weights to load."""
    path = tmp_path / name
    LlamaConfig(vocab_size=32000, tie_word_embeddings=False, **dims).save_pretrained(path)
    assert [p.name for p in path.iterdir()] == ["config.json"]
    return path


def closed_form_llama(v, h, inter, layers, heads, kv_heads):
    kv = h // heads * kv_heads
    attention = h * h + 2 * h * kv + h * h
    return 2 * v * h + layers * (attention + 3 * h * inter + 2 * h) + h


def test_llama2_7b_plan_from_config_only(tmp_path):
    path = config_only_dir(tmp_path, "llama-2-7b", **LLAMA2["7b"])
    config = PlanConfig(model=ModelConfig(model=str(path), dtype="bfloat16"))
    plan = plan_run(config)
    assert plan.parameters == 6_738_415_616  # Llama-2-7B, as published
    stage1, stage2, finetune = plan.stages
    # LoRA r=8 on all 7 linear modules of 32 blocks (peft prints the same number).
    assert stage1.trainable_parameters == 19_988_480
    assert stage1.weight_bytes == 2 * 6_738_415_616 + 4 * 19_988_480
    assert stage1.optimizer_bytes == 2 * 4 * 19_988_480
    assert stage2.trainable_parameters == 32 * 7
    assert plan.tokens_per_step == 4 * 256 and plan.num_units == 224
    # The top 30% of 224 units = 67; the plan counts the largest ones (an upper bound).
    assert "67 units" in finetune.what and finetune.trainable_parameters <= 67 * 8 * 15104


def test_llama2_70b_counts_match_the_closed_form(tmp_path):
    path = config_only_dir(tmp_path, "llama-2-70b", **LLAMA2["70b"])
    plan = plan_run(PlanConfig(model=ModelConfig(model=str(path), dtype="bfloat16")))
    dims = LLAMA2["70b"]
    expected = closed_form_llama(
        32000,
        dims["hidden_size"],
        dims["intermediate_size"],
        dims["num_hidden_layers"],
        dims["num_attention_heads"],
        dims["num_key_value_heads"],
    )
    assert plan.parameters == expected == 68_976_648_192
    assert plan.stages[0].weight_bytes > 2 * expected  # bf16 weights plus the adapter


def test_trainable_counts_equal_the_real_models(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    layer_map = find_layers(model)
    selection = select_units(layer_map, blocks=[2])
    config = PlanConfig(
        model=ModelConfig(model=str(tiny_model_dir)),
        lora=LoraSettings(module_types=["q_proj", "v_proj"], rank=4),
    )
    plan = plan_run(config, selection=selection)
    real = sum(p.numel() for p in model.parameters())
    assert plan.parameters == real
    stage1 = add_lora(
        model, [u for u in layer_map.units if u.module_type.endswith(("q_proj", "v_proj"))],
        config.lora, seed=0,
    )  # fmt: skip
    assert plan.stages[0].trainable_parameters == trainable_summary(stage1)["trainable_parameters"]
    assert plan.stages[1].trainable_parameters == 8  # q and v of 4 blocks
    assert plan.stages[2].trainable_parameters == 4 * sum(
        u.in_features + u.out_features for u in selection.selected_units(layer_map)
    )
    full = plan_run(
        PlanConfig(model=config.model, finetune=FinetuneSettings(method="full")),
        selection=selection,
    )
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    freeze_all_but(fresh, layer_map, set(selection.selected), train_embeddings=False)
    assert full.stages[2].trainable_parameters == trainable_summary(fresh)["trainable_parameters"]
    # Block 2 is the lowest trained block: blocks 0-1 keep no activations.
    everything = plan_run(PlanConfig(model=config.model, finetune=FinetuneSettings(method="full")))
    assert full.stages[2].activation_bytes < everything.stages[2].activation_bytes


def _saved_activation_bytes(model, ids):
    """Bytes autograd keeps for the backward pass of one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    return sum(kept.values())


@pytest.mark.parametrize("dims", [(32, 64, 4, 2, 400, 4), (576, 1536, 9, 3, 1000, 2)])
@pytest.mark.parametrize(
    ("kept", "dropout"), [("lora", 0.05), ("lora", 0.0), ("gates", 0.05), ("weights", 0.0)]
)
def test_activation_formula_matches_what_autograd_keeps(dims, kept, dropout, tmp_path):
    hidden, inter, heads, kv_heads, vocab, layers = dims
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        )
    ).save_pretrained(tmp_path / "m")  # fmt: skip
    shape = model_shape(str(tmp_path / "m"))
    model = LlamaForCausalLM.from_pretrained(tmp_path / "m")
    layer_map = find_layers(model)
    units = list(layer_map.units)
    if kept == "weights":
        freeze_all_but(model, layer_map, {u.name for u in units}, train_embeddings=False)
    else:
        model = add_lora(model, units, LoraSettings(dropout=dropout), seed=0)
        if kept == "gates":
            for param in model.parameters():
                param.requires_grad_(False)
            attach_gates(model, layer_map)
    model.train()
    batch, length = 2, 96
    measured = _saved_activation_bytes(model, torch.randint(3, vocab, (batch, length)))
    predicted = activation_bytes(
        shape, batch_size=batch, max_length=length, act_bytes=4, kept=kept, units=units,
        dropout=dropout > 0,
    )  # fmt: skip
    # The formula's 4V per token for the logits includes the three V-sized tensors of the
    # backward pass; autograd itself keeps one (the log-softmax).
    predicted -= 3 * batch * length * vocab * 4
    # An upper bound within 20%: the lowest block keeps less (its input needs no gradient).
    assert measured <= predicted <= 1.2 * measured


def test_cli_table_json_and_time(tiny_model_dir, capsys):
    base = ["plan", "--model", str(tiny_model_dir), "--batch-size", "2", "--grad-accum", "3"]
    assert main([*base, "--max-length", "64"]) == 0
    table = capsys.readouterr().out
    assert "tokens per step: 384 per process" in table
    # r * (d_in + d_out) per block: q 64, k 48, v 48, o 64, gate 96, up 96, down 96 (x8 x4)
    assert "| stage 1: LoRA r=8 on 28 units | 16,384 |" in table
    assert "time: not estimated" in table and "--tokens-per-second" in table
    assert main([*base, "--max-length", "64", "--tokens-per-second", "96", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["tokens_per_step"] == 384
    stage1, stage2, finetune = plan["stages"]
    # A stage-2 step accumulates 2 micro-batches (--stage2-grad-accum).
    assert stage1["seconds"] == 300 * 384 / 96 and stage2["seconds"] == 60 * 2 * 384 / 96
    assert finetune["seconds"] == 100 * 384 / 96
    assert stage1["peak_bytes"] == sum(
        stage1[k] for k in ("weight_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes")
    )


def test_plan_settings_validate():
    with pytest.raises(IlaError, match="tokens_per_second"):
        PlanSettings(tokens_per_second=0)
    with pytest.raises(IlaError, match="tune_top_fraction"):
        PlanSettings(tune_top_fraction=1.0)


@pytest.mark.slow
def test_embedded_model_plan_matches_the_loaded_model(embedded_cache):
    from ila.model.loading import load_model

    plan = plan_run(PlanConfig(), cache=embedded_cache)
    model, _ = load_model("smollm2-135m", device="cpu", cache=embedded_cache)
    assert plan.parameters == sum(p.numel() for p in model.parameters()) == 134_515_008
    assert plan.num_blocks == 30 and plan.num_units == len(find_layers(model).units) == 210


def test_a_full_stage1_counts_the_unit_weights_and_their_copy(tiny_model_dir):
    from ila.config import Stage1Config
    from ila.scorers.ila import FullUpdate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    layer_map = find_layers(model)
    config = PlanConfig(model=ModelConfig(model=str(tiny_model_dir)))
    lora = plan_run(config)
    full = plan_run(dataclasses.replace(config, stage1=Stage1Config(method="full")))
    update = FullUpdate(model, layer_map)  # what stage 1 trains and keeps, on the real model
    trained = trainable_summary(model)["trainable_parameters"]
    copy = sum(t.numel() * t.element_size() for t in update.initial.values())
    assert full.stages[0].trainable_parameters == trained
    assert full.stages[0].weight_bytes == 4 * sum(p.numel() for p in model.parameters()) + copy
    assert full.stages[0].optimizer_bytes == 2 * 4 * trained
    # Stage 2 holds the deltas in the copy's place, beside the same gates as with LoRA.
    assert full.stages[1].weight_bytes - copy == lora.stages[1].weight_bytes - 4 * (
        lora.stages[0].trainable_parameters
    )
    assert full.stages[1].trainable_parameters == lora.stages[1].trainable_parameters
    assert "full fine-tune of 28 units" in full.stages[0].what


def test_sharding_and_a_4bit_base(tiny_model_dir):
    config = PlanConfig(model=ModelConfig(model=str(tiny_model_dir)))
    one = plan_run(config)
    layer_map = find_layers(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    block = max(
        sum(u.num_params for u in layer_map.units if u.block == b)
        for b in range(layer_map.num_blocks)
    )
    for key in ("fsdp", "zero3"):
        four = plan_run(dataclasses.replace(config, plan=PlanSettings(**{key: 4})))
        for a, b in zip(one.stages, four.stages, strict=True):
            assert b.weight_bytes == -(-a.weight_bytes // 4) + 2 * 4 * block
            assert b.gradient_bytes == -(-a.gradient_bytes // 4)
            assert b.optimizer_bytes == -(-a.optimizer_bytes // 4)
            assert b.activation_bytes == a.activation_bytes  # per process
            assert any("divided by 4" in note for note in b.notes)
    with pytest.raises(IlaError, match="two ways to shard one job"):
        PlanSettings(fsdp=2, zero3=2)
    # A 4-bit base: the block linears in NF4 for every stage, the rest as loaded.
    nf4 = plan_run(dataclasses.replace(config, model=ModelConfig(model=str(tiny_model_dir),
                                                                 quantization="nf4")))  # fmt: skip
    linears = sum(u.num_params for u in layer_map.units)
    saved = round(linears * (4 - (4 + 8 / 64 + 32 / (64 * 256)) / 8))
    for a, b in zip(one.stages, nf4.stages, strict=True):
        assert abs((a.weight_bytes - b.weight_bytes) - saved) <= 1
    qlora = plan_run(dataclasses.replace(config, finetune=FinetuneSettings(method="qlora")))
    assert qlora.stages[2].weight_bytes == nf4.stages[2].weight_bytes
    with pytest.raises(IlaError, match="4-bit weights cannot be fine-tuned"):
        plan_run(dataclasses.replace(
            nf4_config := dataclasses.replace(config, model=ModelConfig(
                model=str(tiny_model_dir), quantization="nf4")),
            stage1=dataclasses.replace(nf4_config.stage1, method="full"),
        ))  # fmt: skip


def test_a_4bit_base_needs_cuda(tiny_model_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without CUDA")
    out = tmp_path / "q"
    argv = ["-q", "score", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    assert main([*argv, "--quantization", "nf4", "--device", "cpu", "--limit", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ila: error:") and "CUDA" in err and "Traceback" not in err
    assert not out.exists()
    full = [*argv, "--quantization", "nf4", "--stage1-method", "full"]
    assert main(full) == 2
    assert "4-bit weights cannot be fine-tuned" in capsys.readouterr().err


def test_an_existing_update_replaces_stage1_training(tiny_model_dir):
    from ila.config import SourceSettings

    model = ModelConfig(model=str(tiny_model_dir))
    lora = plan_run(PlanConfig(model=model))
    pair = plan_run(PlanConfig(model=model, source=SourceSettings(from_model="aligned")))
    adapter = plan_run(PlanConfig(model=model, source=SourceSettings(from_adapter="adapter")))
    for plan in (pair, adapter):
        stage1 = plan.stages[0]
        assert stage1.trainable_parameters == 0 and stage1.max_steps == 0
        assert stage1.optimizer_bytes == stage1.activation_bytes == 0
    # The pair holds a second copy of the unit weights (the deltas) for stage 2, as the
    # stage 2 of a full-delta stage 1 does.
    full = plan_run(PlanConfig(model=model, stage1=Stage1Config(method="full")))
    assert pair.stages[1].weight_bytes == full.stages[1].weight_bytes
    assert pair.stages[1].weight_bytes > lora.stages[1].weight_bytes
    assert adapter.stages[1].weight_bytes == lora.stages[1].weight_bytes
