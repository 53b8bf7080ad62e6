"""Every registered scorer under one contract, and planted-signal tests of each method.

Contract (parametrised over SCORERS): the scores have the schema every downstream command
reads (module units, in LayerMap order, finite, JSON round-trip), the same seed gives the
same ranking, and the model is left bit-identical (weights, requires_grad flags, no peft
or gate module left behind). Planted tests build a tiny model where the right answer is
known exactly and check the planted units' ranks.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny_llama
from ila.config import ScoreConfig, Stage1Config, Stage2Config, TrainConfig
from ila.core.layers import find_layers
from ila.core.scores import LayerScores
from ila.data import PaddingCollator, load_examples, tokenize_examples
from ila.errors import IlaError
from ila.scorers import SCORERS, ScoringContext, get_scorer
from ila.scorers.snr import mp_median, noise_sigma, weight_snr

MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
MODULES += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def features(tiny_tokenizer):
    examples = load_examples("ila-instruct", limit=40)
    return tokenize_examples(examples, tiny_tokenizer, max_length=96).features


def tiny_config(seed: int = 0) -> ScoreConfig:
    return ScoreConfig(
        train=TrainConfig(batch_size=4, seed=seed),
        stage1=Stage1Config(max_steps=10, min_steps=2, window=2, patience=1, warmup_steps=2),
        stage2=Stage2Config(steps=10),
    )


def make_ctx(model, tokenizer, features, tmp_path, *, seed: int = 0) -> ScoringContext:
    return ScoringContext(
        model=model,
        tokenizer=tokenizer,
        layer_map=find_layers(model),
        model_id="tiny-llama",
        train_features=features,
        collator=PaddingCollator(tokenizer.pad_token_id),
        config=tiny_config(seed),
        output_dir=tmp_path,
        data_fingerprint="0" * 16,
    )


def run(name, model, tokenizer, features, tmp_path, *, seed: int = 0):
    ctx = make_ctx(model, tokenizer, features, tmp_path, seed=seed)
    return get_scorer(name)(ctx), ctx


def snapshot(model):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    flags |= {f"{k}:training": m.training for k, m in model.named_modules()}
    return state, flags


# ila.py unloads peft but does not undo peft's freezing of the base weights (nor the
# Trainer's model.train()); remove the entry once score_ila restores them.
# --- contract, for every registered scorer ------------------------------------------------


@pytest.mark.parametrize("name", list(SCORERS))
def test_contract(name, tiny_tokenizer, features, tmp_path):
    model = build_tiny_llama(len(tiny_tokenizer)).eval()  # as from_pretrained leaves it
    state, flags = snapshot(model)
    scores, ctx = run(name, model, tiny_tokenizer, features, tmp_path / "a")

    # schema: module units in LayerMap order, finite, JSON round trip
    assert isinstance(scores, LayerScores) and scores.method == name
    assert scores.unit_kind == "module"
    assert scores.names == [u.name for u in ctx.layer_map.units]
    assert scores.layout == ctx.layer_map.to_dict()
    assert all(torch.isfinite(torch.tensor([u.importance, u.raw])).all() for u in scores.units)
    data = json.loads(json.dumps(scores.to_dict()))
    assert LayerScores.from_dict(data).to_dict() == data

    # the model is left as it was found
    after = ctx.model
    assert not [m for m in after.modules() if type(m).__module__.startswith("peft")]
    assert not [n for n, _ in after.named_modules() if "gate_bank" in n or "lora" in n]
    after_state, after_flags = snapshot(after)
    assert after_state.keys() == state.keys()
    assert all(torch.equal(after_state[k], state[k]) for k in state)

    # determinism: same seed, same ranking (on a fresh copy of the same model)
    fresh = build_tiny_llama(len(tiny_tokenizer)).eval()
    again, _ = run(name, fresh, tiny_tokenizer, features, tmp_path / "b")
    assert again.ranking() == scores.ranking()

    # requires_grad flags and train/eval modes as before
    changed = sorted(k for k in flags if after_flags[k] != flags[k])
    assert changed == []


def test_unknown_scorer_suggests_close_names():
    with pytest.raises(IlaError, match="did you mean lora-norm"):
        get_scorer("lora_norm")
    with pytest.raises(IlaError, match="did you mean block-influence"):
        get_scorer("block_influence")


def test_registry_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, ila.scorers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- controls and position priors ----------------------------------------------------------


def test_random_is_seeded(tiny_tokenizer, features, tmp_path):
    model = build_tiny_llama(len(tiny_tokenizer))
    a, _ = run("random", model, tiny_tokenizer, features, tmp_path, seed=1)
    b, _ = run("random", model, tiny_tokenizer, features, tmp_path, seed=1)
    c, _ = run("random", model, tiny_tokenizer, features, tmp_path, seed=2)
    assert a.to_dict() == b.to_dict()
    assert a.ranking() != c.ranking()
    assert a.meta["seed"] == 1 and c.meta["seed"] == 2


@pytest.mark.parametrize("name", ["first", "last"])
def test_position_priors_are_block_order(name, tiny_tokenizer, features, tmp_path):
    scores, _ = run(name, build_tiny_llama(len(tiny_tokenizer)), tiny_tokenizer, features, tmp_path)
    blocks = [0, 1, 2, 3] if name == "first" else [3, 2, 1, 0]
    assert scores.ranking() == [f"layers.{b}.{m}" for b in blocks for m in MODULES]
    assert scores.meta["granularity"] == "block"
    block_scores = scores.block_scores()
    assert [block_scores[b] for b in blocks] == sorted(block_scores.values(), reverse=True)


# --- planted signals ------------------------------------------------------------------------


def zero_(model, *paths):
    with torch.no_grad():
        for path in paths:
            model.get_submodule(path).weight.zero_()


def test_block_influence_ranks_an_identity_block_last(tiny_tokenizer, features, tmp_path):
    # Block 1 with o_proj = down_proj = 0 adds nothing to the residual stream: its output
    # equals its input, cosine 1, influence 0. Untouched random blocks turn the stream.
    model = build_tiny_llama(len(tiny_tokenizer))
    zero_(model, "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj")
    scores, _ = run("block-influence", model, tiny_tokenizer, features, tmp_path)
    influence = scores.meta["block_influence"]
    assert abs(influence[1]) < 1e-5
    assert min(influence[b] for b in (0, 2, 3)) > 1e-3
    assert scores.ranking()[-7:] == [f"layers.1.{m}" for m in MODULES]
    assert scores.meta["granularity"] == "block"
    assert scores.meta["num_tokens"] > 0


def test_grad_norm_gives_zero_to_units_that_cannot_move_the_loss(
    tiny_tokenizer, features, tmp_path
):
    # With o_proj = 0 in block 2, q/k/v of block 2 feed nothing that reaches the loss;
    # with down_proj = 0, neither do gate/up. Their gradient is exactly 0, while o_proj and
    # down_proj themselves (nonzero input) and every other unit get a gradient.
    model = build_tiny_llama(len(tiny_tokenizer))
    baseline, _ = run("grad-norm", model, tiny_tokenizer, features, tmp_path)
    assert min(u.importance for u in baseline.units) > 0  # nothing is 0 without the plant
    zero_(model, "model.layers.2.self_attn.o_proj", "model.layers.2.mlp.down_proj")
    scores, _ = run("grad-norm", model, tiny_tokenizer, features, tmp_path)
    dead = {f"layers.2.{m}" for m in MODULES if m not in ("self_attn.o_proj", "mlp.down_proj")}
    assert set(scores.ranking()[-5:]) == dead
    by_name = {u.name: u for u in scores.units}
    assert all(by_name[n].raw == 0.0 for n in dead)
    assert all(u.raw > 0 for u in scores.units if u.name not in dead)
    assert max(u.importance for u in scores.units) == 1.0
    assert scores.meta["num_batches"] == 10  # 40 examples / batch 4, under PROBE_BATCHES


def test_lora_norm_gives_zero_to_units_whose_input_is_zero(tiny_tokenizer, features, tmp_path):
    # input_layernorm.weight = 0 in block 3 makes the input of q/k/v exactly 0, hence v = 0
    # and the input of o_proj 0 too. LoRA's gradients are dB = g (A x)^T and dA = B^T g x^T,
    # both 0 when x = 0, so those four adapters never leave B = 0: ||Delta|| = 0 exactly.
    # gate/up/down of block 3 read the residual stream through post_attention_layernorm
    # and learn normally.
    model = build_tiny_llama(len(tiny_tokenizer))
    with torch.no_grad():
        model.model.layers[3].input_layernorm.weight.zero_()
    scores, _ = run("lora-norm", model, tiny_tokenizer, features, tmp_path)
    dead = [f"layers.3.{m}" for m in MODULES[:4]]
    assert scores.ranking()[-4:] == dead  # ties at 0 keep model order
    by_name = {u.name: u for u in scores.units}
    assert all(by_name[n].raw == 0.0 for n in dead)
    assert all(u.raw > 0 for u in scores.units if u.name not in dead)
    assert 1 <= scores.meta["stage1_steps"] <= 10  # stage 1 may stop once stable


def test_snr_finds_planted_low_rank_structure(tiny_tokenizer, features, tmp_path):
    # Random init is pure noise (std 0.02) everywhere. Plant a strong rank-2 matrix plus
    # noise in layers.1.mlp.up_proj, a weaker rank-2 one in layers.2.self_attn.q_proj, and a
    # pure noise matrix 100x larger than init in layers.0.mlp.down_proj (scale must not
    # matter): its SNR stays at the level of the other noise units, far below the plants.
    model = build_tiny_llama(len(tiny_tokenizer))
    gen = torch.Generator().manual_seed(123)

    def plant(path, strength, noise):
        w = model.get_submodule(path).weight
        m, n = w.shape
        low = (torch.randn(m, 2, generator=gen) @ torch.randn(2, n, generator=gen)) / (
            m * n
        ) ** 0.25
        with torch.no_grad():
            w.copy_(strength * low + noise * torch.randn(m, n, generator=gen))

    plant("model.layers.1.mlp.up_proj", 1.0, 0.02)
    plant("model.layers.2.self_attn.q_proj", 0.3, 0.02)
    plant("model.layers.0.mlp.down_proj", 0.0, 2.0)
    scores, _ = run("snr", model, tiny_tokenizer, features, tmp_path)
    ranking = scores.ranking()
    assert ranking[:2] == ["layers.1.mlp.up_proj", "layers.2.self_attn.q_proj"]
    raw = {u.name: u.raw for u in scores.units}
    planted = {"layers.1.mlp.up_proj", "layers.2.self_attn.q_proj", "layers.0.mlp.down_proj"}
    noise_level = max(v for k, v in raw.items() if k not in planted)  # random init: ~0.2
    assert noise_level < 0.3
    assert raw["layers.0.mlp.down_proj"] < 0.3
    assert raw["layers.2.self_attn.q_proj"] > 3 * noise_level
    assert raw["layers.1.mlp.up_proj"] > raw["layers.2.self_attn.q_proj"]


def test_snr_building_blocks():
    gen = torch.Generator().manual_seed(0)
    assert mp_median(1.0) == pytest.approx(0.6528, abs=1e-3)  # Gavish & Donoho's mu_1
    noise = 0.5 * torch.randn(200, 100, generator=gen)
    s = torch.linalg.svdvals(noise)
    assert noise_sigma(s, 200, 100) == pytest.approx(0.5, rel=0.05)
    assert weight_snr(noise) < 0.05  # nothing above the edge
    low = torch.randn(200, 2, generator=gen) @ torch.randn(2, 100, generator=gen)
    # two singular values ~128 above the edge (~11.7) against 98 noise values (~6.6 each)
    assert 0.3 < weight_snr(low + noise) < weight_snr(5.0 * low + noise)
    assert weight_snr(3.0 * (low + noise)) == pytest.approx(weight_snr(low + noise), rel=1e-4)
    assert weight_snr(torch.zeros(8, 4)) == 0.0


# --- end to end through the CLI -------------------------------------------------------------


@pytest.mark.parametrize("method", ["block-influence", "lora-norm"])
def test_cli_score_then_select_with_a_peer_scorer(method, tiny_model_dir, tmp_path):
    from ila.cli import main
    from ila.core.selection import Selection

    out = tmp_path / "run"
    argv = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out), "--scorer", method]
    fast = ["--max-length", "96", "--limit", "40", "--stage1-max-steps", "5"]
    fast += ["--stage1-min-steps", "0"]
    assert main([*argv, *fast]) == 0
    scores = LayerScores.load(out)
    assert scores.method == method and len(scores.units) == 28
    assert (out / "report" / "ranking.md").is_file()
    assert main(["select", str(out), "--tune-top-fraction", "0.25"]) == 0
    assert set(Selection.load(out).selected) == set(scores.top(0.25))
