"""Stage 1 as a full fine-tune (`--stage1-method full`): the weight changes Delta_i and
the gates on them (ila.core.deltas, ila.core.gates.attach_delta_gates), and the job."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import fit_gates
from ila.cli import main
from ila.core.deltas import (
    delta_norms,
    load_deltas,
    save_deltas,
    snapshot_unit_weights,
    take_deltas,
    unit_weight,
)
from ila.core.gates import GATE_MODULE_NAME, attach_delta_gates
from ila.core.layers import find_layers
from ila.core.scores import LayerScores
from ila.errors import IlaError

IDS = torch.tensor([[5, 17, 33, 2, 90, 41, 7, 12]])
TINY = ["--max-length", "64", "--limit", "40", "--batch-size", "4", "--device", "cpu"]
QUICK = ["--stage1-max-steps", "6", "--stage1-min-steps", "0", "--stage2-steps", "3"]


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def perturb(model, layer_map, scale=0.05, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for unit in layer_map.units:
            weight = unit_weight(model, unit.module_path)
            weight.add_(torch.randn(weight.shape, generator=gen) * scale)


def test_deltas_restore_the_start_and_gates_at_one_and_zero_give_both_models(tiny_llama):
    layer_map = find_layers(tiny_llama)
    tiny_llama.eval()
    base_logits = logits(tiny_llama)
    initial = snapshot_unit_weights(tiny_llama, layer_map)
    perturb(tiny_llama, layer_map)
    tuned_logits = logits(tiny_llama)
    assert not torch.allclose(tuned_logits, base_logits)
    norms = delta_norms(tiny_llama, layer_map, initial)
    deltas = take_deltas(tiny_llama, layer_map, initial)
    assert initial == {}  # consumed: W(0) now lives in the model again
    assert torch.allclose(logits(tiny_llama), base_logits)  # W(0) is back, exactly
    expected = torch.stack([deltas[u.name].norm() for u in layer_map.units])
    assert torch.allclose(norms, expected)

    gated = attach_delta_gates(tiny_llama, layer_map, deltas, init_score=60.0)
    assert torch.allclose(logits(tiny_llama), tuned_logits, atol=1e-5)
    with torch.no_grad():
        gated.bank.scores.fill_(-60.0)
    assert torch.allclose(logits(tiny_llama), base_logits, atol=1e-6)
    # Gate gradients reach every gate.
    with torch.no_grad():
        gated.bank.scores.fill_(0.0)
    tiny_llama(input_ids=IDS, labels=IDS).loss.backward()
    assert (gated.bank.scores.grad.abs() > 0).all()
    gated.detach()
    assert not hasattr(tiny_llama, GATE_MODULE_NAME)
    assert torch.allclose(logits(tiny_llama), base_logits)
    with pytest.raises(IlaError, match="no stage-1 delta for units"):
        attach_delta_gates(tiny_llama, layer_map, {})


def test_deltas_round_trip_and_refuse_another_layout(tiny_llama, tmp_path):
    layer_map = find_layers(tiny_llama)
    initial = snapshot_unit_weights(tiny_llama, layer_map)
    perturb(tiny_llama, layer_map)
    deltas = take_deltas(tiny_llama, layer_map, initial)
    save_deltas(tmp_path / "d.safetensors", deltas, layer_map)
    loaded = load_deltas(tmp_path / "d.safetensors", layer_map)
    assert all(torch.equal(loaded[name], deltas[name]) for name in deltas)
    fewer = dict(list(deltas.items())[:-1])
    save_deltas(tmp_path / "fewer.safetensors", fewer, layer_map)
    with pytest.raises(IlaError, match="other units than this model's"):
        load_deltas(tmp_path / "fewer.safetensors", layer_map)
    with pytest.raises(IlaError, match="file not found"):
        load_deltas(tmp_path / "none.safetensors", layer_map)


def test_planted_signal_in_the_weight_changes_ranks_first(tiny_llama):
    """Units whose weight change carries the signal rank above units whose change is zero
    or harmful: the signal is a short full fine-tune of the value/output projections and
    the MLP of blocks 1 and 3 on a fixed batch; half the other units get a random change."""
    torch.manual_seed(0)
    layer_map = find_layers(tiny_llama)
    signal = {
        u.name
        for u in layer_map.units
        if u.block in (1, 3) and u.module_type not in ("self_attn.q_proj", "self_attn.k_proj")
    }
    batch = torch.randint(3, 400, (8, 16), generator=torch.Generator().manual_seed(0))
    initial = snapshot_unit_weights(tiny_llama, layer_map)
    for param in tiny_llama.parameters():
        param.requires_grad_(False)
    trained = [unit_weight(tiny_llama, u.module_path) for u in layer_map.units if u.name in signal]
    for weight in trained:
        weight.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=1e-3)
    for _ in range(60):
        optimizer.zero_grad()
        tiny_llama(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
    for weight in trained:
        weight.requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i, unit in enumerate(u for u in layer_map.units if u.name not in signal):
            if i % 2:
                weight = unit_weight(tiny_llama, unit.module_path)
                weight.add_(torch.randn(weight.shape, generator=gen) * 0.5)
    deltas = take_deltas(tiny_llama, layer_map, initial)

    gated = attach_delta_gates(tiny_llama, layer_map, deltas, init_score=3.0)
    gammas = fit_gates(tiny_llama, gated, batch)
    ranking = sorted(range(len(gammas)), key=lambda i: -gammas[i].item())
    assert {layer_map.units[i].name for i in ranking[: len(signal)]} == signal
    signal_idx = [i for i, u in enumerate(layer_map.units) if u.name in signal]
    other_idx = [i for i in range(len(gammas)) if i not in signal_idx]
    assert gammas[signal_idx].mean() > gammas[other_idx].mean() + 0.2


def test_score_with_a_full_stage1_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "full"
    argv = ["-q", "score", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    assert main([*argv, *TINY, *QUICK, "--stage1-method", "full"]) == 0
    scores = LayerScores.load(out)
    assert len(scores.units) == 28 and scores.meta["stage1"]["method"] == "full"
    # The learning rate left to its default is the full fine-tune's, and recorded.
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["stage1"] == {**config["stage1"], "method": "full", "learning_rate": 2e-5}
    assert scores.meta["stage1"]["learning_rate"] == 2e-5
    assert (out / "stage1" / "deltas" / "deltas.safetensors").is_file()
    assert not (out / "stage1" / "adapter").exists()
    summary = json.loads((out / "stage1" / "summary.json").read_text())
    assert summary["steps"] == 6 and all(n > 0 for n in summary["unit_update_norms"])
    assert len(set(u.importance for u in scores.units)) > 1  # the gates learned something

    # A fine-tune cannot start from a LoRA stage 1 that this run does not have.
    ft = ["-q", "finetune", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "f")]
    code = main([*ft, *TINY, "--scores", str(out), "--tune-top-fraction", "0.25",
                 "--max-steps", "2", "--init-from-stage1"])  # fmt: skip
    assert code == 2
    assert "trained the unit weights (--stage1-method full)" in capsys.readouterr().err
    # lora-norm ranks LoRA updates only.
    bad = [*argv[:-1], str(tmp_path / "n"), *TINY, "--scorer", "lora-norm"]
    assert main([*bad, "--stage1-method", "full"]) == 2
    assert "the lora-norm scorer ranks LoRA update norms" in capsys.readouterr().err
