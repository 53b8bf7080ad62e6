"""Each export names exactly the selected modules of a real (tiny) model, as its trainer reads it.

The expected names come from the model (``named_modules`` / ``named_parameters``), never
from the regexes under test. The Llama has 12 blocks so that a pattern for block 1 that
leaked into blocks 10 and 11 would show.
"""

from __future__ import annotations

import json
import re

import pytest
import transformers as tf
import yaml
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from conftest import build_tiny_llama
from ila.analysis.exports import EXPORT_FORMATS, export_selection, module_regex, parameter_regex
from ila.core.layers import find_layers
from ila.core.scores import LayerScores, UnitScore
from ila.core.selection import Selection, select_units
from ila.errors import IlaError

IRREGULAR = [  # blocks 0 and 11 tune the same modules, block 1 others
    "layers.0.self_attn.q_proj",
    "layers.0.mlp.down_proj",
    "layers.1.self_attn.v_proj",
    "layers.1.mlp.down_proj",
    "layers.11.self_attn.q_proj",
    "layers.11.mlp.down_proj",
]
LAST_TWO_ATTENTION = [f"layers.{b}.self_attn.{m}_proj" for b in (10, 11) for m in "qkvo"]


def llama():
    return build_tiny_llama(100, num_layers=12)


def gpt2():
    config = tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return tf.GPT2LMHeadModel(config)


def planted_top(layer_map, top):
    rest = [u.name for u in layer_map.units if u.name not in top]
    value = {name: 1.0 - i / 1000 for i, name in enumerate(top + rest)}
    units = [UnitScore(u.name, u.block, u.module_type, value[u.name], 0.0) for u in layer_map.units]
    return LayerScores("ila", "tiny", "module", units, layout=layer_map.to_dict())


SELECTIONS = {
    "irregular": lambda lm: select_units(lm, units=IRREGULAR),
    "block-1": lambda lm: select_units(lm, blocks=[1]),
    "last-blocks": lambda lm: select_units(lm, blocks=[10, 11]),
    "last-attention": lambda lm: select_units(lm, units=LAST_TWO_ATTENTION),
    "top-fraction": lambda lm: select_units(
        lm,
        scores=planted_top(lm, IRREGULAR[::-1]),
        tune_top_fraction=0.07,  # k = 6
    ),
    "top-fraction-of-each-type": lambda lm: select_units(
        lm,
        scores=planted_top(lm, IRREGULAR[::-1]),
        tune_top_fraction=0.1,  # k_t = 1 of each type's 12
        within_module_type=True,
    ),
}


@pytest.fixture(params=sorted(SELECTIONS))
def case(request):
    """(model, layer_map, selection, expected module paths, expected parameter names)."""
    model = llama()
    layer_map = find_layers(model)
    selection = SELECTIONS[request.param](layer_map)
    return (model, layer_map, selection, *_expected(model, layer_map, selection))


def _expected(model, layer_map, selection):
    paths = {layer_map.unit(n).module_path for n in selection.selected}
    params = {
        f"{path}.{name}"
        for path in paths
        for name, _ in model.get_submodule(path).named_parameters()
    }
    return paths, params


def _modules(model) -> list[str]:
    return [name for name, _ in model.named_modules()]


def _params(model) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _peft_suffix_match(entries, key) -> bool:
    # peft's list semantics for target_modules: equal, or ends with "." + entry.
    return any(key == e or key.endswith(f".{e}") for e in entries)


