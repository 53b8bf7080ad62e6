"""Selection rules on planted rankings of a tiny config-built Llama (4 blocks x 7 modules)."""

from __future__ import annotations

import json

import pytest

from conftest import build_tiny_llama
from ila.core.layers import LayerMap, find_layers
from ila.core.scores import LayerScores, UnitScore, top_count
from ila.core.selection import SELECTION_FILE, Selection, check_scores_match, select_units
from ila.errors import IlaError

N = 28  # 4 blocks x (q, k, v, o, gate, up, down)


@pytest.fixture(scope="module")
def layer_map() -> LayerMap:
    return find_layers(build_tiny_llama(100))


def planted(layer_map: LayerMap, top: list[str]) -> LayerScores:
    """Module scores where ``top`` are the most important units, in that order.

    Every other unit gets a lower importance that falls with its model position, so the
    full ranking is ``top`` followed by the rest in model order.
    """
    order = top + [u.name for u in layer_map.units if u.name not in top]
    importance = {name: 1.0 - i / (2 * N) for i, name in enumerate(order)}
    units = [
        UnitScore(u.name, u.block, u.module_type, importance[u.name], importance[u.name] * 4)
        for u in layer_map.units
    ]
    return LayerScores("ila", "tiny-llama", "module", units, layout=layer_map.to_dict())


def block_scores(layer_map: LayerMap, values: list[float]) -> LayerScores:
    units = [UnitScore(layer_map.block_name(b), b, None, v, v) for b, v in enumerate(values)]
    return LayerScores("ila", "tiny-llama", "block", units, layout=layer_map.to_dict())


PLANTED = [
    "layers.2.mlp.down_proj",
    "layers.0.self_attn.v_proj",
    "layers.3.self_attn.q_proj",
    "layers.1.mlp.up_proj",
    "layers.2.self_attn.o_proj",
]


def in_model_order(layer_map: LayerMap, names) -> tuple[str, ...]:
    return tuple(u.name for u in layer_map.units if u.name in set(names))


@pytest.mark.parametrize(
    ("fraction", "k"),
    # k = max(1, floor(F * 28 + 0.5)): 2.8 -> 3, 3.5 -> 4 (half up), 0.28 -> 1 (minimum).
    [(0.1, 3), (0.125, 4), (0.01, 1), (0.18, 5)],
)
def test_tune_top_fraction_tunes_the_top_k(layer_map, fraction, k):
    selection = select_units(
        layer_map, scores=planted(layer_map, PLANTED), tune_top_fraction=fraction
    )
    assert selection.selected == in_model_order(layer_map, PLANTED[:k])
    assert len(selection.frozen) == N - k
    assert (selection.rule, selection.value, selection.unit_kind) == (
        "tune-top-fraction",
        fraction,
        "module",
    )
    assert selection.source["method"] == "ila"
    assert selection.source["unit_kind"] == "module"


def test_freeze_bottom_fraction_freezes_the_bottom_k(layer_map):
    scores = planted(layer_map, PLANTED)
    # k = floor(0.25 * 28 + 0.5) = 7 units frozen: the last 7 of the ranking, which are the
    # last 7 unplanted units in model order (all in block 3).
    selection = select_units(layer_map, scores=scores, freeze_bottom_fraction=0.25)
    unplanted = [u.name for u in layer_map.units if u.name not in PLANTED]
    assert selection.frozen == tuple(unplanted[-7:])
    assert len(selection.selected) == N - 7
    assert set(PLANTED) <= set(selection.selected)


def test_freeze_bottom_fraction_that_rounds_to_everything_is_refused(layer_map):
    scores = planted(layer_map, PLANTED)
    with pytest.raises(IlaError, match="nothing would be tuned"):
        select_units(layer_map, scores=scores, freeze_bottom_fraction=0.99)


def test_units_rule_keeps_model_order_and_drops_duplicates(layer_map):
    names = ["layers.3.mlp.up_proj", "layers.0.self_attn.q_proj", "layers.3.mlp.up_proj"]
    selection = select_units(layer_map, units=names)
    assert selection.selected == ("layers.0.self_attn.q_proj", "layers.3.mlp.up_proj")
    assert selection.value == ["layers.3.mlp.up_proj", "layers.0.self_attn.q_proj"]
    assert selection.source == {
        "method": None,
        "model_id": None,
        "scores_file": None,
        "unit_kind": None,
    }


def test_blocks_rule_tunes_every_module_of_the_blocks(layer_map):
    selection = select_units(layer_map, blocks=[2, 0])
    assert selection.selected == tuple(u.name for u in layer_map.units if u.block in (0, 2))
    assert len(selection.selected) == 14
    assert selection.value == [2, 0]


