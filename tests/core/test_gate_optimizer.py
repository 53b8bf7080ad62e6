"""Stage 2's shared-scale Adam (docs/method.md, Stage 2, the optimiser): a gate moves with
its expected gradient, not with its own noise level as under per-coordinate Adam."""

import copy

import pytest
import torch

from ila.config import Stage2Config
from ila.core.gate_optimizer import SharedScaleAdam
from ila.errors import IlaError


def _run(optimizer_cls, grads: torch.Tensor, steps: int = 20) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros(grads.shape[-1]))
    opt = optimizer_cls([p], lr=0.1)
    for i in range(steps):
        p.grad = grads[i % len(grads)].clone()
        opt.step()
    return p.detach()


def test_steps_are_proportional_to_the_gradients():
    # Constant gradients 1 and 0.1: Adam moves both by about lr a step; shared-scale Adam
    # moves the second 10x less.
    grads = torch.tensor([[1.0, 0.1]])
    adam = _run(lambda p, lr: torch.optim.Adam(p, lr=lr), grads)
    shared = _run(SharedScaleAdam, grads)
    assert adam[0].item() == pytest.approx(adam[1].item(), rel=1e-3)
    assert shared[0].item() / shared[1].item() == pytest.approx(10.0, rel=1e-3)
    # Adam's scale: the typical coordinate moves by about lr a step (here the RMS, 0.71).
    assert shared[0].item() == pytest.approx(-20 * 0.1 / (0.505**0.5), rel=1e-2)


def test_noise_does_not_slow_a_gate_with_the_same_mean_gradient():
    # Gate 0 gets a steady 0.5; gate 1 alternates 3.5 and -2.5 (mean 0.5, large noise).
    grads = torch.tensor([[0.5, 3.5], [0.5, -2.5]])
    adam = _run(lambda p, lr: torch.optim.Adam(p, lr=lr), grads, steps=40)
    shared = _run(SharedScaleAdam, grads, steps=40)
    assert abs(adam[1].item()) < 0.5 * abs(adam[0].item())  # per-coordinate: noise slows it
    # Momentum leaves a residual of the last kicks; the mean drift is the same.
    assert shared[1].item() == pytest.approx(shared[0].item(), rel=0.3)


def test_state_round_trips_through_state_dict():
    grads = torch.tensor([[1.0, -0.3], [0.2, 0.4]])
    p = torch.nn.Parameter(torch.zeros(2))
    opt = SharedScaleAdam([p], lr=0.1)
    for i in range(3):
        p.grad = grads[i % 2].clone()
        opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    other = SharedScaleAdam([q], lr=0.1)
    # A copy, as a checkpoint read from disk is (load_state_dict keeps tensors it can).
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    for i in range(3, 6):
        p.grad, q.grad = grads[i % 2].clone(), grads[i % 2].clone()
        opt.step()
        other.step()
    assert torch.equal(p, q)


def test_settings_are_checked():
    with pytest.raises(ValueError):
        SharedScaleAdam([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    with pytest.raises(IlaError, match="stage2_optimizer"):
        Stage2Config(optimizer="sgd")


def test_stage2_learns_the_gates_with_shared_scale_adam_and_a_cosine_schedule(
    tiny_llama, tiny_tokenizer, tmp_path
):
    import json

    from tests.conftest import score_tiny_ila

    from ila.config import ScoreConfig, Stage1Config, TrainConfig

    config = ScoreConfig(
        train=TrainConfig(batch_size=4, precision="fp32"),
        stage1=Stage1Config(max_steps=4, min_steps=0),
        stage2=Stage2Config(steps=8, grad_accum=1, optimizer="adam-shared", schedule="cosine"),
    )
    scores, rows = score_tiny_ila(tiny_llama, tiny_tokenizer, tmp_path, config, limit=40)
    rates = [r["learning_rate"] for r in rows if r["stage"] == "stage2"]
    assert rates[0] > rates[len(rates) // 2] > rates[-1]  # cosine decay towards zero
    summary = json.loads((tmp_path / "stage2" / "summary.json").read_text())
    assert (summary["optimizer"], summary["schedule"]) == ("adam-shared", "cosine")
    assert scores.meta["stage2"]["optimizer"] == "adam-shared"
    # The budget pushes every gate down from s = 3; the shared normaliser lets them differ.
    raw = [u.raw for u in scores.units]
    assert max(raw) < 3.0 and len({round(x, 6) for x in raw}) > 1