def _uncomment(text: str, marker: str) -> dict:
    """The YAML commented out (as '#   key: value') after the comment line holding marker."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    block = []
    for line in lines[start + 1 :]:
        if line.startswith("#   "):
            block.append(line[4:])
        elif block or not line.startswith("#"):
            break
    return yaml.safe_load("\n".join(block))


def test_regexes_match_exactly_the_selected_modules_and_parameters(case):
    model, layer_map, selection, paths, params = case
    p_rx, m_rx = parameter_regex(selection, layer_map), module_regex(selection, layer_map)
    assert {n for n in _params(model) if re.fullmatch(p_rx, n)} == params
    assert {n for n in _params(model) if re.search(p_rx, n)} == params  # anchored
    assert {n for n in _modules(model) if re.fullmatch(m_rx, n)} == paths


def test_peft_export_adapts_exactly_the_selected_modules(case):
    model, layer_map, selection, paths, _ = case
    text = export_selection(selection, layer_map, "peft", lora_rank=4, lora_alpha=8.0)
    config = LoraConfig(**json.loads(text))
    assert (config.r, config.lora_alpha, config.task_type) == (4, 8.0, "CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    adapted = {
        name
        for name, module in peft_model.get_base_model().named_modules()
        if isinstance(module, LoraLayer)
    }
    assert adapted == paths


def test_axolotl_export(case):
    model, layer_map, selection, paths, params = case
    text = export_selection(selection, layer_map, "axolotl")
    assert ("--within-module-type" in text.splitlines()[0]) == selection.within_module_type
    config = yaml.safe_load(text)
    assert "adapter" not in config  # LoRA is opt-in: see the comment in the file
    # axolotl.utils.freeze.LayerNamePattern: '.' not followed by '+' becomes a literal dot,
    # then pattern.match(name) over model.named_parameters().
    patterns = [re.compile(re.sub(r"\.(?!\+)", "\\\\.", p)) for p in config["unfrozen_parameters"]]
    unfrozen = {n for n in _params(model) if any(p.match(n) for p in patterns)}
    assert unfrozen == params
    targets = config["lora_target_modules"]
    assert {n for n in _modules(model) if _peft_suffix_match(targets, n)} == paths
    assert (config["lora_r"], config["lora_alpha"], config["lora_dropout"]) == (8, 16, 0.05)


def test_llama_factory_lora_export(case):
    model, layer_map, selection, paths, _ = case
    config = yaml.safe_load(export_selection(selection, layer_map, "llama-factory"))
    assert config["finetuning_type"] == "lora"
    # LLaMA-Factory splits lora_target at commas and hands the list to peft.
    targets = [t.strip() for t in config["lora_target"].split(",")]
    assert {n for n in _modules(model) if _peft_suffix_match(targets, n)} == paths


def _llama_factory_freeze_trainable(model, num_layers: int, freeze: dict) -> set[str]:
    # llamafactory.model.adapter._setup_freeze_tuning without LLaMA Pro.
    n = freeze["freeze_trainable_layers"]
    ids = range(max(0, num_layers - n), num_layers) if n > 0 else range(min(-n, num_layers))
    modules = freeze["freeze_trainable_modules"].split(",")
    keys = [f".{i}.{m if m != 'all' else ''}" for m in modules for i in ids]
    return {name for name in _params(model) if any(k in name for k in keys)}


@pytest.mark.parametrize(
    ("rule", "layers", "modules"),
    [
        ({"blocks": [10, 11]}, 2, "self_attn,mlp"),
        ({"blocks": [0]}, -1, "self_attn,mlp"),
        ({"units": LAST_TWO_ATTENTION}, 2, "self_attn"),
    ],
)
def test_llama_factory_freeze_mode_is_offered_when_exact(rule, layers, modules):
    model = llama()
    layer_map = find_layers(model)
    selection = select_units(layer_map, **rule)
    _, params = _expected(model, layer_map, selection)
    text = export_selection(selection, layer_map, "llama-factory")
    freeze = _uncomment(text, "Freeze (partial-parameter) mode")
    assert freeze == {
        "finetuning_type": "freeze",
        "freeze_trainable_layers": layers,
        "freeze_trainable_modules": modules,
    }
    assert _llama_factory_freeze_trainable(model, 12, freeze) == params


@pytest.mark.parametrize(
    "rule",
    [
        {"units": IRREGULAR},  # blocks 0, 1, 11: neither first nor last n
        {"units": ["layers.11.self_attn.q_proj"]},  # part of self_attn
        {"units": ["layers.10.mlp.up_proj", "layers.10.mlp.down_proj", "layers.10.mlp.gate_proj",
                   "layers.11.self_attn.q_proj", "layers.11.self_attn.k_proj",
                   "layers.11.self_attn.v_proj", "layers.11.self_attn.o_proj"]},
    ],
)  # fmt: skip
def test_llama_factory_freeze_mode_is_declined_when_inexact(rule):
    layer_map = find_layers(llama())
    text = export_selection(select_units(layer_map, **rule), layer_map, "llama-factory")
    assert "mode cannot express this selection" in text
    assert "freeze_trainable_layers" in text  # named in the explanation only
    assert "freeze_trainable_layers" not in yaml.safe_load(text)


def test_swift_export(case):
    model, layer_map, selection, paths, params = case
    text = export_selection(selection, layer_map, "swift", lora_rank=16, lora_alpha=32)
    config = yaml.safe_load(text)
    assert (config["train_type"], config["lora_rank"], config["lora_alpha"]) == ("lora", 16, 32)
    # ms-swift passes target_regex to peft as a string target_modules: re.fullmatch.
    assert {n for n in _modules(model) if re.fullmatch(config["target_regex"], n)} == paths
    full = _uncomment(text, "Full-parameter training")
    assert (full["train_type"], full["freeze_parameters_ratio"]) == ("full", 1)
    # ms-swift's activate_parameters: pattern.search(name) over model.named_parameters().
    rx = re.compile(full["trainable_parameters_regex"])
    assert {n for n in _params(model) if rx.search(n)} == params


def test_list_and_json_exports(case):
    _, layer_map, selection, paths, _ = case
    listed = export_selection(selection, layer_map, "list").splitlines()
    assert listed == [layer_map.unit(n).module_path for n in selection.selected]
    assert set(listed) == paths
    data = json.loads(export_selection(selection, layer_map, "json"))
    assert data["selected"] == list(selection.selected)
    assert data["module_paths"] == listed
    assert data["parameter_regex"] == parameter_regex(selection, layer_map)


@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False")  # peft fixes it for Conv1D
def test_gpt2_conv1d_names():
    model = gpt2()
    layer_map = find_layers(model)
    selection = select_units(layer_map, units=["h.0.attn.c_proj", "h.1.mlp.c_fc"])
    paths, params = _expected(model, layer_map, selection)
    assert params == {
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.attn.c_proj.bias",
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_fc.bias",
    }
    rx = parameter_regex(selection, layer_map)
    assert {n for n in _params(model) if re.fullmatch(rx, n)} == params
    config = LoraConfig(**json.loads(export_selection(selection, layer_map, "peft")))
    peft_model = get_peft_model(model, config)
    adapted = {
        n for n, m in peft_model.get_base_model().named_modules() if isinstance(m, LoraLayer)
    }
    assert adapted == paths


def test_export_refuses_unknown_formats_and_other_models():
    layer_map = find_layers(llama())
    selection = select_units(layer_map, blocks=[3])
    with pytest.raises(IlaError) as info:
        export_selection(selection, layer_map, "deepspeed")
    assert all(fmt in str(info.value) for fmt in EXPORT_FORMATS)
    other = find_layers(build_tiny_llama(100, num_layers=4))
    with pytest.raises(IlaError, match="12 blocks"):
        export_selection(selection, other, "list")


def test_lora_settings_are_checked():
    layer_map = find_layers(llama())
    selection = select_units(layer_map, blocks=[3])
    with pytest.raises(IlaError, match="lora_alpha: axolotl takes a whole number"):
        export_selection(selection, layer_map, "axolotl", lora_alpha=12.5)
    assert (
        json.loads(export_selection(selection, layer_map, "peft", lora_alpha=12.5))["lora_alpha"]
        == 12.5
    )
    with pytest.raises(IlaError, match="lora_rank"):
        export_selection(selection, layer_map, "peft", lora_rank=0)
    with pytest.raises(IlaError, match="lora_dropout"):
        export_selection(selection, layer_map, "peft", lora_dropout=1.0)


def test_exports_of_a_loaded_selection_are_identical(tmp_path):
    layer_map = find_layers(llama())
    selection = select_units(layer_map, units=IRREGULAR)
    loaded = Selection.load(selection.save(tmp_path))
    for fmt in EXPORT_FORMATS:
        assert export_selection(loaded, layer_map, fmt) == export_selection(
            selection, layer_map, fmt
        )
