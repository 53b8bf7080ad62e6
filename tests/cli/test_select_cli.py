"""`ila select` and `ila export` end to end: no model needed, the layout travels in the files."""

import json

import pytest
from peft import LoraConfig, get_peft_model

from conftest import fails
from ila.cli import main
from ila.core.layers import find_layers
from ila.core.scores import LayerScores, UnitScore
from ila.core.selection import Selection


@pytest.fixture()
def scores_dir(tmp_path, tiny_llama):
    layer_map = find_layers(tiny_llama)

    # Planted importances: the MLP of blocks 2 and 3 first, then everything else.
    def importance(i, unit):
        return 0.9 if unit.block >= 2 and "mlp" in unit.module_type else 0.1 + 0.01 * i

    units = [
        UnitScore(u.name, u.block, u.module_type, importance(i, u), 0.0)
        for i, u in enumerate(layer_map.units)
    ]
    scores = LayerScores("ila", "tiny", "module", units, layout=layer_map.to_dict())
    scores.save(tmp_path / "layer_scores.json")
    return tmp_path


def test_select_then_export_peft_adapts_exactly_the_selection(scores_dir, tiny_llama, capsys):
    assert main(["select", str(scores_dir), "--tune-top-fraction", "0.2"]) == 0  # k = 6 of 28
    assert "6 of 28 units to tune" in capsys.readouterr().out
    selection = Selection.load(scores_dir)
    assert set(selection.selected) == {
        f"layers.{b}.mlp.{m}" for b in (2, 3) for m in ("gate_proj", "up_proj", "down_proj")
    }
    out = scores_dir / "lora.json"
    assert main(["export", str(scores_dir), "--format", "peft", "--output", str(out)]) == 0
    model = get_peft_model(tiny_llama, LoraConfig(**json.loads(out.read_text())))
    adapted = {
        name.removeprefix("base_model.model.")
        for name, m in model.named_modules()
        if hasattr(m, "lora_A")
    }
    assert adapted == {f"model.{name}" for name in selection.selected}


def test_select_refuses_to_overwrite_and_bad_fractions(scores_dir, capsys):
    assert main(["select", str(scores_dir), "--blocks", "1,3"]) == 0
    assert main(["select", str(scores_dir), "--blocks", "1"]) == 2
    assert "selection.json exists; pass --overwrite" in capsys.readouterr().err
    assert main(["select", str(scores_dir), "--blocks", "1", "--overwrite"]) == 0
    assert main(["select", str(scores_dir), "--overwrite", "--freeze-bottom-fraction", "1"]) == 2
    assert "--freeze-bottom-fraction must be in (0, 1)" in capsys.readouterr().err


def test_export_formats_print(scores_dir, capsys):
    assert main(["select", str(scores_dir), "--units", "layers.0.self_attn.q_proj"]) == 0
    capsys.readouterr()
    assert main(["export", str(scores_dir), "--format", "list"]) == 0
    assert capsys.readouterr().out.split() == ["model.layers.0.self_attn.q_proj"]
    for fmt in ("axolotl", "llama-factory", "swift", "json"):
        assert main(["export", str(scores_dir), "--format", fmt]) == 0
        assert "q_proj" in capsys.readouterr().out


def test_select_within_module_type_tunes_the_top_of_each_type(scores_dir, capsys):
    argv = ["select", str(scores_dir), "--tune-top-fraction", "0.2", "--within-module-type"]
    assert main(argv) == 0  # k_t = round(0.2 x 4) = 1 of each of the 7 types
    printed = capsys.readouterr().out
    assert "7 of 28 units to tune (tune-top-fraction 0.2 within module type: q_proj 1/4, " in (
        printed
    )
    assert "gate_proj 1/4, up_proj 1/4, down_proj 1/4)" in printed
    selection = Selection.load(scores_dir)
    assert selection.within_module_type
    # The MLP ties at 0.9 break by model order (block 2); attention ranks block 3 first.
    assert set(selection.selected) == {
        *(f"layers.3.self_attn.{m}" for m in ("q_proj", "k_proj", "v_proj", "o_proj")),
        *(f"layers.2.mlp.{m}" for m in ("gate_proj", "up_proj", "down_proj")),
    }


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        (["--blocks", "1"], ["--within-module-type applies --tune-top-fraction", "--blocks"]),
        (["--units", "layers.0.mlp.up_proj"], ["--within-module-type", "not go with --units"]),
        (["--tune-top-fraction", "0.5"], ["--within-module-type:", "--stage2-unit block"]),
    ],
)
def test_select_within_module_type_refusals_write_nothing(
    rule, words, scores_dir, tiny_llama, tmp_path, capsys
):
    layer_map = find_layers(tiny_llama)
    blocks = [UnitScore(layer_map.block_name(b), b, None, 0.1 * b, 0.0) for b in range(4)]
    block_dir = tmp_path / "blocks"
    LayerScores("ila", "tiny", "block", blocks, layout=layer_map.to_dict()).save(
        block_dir / "layer_scores.json"
    )
    source = block_dir if "--stage2-unit block" in words else scores_dir
    fails(["select", str(source), *rule, "--within-module-type"], capsys, *words)
    assert not (source / "selection.json").exists()
