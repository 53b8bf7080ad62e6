"""ILA stage-2 gates on LoRA updates: exact scaling, removal, refusals, planted signal."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import fit_gates
from ila.config import LoraSettings
from ila.core.gates import GATE_MODULE_NAME, attach_gates, budget_loss
from ila.core.layers import find_layers, peft_target_modules
from ila.core.lora import add_lora, lora_update_norms, unit_lora_layer
from ila.errors import IlaError

SETTINGS = LoraSettings(rank=4, alpha=8.0, dropout=0.0)


def lora_model(model):
    layer_map = find_layers(model)
    return add_lora(model, layer_map.units, SETTINGS, seed=0), layer_map


def randomize_lora(model, layer_map, scale=0.5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for unit in layer_map.units:
            layer = unit_lora_layer(model, unit)
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=gen) * scale)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 33, 2, 90, 41, 7, 12]])


def test_gates_at_one_and_zero_give_the_lora_and_the_base_model(tiny_llama):
    base_logits = logits(tiny_llama, IDS)
    model, layer_map = lora_model(tiny_llama)
    randomize_lora(model, layer_map)
    model.eval()
    lora_logits = logits(model, IDS)
    assert not torch.allclose(lora_logits, base_logits)

    gated = attach_gates(model, layer_map, init_score=60.0)  # sigmoid(60) == 1.0 in float32
    assert torch.allclose(logits(model, IDS), lora_logits, atol=1e-6)
    with torch.no_grad():
        gated.bank.scores.fill_(-60.0)
    assert torch.allclose(logits(model, IDS), base_logits, atol=1e-5)

    gated.detach()
    assert not hasattr(model.get_base_model(), GATE_MODULE_NAME)
    assert torch.allclose(logits(model, IDS), lora_logits, atol=1e-6)


def test_gate_scales_only_its_own_unit(tiny_llama):
    model, layer_map = lora_model(tiny_llama)
    randomize_lora(model, layer_map)
    model.eval()
    gated = attach_gates(model, layer_map, init_score=60.0)
    target = layer_map.unit("layers.2.mlp.down_proj")
    outputs = {}

    def capture(name):
        def hook(_m, _i, out):
            outputs[name] = out.detach().clone()

        return hook

    for unit in layer_map.units:
        unit_lora_layer(model, unit).lora_B["default"].register_forward_hook(capture(unit.name))
    logits(model, IDS)
    before = dict(outputs)
    with torch.no_grad():
        gated.bank.scores[layer_map.units.index(target)] = 0.0  # gate 0.5
    logits(model, IDS)
    assert torch.allclose(outputs[target.name], 0.5 * before[target.name], atol=1e-6)
    # Units upstream of the target (earlier blocks) see identical inputs and outputs.
    for unit in layer_map.units:
        if unit.block < target.block:
            assert torch.equal(outputs[unit.name], before[unit.name])


def test_block_granularity_shares_one_gate_per_block(tiny_llama):
    model, layer_map = lora_model(tiny_llama)
    gated = attach_gates(model, layer_map, granularity="block")
    assert gated.gate_names == ("layers.0", "layers.1", "layers.2", "layers.3")
    assert gated.gate_of_unit == tuple(u.block for u in layer_map.units)
    assert gated.bank.scores.shape == (4,)


def test_gate_gradients_reach_every_gate(tiny_llama):
    model, layer_map = lora_model(tiny_llama)
    randomize_lora(model, layer_map)
    gated = attach_gates(model, layer_map)
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    grad = gated.bank.scores.grad
    assert grad is not None and grad.shape == (len(layer_map.units),)
    assert torch.all(grad != 0)


def test_refuses_dora_merged_and_double_attach(tiny_llama):
    layer_map = find_layers(tiny_llama)
    config = LoraConfig(r=4, target_modules=peft_target_modules(layer_map.units), use_dora=True)
    dora = get_peft_model(tiny_llama, config)
    with pytest.raises(IlaError, match="DoRA"):
        attach_gates(dora, layer_map)


def test_refuses_units_without_lora_and_a_second_attach(tiny_llama):
    layer_map = find_layers(tiny_llama)
    with pytest.raises(IlaError, match="carries no LoRA adapter"):
        attach_gates(tiny_llama, layer_map)
    model = add_lora(tiny_llama, layer_map.units, SETTINGS, seed=0)
    attach_gates(model, layer_map)
    with pytest.raises(IlaError, match="already carries ILA gates"):
        attach_gates(model, layer_map)


def test_budget_forms():
    gates = torch.tensor([0.9, 0.9, 0.1, 0.1])
    assert budget_loss(
        gates, kind="penalty", weight=2.0, target_fraction=0.5
    ).item() == pytest.approx(1.0)
    assert budget_loss(
        gates, kind="hinge", weight=2.0, target_fraction=0.25
    ).item() == pytest.approx(0.5)
    assert budget_loss(gates, kind="hinge", weight=2.0, target_fraction=0.6).item() == 0.0
    with pytest.raises(IlaError, match="unknown budget"):
        budget_loss(gates, kind="l0", weight=1.0, target_fraction=0.5)


def test_lora_update_norms_match_the_dense_product(tiny_llama):
    model, layer_map = lora_model(tiny_llama)
    randomize_lora(model, layer_map)
    norms = lora_update_norms(model, layer_map)
    for i, unit in enumerate(layer_map.units):
        layer = unit_lora_layer(model, unit)
        dense = (
            layer.scaling["default"]
            * layer.lora_B["default"].weight
            @ layer.lora_A["default"].weight
        )
        assert norms[i].item() == pytest.approx(dense.norm().item(), rel=1e-4)


def test_planted_signal_ranks_useful_units_first(tiny_llama):
    """Units whose update carries the signal rank above units whose update is zero or harmful.

    The signal: LoRA trained (a 10-line loop) on the value/output projections and the MLP
    of blocks 1 and 3 only, to fit a fixed batch. Every other unit gets LoRA too, with
    B = 0 (no update) or a random B (an update that can only hurt).
    """
    torch.manual_seed(0)
    model, layer_map = lora_model(tiny_llama)
    signal = {
        u.name
        for u in layer_map.units
        if u.block in (1, 3) and u.module_type not in ("self_attn.q_proj", "self_attn.k_proj")
    }
    batch = torch.randint(3, 400, (8, 16), generator=torch.Generator().manual_seed(0))
    params = []
    for unit in layer_map.units:
        layer = unit_lora_layer(model, unit)
        for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
            p.requires_grad_(unit.name in signal)
            if unit.name in signal:
                params.append(p)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
    gen = torch.Generator().manual_seed(1)
    harmful = set()
    with torch.no_grad():
        for i, unit in enumerate(u for u in layer_map.units if u.name not in signal):
            if i % 2:
                b = unit_lora_layer(model, unit).lora_B["default"].weight
                b.copy_(torch.randn(b.shape, generator=gen) * 0.5)
                harmful.add(unit.name)

    for p in model.parameters():
        p.requires_grad_(False)
    gammas = fit_gates(model, attach_gates(model, layer_map, init_score=3.0), batch)
    ranking = sorted(range(len(gammas)), key=lambda i: -gammas[i].item())
    top = {layer_map.units[i].name for i in ranking[: len(signal)]}
    assert top == signal
    # Scores separate: the signal keeps its update, the rest is switched (mostly) off.
    signal_idx = [i for i, u in enumerate(layer_map.units) if u.name in signal]
    other_idx = [i for i in range(len(gammas)) if i not in signal_idx]
    assert gammas[signal_idx].min() > gammas[other_idx].max() + 0.1
    assert gammas[signal_idx].mean() > 0.5 > 0.3 > gammas[other_idx].mean()


def test_project_to_budget_sets_the_mean_gate_and_keeps_the_order():
    from ila.core.gates import project_to_budget

    scores = torch.tensor([4.0, 3.0, -1.0, 0.5, 2.0, 6.0])
    order = torch.argsort(scores)
    project_to_budget(scores, 0.25)
    assert torch.sigmoid(scores).mean().item() == pytest.approx(0.25, abs=1e-6)
    assert torch.equal(torch.argsort(scores), order)
    with pytest.raises(IlaError, match="target_fraction"):
        project_to_budget(scores, 1.0)