def test_block_scores_expand_to_their_modules(layer_map):
    scores = block_scores(layer_map, [0.1, 0.9, 0.5, 0.3])
    top = select_units(layer_map, scores=scores, tune_top_fraction=0.25)  # k = 1 block
    assert top.selected == tuple(u.name for u in layer_map.units_in_block(1))
    assert top.unit_kind == "module"
    assert top.source["unit_kind"] == "block"
    bottom = select_units(layer_map, scores=scores, freeze_bottom_fraction=0.5)  # 2 blocks
    assert bottom.frozen == tuple(u.name for u in layer_map.units if u.block in (0, 3))


@pytest.mark.parametrize("flag", ["tune_top_fraction", "freeze_bottom_fraction"])
@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, float("nan")])
def test_fractions_outside_the_open_unit_interval_are_refused(layer_map, flag, value):
    with pytest.raises(IlaError, match=rf"^{flag} must be in \(0, 1\), got {value}$") as info:
        select_units(layer_map, scores=planted(layer_map, PLANTED), **{flag: value})
    dashed = "--" + flag.replace("_", "-")  # the command line names the flag
    assert info.value.render("flag") == f"{dashed} must be in (0, 1), got {value}"


@pytest.mark.parametrize(
    "rules",
    [{}, {"tune_top_fraction": 0.1, "units": ["layers.0.mlp.up_proj"]}],
)
def test_exactly_one_rule_is_required(layer_map, rules):
    with pytest.raises(IlaError) as info:
        select_units(layer_map, scores=planted(layer_map, PLANTED), **rules)
    for keyword in ("tune_top_fraction", "freeze_bottom_fraction", "units", "blocks"):
        assert keyword in str(info.value)
        assert "--" + keyword.replace("_", "-") in info.value.render("flag")


def test_fraction_rules_need_scores(layer_map):
    with pytest.raises(IlaError, match="needs layer scores"):
        select_units(layer_map, tune_top_fraction=0.25)


def test_scores_of_a_model_with_other_blocks_are_refused(layer_map):
    other = find_layers(build_tiny_llama(100, num_layers=3))
    scores = planted(other, [])
    with pytest.raises(IlaError, match="3 blocks, but this is a llama model with 4 blocks"):
        check_scores_match(scores, layer_map)
    with pytest.raises(IlaError, match="3 blocks"):
        select_units(layer_map, scores=scores, tune_top_fraction=0.25)


def test_scores_of_other_units_are_refused(layer_map):
    narrow = find_layers(build_tiny_llama(100), module_types=["q_proj", "v_proj"])
    with pytest.raises(IlaError, match="lora_module_types") as info:
        check_scores_match(planted(narrow, []), layer_map)
    assert "layers.0.self_attn.k_proj" in str(info.value)


def test_scores_whose_units_differ_from_their_layout_are_refused(layer_map):
    scores = planted(layer_map, [])
    renamed = [UnitScore(u.name + "_x", u.block, u.module_type, 0.5, 0.5) for u in scores.units]
    bad = LayerScores("ila", "tiny", "module", renamed, layout=layer_map.to_dict())
    with pytest.raises(IlaError, match="differ from this model's"):
        check_scores_match(bad, layer_map)


def test_unknown_unit_name_suggests_a_close_one(layer_map):
    with pytest.raises(IlaError, match=r"did you mean layers\.1\.self_attn\.q_proj"):
        select_units(layer_map, units=["layers.1.self_attn.q_prj"])
    with pytest.raises(IlaError, match="blocks 1"):
        select_units(layer_map, units=["layers.1"])


@pytest.mark.parametrize("block", [4, -1])
def test_block_out_of_range_is_refused(layer_map, block):
    with pytest.raises(IlaError, match=r"blocks: block .* out of range.*0\.\.3"):
        select_units(layer_map, blocks=[block])


@pytest.mark.parametrize("rule", [{"units": []}, {"blocks": []}])
def test_empty_hand_selection_is_refused(layer_map, rule):
    with pytest.raises(IlaError, match="nothing would be tuned"):
        select_units(layer_map, **rule)


def test_json_round_trip(layer_map, tmp_path):
    selection = select_units(
        layer_map,
        scores=planted(layer_map, PLANTED),
        tune_top_fraction=0.1,
        scores_file="run/layer_scores.json",
    )
    written = selection.save(tmp_path)
    assert written == tmp_path / SELECTION_FILE
    data = json.loads(written.read_text())
    assert data["schema_version"] == 1
    assert data["summary"]["num_selected"] == 3
    assert data["source"]["scores_file"] == "run/layer_scores.json"
    assert Selection.load(tmp_path) == selection
    assert Selection.load(written) == selection
    assert Selection.from_dict(selection.to_dict()) == selection


