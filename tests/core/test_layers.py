"""Behavioural tests of ila.core.layers on tiny config-built models of several families."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from ila.core.layers import LayerMap, find_layers, peft_target_modules
from ila.errors import IlaError

H, FFN, VOCAB = 32, 64, 100
# Llama-style attention with 4 heads of 8 and 2 KV heads: k/v project 32 -> 16.
LLAMA_TYPES = [
    ("self_attn.q_proj", H, H),
    ("self_attn.k_proj", H, 16),
    ("self_attn.v_proj", H, 16),
    ("self_attn.o_proj", H, H),
    ("mlp.gate_proj", H, FFN),
    ("mlp.up_proj", H, FFN),
    ("mlp.down_proj", FFN, H),
]
LLAMA_KW = dict(
    vocab_size=VOCAB,
    hidden_size=H,
    intermediate_size=FFN,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


def _llama_like(config_cls, model_cls, num_layers: int = 2):
    return lambda: model_cls(config_cls(num_hidden_layers=num_layers, **LLAMA_KW))


def _gpt2():
    return tf.GPT2LMHeadModel(
        tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=H,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    )


def _plain_kw() -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=H,
        intermediate_size=FFN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )


# family -> (builder, model_type, blocks_path, num_blocks, [(module_type, in, out), ...])
FAMILIES = {
    "llama": (
        _llama_like(tf.LlamaConfig, tf.LlamaForCausalLM, 3),
        "llama",
        "model.layers",
        3,
        LLAMA_TYPES,
    ),
    "mistral": (
        _llama_like(tf.MistralConfig, tf.MistralForCausalLM),
        "mistral",
        "model.layers",
        2,
        LLAMA_TYPES,
    ),
    "qwen2": (
        _llama_like(tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen2",
        "model.layers",
        2,
        LLAMA_TYPES,
    ),
    "gemma": (
        _llama_like(tf.GemmaConfig, tf.GemmaForCausalLM),
        "gemma",
        "model.layers",
        2,
        LLAMA_TYPES,
    ),
    "gemma3_text": (
        _llama_like(tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
        "gemma3_text",
        "model.layers",
        2,
        LLAMA_TYPES,
    ),
    "gpt2": (
        _gpt2,
        "gpt2",
        "transformer.h",
        2,
        [
            ("attn.c_attn", H, 3 * H),
            ("attn.c_proj", H, H),
            ("mlp.c_fc", H, 4 * H),
            ("mlp.c_proj", 4 * H, H),
        ],
    ),
    "gpt_neox": (
        lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**_plain_kw())),
        "gpt_neox",
        "gpt_neox.layers",
        2,
        [
            ("attention.query_key_value", H, 3 * H),
            ("attention.dense", H, H),
            ("mlp.dense_h_to_4h", H, FFN),
            ("mlp.dense_4h_to_h", FFN, H),
        ],
    ),
    "phi": (
        lambda: tf.PhiForCausalLM(tf.PhiConfig(**_plain_kw())),
        "phi",
        "model.layers",
        2,
        [
            ("self_attn.q_proj", H, H),
            ("self_attn.k_proj", H, H),
            ("self_attn.v_proj", H, H),
            ("self_attn.dense", H, H),
            ("mlp.fc1", H, FFN),
            ("mlp.fc2", FFN, H),
        ],
    ),
    "opt": (
        lambda: tf.OPTForCausalLM(
            tf.OPTConfig(
                vocab_size=VOCAB,
                hidden_size=H,
                ffn_dim=FFN,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=64,
                word_embed_proj_dim=H,
            )
        ),
        "opt",
        "model.decoder.layers",
        2,
        [
            ("self_attn.k_proj", H, H),
            ("self_attn.v_proj", H, H),
            ("self_attn.q_proj", H, H),
            ("self_attn.out_proj", H, H),
            ("fc1", H, FFN),
            ("fc2", FFN, H),
        ],
    ),
}


def _build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family][0]()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_layout(family):
    _, model_type, blocks_path, num_blocks, types = FAMILIES[family]
    model = _build(family)
    lm = find_layers(model)

    assert (lm.model_type, lm.blocks_path, lm.num_blocks) == (model_type, blocks_path, num_blocks)
    assert lm.module_types == tuple(t for t, _, _ in types)
    prefix = blocks_path.rsplit(".", 1)[-1]
    parent = blocks_path[: -len(prefix)]
    expected = [(f"{prefix}.{b}.{t}", b, t, i, o) for b in range(num_blocks) for t, i, o in types]
    got = [(u.name, u.block, u.module_type, u.in_features, u.out_features) for u in lm.units]
    assert got == expected
    modules = dict(model.named_modules())
    for u in lm.units:
        assert u.module_path == parent + u.name
        weight = modules[u.module_path].weight  # the path really exists; lm_head is not a unit
        assert u.num_params == weight.numel() == u.in_features * u.out_features


@pytest.mark.parametrize(
    ("family", "targets", "fan_in_fan_out"),
    [("llama", ["q_proj", "v_proj"], False), ("gpt2", ["c_attn", "c_proj"], True)],
)
def test_peft_model_gives_same_units_as_base(family, targets, fan_in_fan_out):
    model = _build(family)
    plain = find_layers(model)
    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=targets, fan_in_fan_out=fan_in_fan_out)
    )

    wrapped = find_layers(peft_model)
    assert wrapped == plain
    assert find_layers(peft_model.base_model) == plain  # the LoraModel layer unwraps too
    modules = dict(peft_model.get_base_model().named_modules())
    adapted = [u for u in wrapped.units if isinstance(modules[u.module_path], LoraLayer)]
    assert adapted  # the LoRA layer itself is the unit, never base_layer/lora_A/lora_B
    assert not any(part in u.name for u in wrapped.units for part in ("base_layer", "lora_"))


@pytest.mark.parametrize(
    ("family", "names"),
    [
        (
            "llama",
            ["layers.0.self_attn.q_proj", "layers.1.mlp.down_proj", "layers.2.self_attn.o_proj"],
        ),
        # attn.c_proj and mlp.c_proj share a last component: full paths keep them apart.
        ("gpt2", ["h.0.attn.c_proj", "h.1.mlp.c_fc", "h.1.mlp.c_proj"]),
    ],
)
def test_peft_target_modules_adapt_exactly_the_units(family, names):
    model = _build(family)
    lm = find_layers(model)
    subset = [lm.unit(n) for n in names]
    targets = peft_target_modules(subset)
    assert targets == [u.module_path for u in subset]

    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=targets, fan_in_fan_out=family == "gpt2")
    )
    base = peft_model.get_base_model()
    lora = {n for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    assert lora == set(targets)


def test_peft_target_modules_of_a_whole_block():
    model = _build("llama")
    lm = find_layers(model)
    targets = peft_target_modules(lm.units_in_block(1))
    base = get_peft_model(model, LoraConfig(r=2, target_modules=targets)).get_base_model()
    lora = {n for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    assert lora == {f"model.layers.1.{t}" for t, _, _ in LLAMA_TYPES}
    with pytest.raises(IlaError, match="no units"):
        peft_target_modules([])


def test_explicit_blocks_path():
    model = _build("opt")
    assert find_layers(model, blocks_path="model.decoder.layers") == find_layers(model)

    with pytest.raises(IlaError, match=r"'model\.layers' does not exist.*model\.decoder\.layers"):
        find_layers(model, blocks_path="model.layers")
    with pytest.raises(IlaError, match=r"'model\.decoder\.final_layer_norm' is a LayerNorm"):
        find_layers(model, blocks_path="model.decoder.final_layer_norm")


class _Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, width)


class _Toy(torch.nn.Module):
    """Three ModuleLists; only ``blocks`` is same-class, adaptable and biggest of those."""

    def __init__(self) -> None:
        super().__init__()
        self.small = torch.nn.ModuleList([_Block(2), _Block(2)])
        self.blocks = torch.nn.ModuleList([_Block(8), _Block(8), _Block(8)])
        self.mixed = torch.nn.ModuleList([_Block(16), torch.nn.Sequential(torch.nn.Linear(16, 16))])
        self.heads = torch.nn.ModuleList([torch.nn.Linear(32, 32)])  # no linear *inside* a child


def test_discovery_picks_biggest_same_class_list():
    lm = find_layers(_Toy())
    assert (lm.model_type, lm.blocks_path, lm.num_blocks) == ("unknown", "blocks", 3)
    assert [u.name for u in lm.units] == ["blocks.0.proj", "blocks.1.proj", "blocks.2.proj"]
    assert [u.module_path for u in lm.units] == [u.name for u in lm.units]


@pytest.mark.parametrize(
    "model",
    [
        torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)),
        torch.nn.Module(),
        torch.nn.ModuleList([torch.nn.Linear(4, 4)]),
    ],
    ids=["sequential", "empty", "list-of-linears"],
)
def test_no_blocks_errors_with_hint(model):
    with pytest.raises(IlaError, match=r"could not find the transformer blocks of .*blocks_path"):
        find_layers(model)


def test_blocks_without_linears_error():
    with pytest.raises(IlaError, match=r"'heads' contain no nn\.Linear"):
        find_layers(_Toy(), blocks_path="heads")


def test_module_types_filter():
    model = _build("llama")
    lm = find_layers(model, module_types=["q_proj", "mlp.down_proj"])
    assert lm.module_types == ("self_attn.q_proj", "mlp.down_proj")
    assert [u.name for u in lm.units_in_block(2)] == [
        "layers.2.self_attn.q_proj",
        "layers.2.mlp.down_proj",
    ]
    assert len(lm.units) == 2 * lm.num_blocks == 6

    with pytest.raises(
        IlaError, match=r"'qproj' match nothing; available module types: self_attn\.q_proj"
    ):
        find_layers(model, module_types=["q_proj", "qproj"])
    with pytest.raises(IlaError, match="module_types is empty"):
        find_layers(model, module_types=[])


def test_unknown_unit_suggests_close_name():
    lm = find_layers(_build("llama"))
    assert lm.unit("layers.1.mlp.up_proj").module_path == "model.layers.1.mlp.up_proj"
    with pytest.raises(IlaError, match=r"did you mean layers\.0\.self_attn\.q_proj"):
        lm.unit("layers.0.self_attn.q_prj")


def test_units_ordered_and_blocks_addressable():
    first, second = find_layers(_build("llama")), find_layers(_build("llama"))
    assert first == second
    assert [u.block for u in first.units] == sorted(u.block for u in first.units)
    assert [u.module_type for u in first.units_in_block(0)] == [t for t, _, _ in LLAMA_TYPES]
    assert first.block_name(2) == "layers.2"
    assert find_layers(_build("gpt2")).block_name(0) == "h.0"
    with pytest.raises(IlaError, match=r"block 3 is out of range"):
        first.units_in_block(3)


def test_to_dict_is_json_and_round_trips():
    lm = find_layers(_build("gpt2"))
    data = json.loads(json.dumps(lm.to_dict()))
    assert data["blocks_path"] == "transformer.h"
    assert data["units"][0] == {
        "name": "h.0.attn.c_attn",
        "module_path": "transformer.h.0.attn.c_attn",
        "block": 0,
        "module_type": "attn.c_attn",
        "in_features": H,
        "out_features": 3 * H,
    }
    assert LayerMap.from_dict(data) == lm