def test_loading_refuses_other_versions_and_inconsistent_files(layer_map, tmp_path):
    data = select_units(layer_map, blocks=[1]).to_dict()
    with pytest.raises(IlaError, match="schema_version 2"):
        Selection.from_dict({**data, "schema_version": 2})
    with pytest.raises(IlaError, match="split the layout"):
        Selection.from_dict({**data, "selected": ["layers.9.mlp.up_proj"]})
    with pytest.raises(IlaError, match="malformed"):
        Selection.from_dict({k: v for k, v in data.items() if k != "rule"})


def test_selected_units_checks_the_model(layer_map):
    selection = select_units(layer_map, units=["layers.2.mlp.gate_proj"])
    assert selection.selected_units(layer_map) == [layer_map.unit("layers.2.mlp.gate_proj")]
    other = find_layers(build_tiny_llama(100, num_layers=3))
    with pytest.raises(IlaError, match="re-run 'ila select'"):
        selection.selected_units(other)


def test_parameter_matched_and_random_within_type_controls(tiny_llama):
    from ila.core.controls import (
        parameter_matched,
        random_order,
        random_within_type,
        trainable_parameters,
    )
    from ila.core.layers import find_layers

    layer_map = find_layers(tiny_llama)
    by_size = sorted(
        layer_map.units, key=lambda u: -(u.in_features + u.out_features)
    )  # big MLP modules first, as ILA tends to rank them
    reference = [u.name for u in by_size[: len(by_size) // 3]]
    budget = trainable_parameters([layer_map.unit(n) for n in reference], method="lora")
    order = random_order(layer_map, seed=0)
    matched = parameter_matched(order, layer_map, budget)
    total = trainable_parameters([layer_map.unit(n) for n in matched], method="lora")
    smallest = min(trainable_parameters([u], method="lora") for u in layer_map.units)
    assert budget - smallest < total <= budget
    # More units than the reference: the random order picks smaller modules too.
    assert len(matched) >= len(reference)
    assert random_order(layer_map, seed=0) == order != random_order(layer_map, seed=1)
    drawn = random_within_type(reference, layer_map, seed=3)
    count = lambda names: sorted(layer_map.unit(n).module_type for n in names)  # noqa: E731
    assert count(drawn) == count(reference) and set(drawn) != set(reference)
    with pytest.raises(IlaError, match="unknown fine-tuning method"):
        trainable_parameters(layer_map.units, method="dora")
    with pytest.raises(IlaError, match="no unit fits"):
        parameter_matched(order, layer_map, 1)


# -- SelectionRule: a rule as a value ------------------------------------------------------


def test_a_rule_is_the_one_given_and_applies_as_select_units(layer_map):
    from ila.core.selection import SelectionRule

    scores = planted(layer_map, PLANTED)
    rule = SelectionRule.from_kwargs(tune_top_fraction=5 / N)
    assert (rule.kind, rule.value, rule.ranked) == ("tune-top-fraction", 5 / N, True)
    assert rule.keywords() == {"tune_top_fraction": 5 / N}
    made = rule.apply(layer_map, scores=scores)
    assert (
        made.to_dict() == select_units(layer_map, scores=scores, tune_top_fraction=5 / N).to_dict()
    )
    assert sorted(made.selected) == sorted(PLANTED)
    assert not SelectionRule.from_kwargs(all_units=True).apply(layer_map).frozen
    assert not SelectionRule("blocks", [1]).ranked
    with pytest.raises(IlaError, match=r"give exactly one of .* \(got no rule\)"):
        SelectionRule.from_kwargs()
    with pytest.raises(IlaError, match="got tune_top_fraction and blocks"):
        SelectionRule.from_kwargs(tune_top_fraction=0.2, blocks=[1])


def test_a_rule_on_a_ranking_of_some_module_types_selects_among_them(layer_map):
    """A ranking of the MLP modules only (--lora-module-types) tunes a fraction of those;
    attention modules stay frozen and are not ranked."""
    from ila.core.selection import SelectionRule

    mlp = layer_map.restricted_to(("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    units = [
        UnitScore(u.name, u.block, u.module_type, 1.0 - i / 20, 1.0)
        for i, u in enumerate(mlp.units)
    ]
    scores = LayerScores("ila", "tiny-llama", "module", units, layout=mlp.to_dict())
    made = SelectionRule("tune-top-fraction", 0.25).apply(layer_map, scores=scores)
    assert list(made.selected) == [u.name for u in mlp.units[:3]]  # k = round(0.25 x 12) = 3
    assert all("mlp" in name for name in made.selected)


# -- within_module_type: a fraction of each module type, as Spectrum selects --------------

TYPES_OF_MODEL = 7  # q, k, v, o, gate, up, down: 4 units (blocks) of each
MLP_FIRST = [
    f"layers.{b}.mlp.{m}" for b in range(4) for m in ("gate_proj", "up_proj", "down_proj")
]  # the shape prior: every MLP module above every attention module


@pytest.mark.parametrize(
    ("fraction", "k_t"),
    # k_t = max(1, floor(F * 4 + 0.5)): 0.4 -> 1 (minimum), 0.5 -> 2, 0.625 -> 3 (half up).
    [(0.1, 1), (0.5, 2), (0.625, 3)],
)
def test_tune_top_within_module_type_tunes_the_top_k_of_each_type(layer_map, fraction, k_t):
    scores = planted(layer_map, MLP_FIRST)
    selection = select_units(
        layer_map, scores=scores, tune_top_fraction=fraction, within_module_type=True
    )
    # Each type's own ranking is model order here, so its top k_t are blocks 0..k_t-1.
    assert selection.selected == tuple(u.name for u in layer_map.units if u.block < k_t)
    assert selection.by_module_type() == dict.fromkeys(layer_map.module_types, (k_t, 4))
    assert selection.within_module_type and selection.rule == "tune-top-fraction"
    # The global rule on the same ranking tunes MLP modules first (the modifier matters).
    overall = select_units(layer_map, scores=scores, tune_top_fraction=fraction)
    k = top_count(N, fraction)
    assert sum("mlp" in name for name in overall.selected) == min(k, len(MLP_FIRST))
    assert overall.by_module_type() != selection.by_module_type()
    assert not overall.within_module_type


@pytest.mark.parametrize(("fraction", "k_t"), [(0.1, 1), (0.5, 2), (0.625, 3)])
def test_freeze_bottom_within_module_type_freezes_the_bottom_k_of_each_type(
    layer_map, fraction, k_t
):
    scores = planted(layer_map, MLP_FIRST)
    selection = select_units(
        layer_map, scores=scores, freeze_bottom_fraction=fraction, within_module_type=True
    )
    assert selection.frozen == tuple(u.name for u in layer_map.units if u.block >= 4 - k_t)
    assert selection.by_module_type() == dict.fromkeys(layer_map.module_types, (4 - k_t, 4))
    overall = select_units(layer_map, scores=scores, freeze_bottom_fraction=fraction)
    k = top_count(N, fraction)
    assert sum("self_attn" in name for name in overall.frozen) == min(k, N - len(MLP_FIRST))
    assert overall.by_module_type() != selection.by_module_type()


def test_ties_inside_a_type_break_as_the_global_ranking_breaks_them(layer_map):
    """q_proj ties on importance and is ordered by raw s (an ILA ranking); v_proj ties on
    both and keeps model order: the top and bottom of each type follow scores.ranking()."""
    raw_q = {0: 1.0, 1: 3.0, 2: 2.0, 3: 0.0}  # q_proj ranks blocks 1, 2, 0, 3

    def unit_score(i, unit):
        if unit.module_type == "self_attn.q_proj":
            return UnitScore(unit.name, unit.block, unit.module_type, 0.5, raw_q[unit.block])
        if unit.module_type == "self_attn.v_proj":
            return UnitScore(unit.name, unit.block, unit.module_type, 0.5, 0.0)
        return UnitScore(unit.name, unit.block, unit.module_type, 0.9 - i / 100, 0.0)

    units = [unit_score(i, u) for i, u in enumerate(layer_map.units)]
    scores = LayerScores("ila", "tiny-llama", "module", units, layout=layer_map.to_dict())
    top = select_units(layer_map, scores=scores, tune_top_fraction=0.5, within_module_type=True)
    bottom = select_units(
        layer_map, scores=scores, freeze_bottom_fraction=0.5, within_module_type=True
    )
    for kind in layer_map.module_types:
        ranked = [n for n in scores.ranking() if layer_map.unit(n).module_type == kind]
        assert [n for n in top.selected if n in ranked] == sorted(ranked[:2], key=ranked.index)
        assert set(bottom.frozen) & set(ranked) == set(ranked[2:])
    assert {n for n in top.selected if "q_proj" in n} == {
        "layers.1.self_attn.q_proj",
        "layers.2.self_attn.q_proj",
    }
    assert {n for n in top.selected if "v_proj" in n} == {
        "layers.0.self_attn.v_proj",
        "layers.1.self_attn.v_proj",
    }
    assert scores.top(0.5, within_module_type=True) == [
        n for n in scores.ranking() if n in set(top.selected)
    ]


@pytest.mark.parametrize("rule", [{"units": ["layers.0.mlp.up_proj"]}, {"blocks": [1]},
                                  {"all_units": True}])  # fmt: skip
def test_within_module_type_goes_with_the_fraction_rules_only(layer_map, rule):
    scores = planted(layer_map, PLANTED)
    with pytest.raises(IlaError, match=r"^within_module_type applies tune_top_fraction") as info:
        select_units(layer_map, scores=scores, within_module_type=True, **rule)
    assert "\n" not in str(info.value)
    assert info.value.render("flag").startswith("--within-module-type applies --tune-top-fraction")
    with pytest.raises(IlaError, match="within_module_type applies to the fraction rules"):
        Selection(**{**select_units(layer_map, **rule).__dict__, "within_module_type": True})


def test_within_module_type_refuses_block_scores(layer_map):
    scores = block_scores(layer_map, [0.1, 0.9, 0.5, 0.3])
    for rule in ({"tune_top_fraction": 0.5}, {"freeze_bottom_fraction": 0.25}):
        with pytest.raises(IlaError, match=r"^within_module_type: .* ranks blocks") as info:
            select_units(
                layer_map, scores=scores, within_module_type=True, scores_file="b.json", **rule
            )
        assert "\n" not in str(info.value) and "b.json" in str(info.value)
        assert "--stage2-unit block" in info.value.render("flag")
    with pytest.raises(IlaError, match="no module type"):
        scores.top(0.5, within_module_type=True)


def test_freeze_bottom_within_module_type_may_freeze_a_whole_type_but_not_everything(layer_map):
    """Freezing the bottom 0.75 freezes 3 of the 4 units of each type; on a one-block model
    each type has one unit, so every type is frozen whole: nothing is tuned, refused."""
    scores = planted(layer_map, MLP_FIRST)
    kept = select_units(
        layer_map, scores=scores, freeze_bottom_fraction=0.75, within_module_type=True
    )
    assert kept.selected == tuple(u.name for u in layer_map.units if u.block == 0)
    one_block = find_layers(build_tiny_llama(100, num_layers=1))
    with pytest.raises(IlaError, match="nothing would be tuned"):
        select_units(
            one_block,
            scores=planted(one_block, []),
            freeze_bottom_fraction=0.1,
            within_module_type=True,
        )


def test_a_selection_within_module_type_round_trips_and_old_files_read_false(layer_map, tmp_path):
    selection = select_units(
        layer_map,
        scores=planted(layer_map, MLP_FIRST),
        tune_top_fraction=0.25,
        within_module_type=True,
    )
    data = json.loads(selection.save(tmp_path).read_text())
    assert data["within_module_type"] is True and data["schema_version"] == 1
    assert data["summary"]["by_module_type"]["self_attn.q_proj"] == {"selected": 1, "units": 4}
    assert Selection.load(tmp_path) == selection
    old = {k: v for k, v in data.items() if k != "within_module_type"}  # written before it
    assert Selection.from_dict(old).within_module_type is False


def test_a_rule_within_module_type_on_a_ranking_of_some_types(layer_map):
    from ila.core.selection import SelectionRule

    mlp = layer_map.restricted_to(("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    units = [  # gate_proj ranks above everything, so the global top 3 are all gate_proj
        UnitScore(u.name, u.block, u.module_type, (2.0 if "gate" in u.name else 1.0) - i / 20, 1)
        for i, u in enumerate(mlp.units)
    ]
    scores = LayerScores("ila", "tiny-llama", "module", units, layout=mlp.to_dict())
    rule = SelectionRule.from_kwargs(tune_top_fraction=0.25, within_module_type=True)
    assert rule.keywords() == {"tune_top_fraction": 0.25, "within_module_type": True}
    made = rule.apply(layer_map, scores=scores)
    assert made.selected == ("layers.0.mlp.gate_proj", "layers.0.mlp.up_proj",
                             "layers.0.mlp.down_proj")  # fmt: skip
    assert made.by_module_type() == dict.fromkeys(mlp.module_types, (1, 4))
    overall = SelectionRule("tune-top-fraction", 0.25).apply(layer_map, scores=scores)
    assert all("gate_proj" in name for name in overall.selected)
