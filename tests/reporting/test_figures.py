"""The figures people read: colour scales follow the data, selections are marked, a
constant ranking says "all equal", and labels do not overlap.

Scores are built in memory with known importances (no model); every figure is a real
matplotlib figure, read back through its axes, images, patches and texts.
"""

import math
import random
import warnings

import numpy as np
import pytest

from ila.analysis.compare import compare_scores
from ila.core.scores import LayerScores, UnitScore
from ila.core.selection import Selection
from ila.errors import IlaError
from ila.reporting.compare_units import units_figure
from ila.reporting.comparison import pairwise_figure
from ila.reporting.figures import number_format, pyplot
from ila.reporting.marks import marks_from_selection, top_marks
from ila.reporting.plots import block_figure, heatmap_figure, plot_unit_heatmap
from ila.reporting.run_plots import gate_figure

TYPES = [f"self_attn.{t}" for t in ("q_proj", "k_proj", "v_proj", "o_proj")]
TYPES += [f"mlp.{t}" for t in ("gate_proj", "up_proj", "down_proj")]


def make_scores(values, *, blocks, model_id="tiny"):
    """Module scores of ``blocks`` blocks x 7 module types with these importances."""
    units, layout = [], []
    for i, value in enumerate(values):
        block, module_type = divmod(i, len(TYPES))[0], TYPES[i % len(TYPES)]
        name = f"layers.{block}.{module_type}"
        units.append(UnitScore(name, block, module_type, float(value), float(value)))
        layout.append({"name": name, "block": block, "in_features": 8, "out_features": 8})
    assert len(units) == blocks * len(TYPES)
    meta = {"model_type": "llama", "blocks_path": "model.layers", "num_blocks": blocks}
    return LayerScores("ila", model_id, "module", units, {**meta, "units": layout})


def narrow_scores(blocks, seed=0, low=0.80, high=0.92):
    """Importances spread over [low, high] like a short demo stage 2 leaves them."""
    rng = random.Random(seed)
    values = [low + (high - low) * rng.random() for _ in range(blocks * len(TYPES))]
    values[0], values[-1] = low, high
    return make_scores(values, blocks=blocks)


def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [
        t.get_text() for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)
    ]


def close(fig):
    pyplot().close(fig)


@pytest.mark.parametrize(("low", "high"), [(0.80, 0.92), (0.13, 0.99), (0.93078761, 0.93078842)])
def test_heatmap_colours_span_the_data_and_each_cell_shows_its_rank(low, high):
    scores = narrow_scores(4, low=low, high=high)
    fig = heatmap_figure(scores)
    heat, bar = fig.axes
    image = heat.images[0]
    assert image.norm.vmin == pytest.approx(low) and image.norm.vmax == pytest.approx(high)
    # The colourbar names the scale and prints its two ends distinctly.
    assert "this run's range" in bar.get_ylabel()
    ticks = [t.get_text() for t in bar.get_yticklabels()]
    spec = number_format(low, high)
    assert ticks[0] == f"{low:{spec}}" and ticks[-1] == f"{high:{spec}}"
    assert len(set(ticks)) == len(ticks)
    # Lowest and highest unit take the two ends of the colour map.
    cmap = image.cmap
    assert np.allclose(image.to_rgba(np.array([low, high])), [cmap(0.0), cmap(1.0)])
    rank = {name: i + 1 for i, name in enumerate(scores.ranking())}
    cells = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in heat.texts
    }
    for u in scores.units:
        assert cells[(u.block, TYPES.index(u.module_type))] == str(rank[u.name])
    close(fig)


def test_marks_outline_exactly_the_top_set_and_the_legend_says_which():
    scores = narrow_scores(4, seed=3)
    marks = top_marks(scores, 0.25)
    assert marks.names == frozenset(scores.top(0.25)) and len(marks.names) == 7
    fig = heatmap_figure(scores, marks)
    heat = fig.axes[0]
    marked = {p.get_gid().split(":", 2)[2] for p in heat.patches if p.get_gid()}
    assert marked == set(marks.names)
    for patch in heat.patches:
        i, j = round(patch.get_y() + 0.5), round(patch.get_x() + 0.5)
        assert f"layers.{i}.{TYPES[j]}" in marks.names
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["top 25% (7 of 28 units)"]
    close(fig)


def selection_of(scores, rule, value, chosen):
    """A real Selection (as `ila select` writes it) tuning ``chosen`` module units."""
    names = scores.names
    return Selection(
        rule=rule,
        value=value,
        unit_kind="module",
        selected=tuple(n for n in names if n in chosen),
        frozen=tuple(n for n in names if n not in chosen),
        layout=scores.layout,
        source={},
    ).to_dict()


def test_a_frozen_selection_is_hatched_in_the_heatmap_and_crossed_in_the_block_plot():
    scores = narrow_scores(3, seed=5)
    bottom = set(scores.bottom(0.25))
    tuned = set(scores.names) - bottom
    marks = marks_from_selection(
        selection_of(scores, "freeze-bottom-fraction", 0.25, tuned), scores
    )
    assert marks.kind == "frozen" and marks.names == bottom
    assert marks.label == f"frozen: bottom 25% ({len(bottom)} of 21 units)"
    per_type = set(scores.bottom(0.25, within_module_type=True))
    within = selection_of(scores, "freeze-bottom-fraction", 0.25, set(scores.names) - per_type)
    marked = marks_from_selection({**within, "within_module_type": True}, scores)
    assert marked.names == per_type  # 1 of each type's 3 units: 7 of 21
    assert marked.label == "frozen: bottom 25% of each module type (7 of 21 units)"
    fig = heatmap_figure(scores, marks)
    patches = fig.axes[0].patches
    assert len(patches) == len(bottom) and all(p.get_hatch() for p in patches)
    close(fig)
    fig = block_figure(scores, marks)
    ax = fig.axes[0]
    crosses = [c for c in ax.collections if c.get_label() == marks.label]
    assert len(crosses) == 1
    importance = {u.name: u.importance for u in scores.units}
    assert sorted(crosses[0].get_offsets()[:, 1]) == pytest.approx(
        sorted(importance[n] for n in bottom)
    )
    close(fig)


def test_all_units_selects_nothing_to_mark_and_another_models_selection_is_refused():
    scores = narrow_scores(2)
    assert (
        marks_from_selection(selection_of(scores, "all-units", True, set(scores.names)), scores)
        is None
    )
    bigger = narrow_scores(3)
    selection = selection_of(bigger, "tune-top-fraction", 0.25, set(bigger.top(0.25)))
    with pytest.raises(IlaError, match="another model") as info:
        marks_from_selection(selection, scores)
    assert "\n" not in str(info.value)


def test_block_selection_marks_the_blocks_whose_units_are_all_chosen():
    module = narrow_scores(3)
    blocks = LayerScores(
        "ila",
        "tiny",
        "block",
        [UnitScore(f"layers.{b}", b, None, 0.1 * b, 0.1 * b) for b in range(3)],
        module.layout,
    )
    chosen = {n for n in module.names if n.startswith(("layers.0.", "layers.2."))}
    chosen.add("layers.1.mlp.up_proj")  # one unit of block 1 is not the whole block
    marks = marks_from_selection(selection_of(module, "blocks", [0, 2], chosen), blocks)
    assert marks.names == {"layers.0", "layers.2"}
    assert marks.label == "tuned: chosen by --blocks (2 of 3 blocks)"
    fig = block_figure(blocks, marks)
    marked = next(c for c in fig.axes[0].collections if c.get_label() == marks.label)
    assert sorted(marked.get_offsets()[:, 1]) == pytest.approx([0.0, 0.2])
    close(fig)


def test_block_plot_axis_spans_the_data_and_the_line_is_the_block_means():
    scores = narrow_scores(4, seed=2)
    fig = block_figure(scores, top_marks(scores, 0.25))
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    values = [u.importance for u in scores.units]
    spread = max(values) - min(values)
    assert min(values) - 0.1 * spread < low < min(values) < max(values) < high
    assert high < max(values) + 0.1 * spread
    (line,) = [ln for ln in ax.lines if ln.get_label() == "block mean"]
    assert list(line.get_ydata()) == pytest.approx(list(scores.block_scores().values()))
    assert "this run's range" in ax.get_ylabel()
    close(fig)


def test_a_constant_ranking_draws_in_one_colour_and_says_all_equal(tmp_path):
    scores = make_scores([0.5] * 14, blocks=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or empty-range warning
        heat = heatmap_figure(scores, top_marks(scores, 0.25))
        blocks = block_figure(scores)
        plot_unit_heatmap(scores, tmp_path / "heatmap.png")
    assert len(heat.axes) == 1  # no colourbar over a range of nothing
    assert any("all equal" in t for t in texts(heat))
    assert not [t for t in heat.axes[0].texts if t.get_text().isdigit()]  # no ranks
    assert any("all equal" in t for t in texts(blocks))
    low, high = blocks.axes[0].get_ylim()
    assert low < 0.5 < high and all(math.isfinite(v) for v in (low, high))
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
    close(heat)
    close(blocks)


def overlapping(labels, renderer):
    boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]


@pytest.mark.parametrize("blocks", [2, 4, 30])
def test_heatmap_size_keeps_labels_and_ranks_apart(blocks):
    scores = narrow_scores(blocks, seed=blocks)
    fig = heatmap_figure(scores, top_marks(scores, 0.25))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    heat = fig.axes[0]
    width, height = fig.get_size_inches()
    assert 5 < width < 12 and 3 < height < 14
    assert not overlapping(heat.get_yticklabels(), renderer)
    assert not overlapping(heat.get_xticklabels(), renderer)
    assert len(heat.get_yticklabels()) == blocks
    # Every rank fits inside its own cell.
    cell_w = heat.get_window_extent(renderer).width / len(TYPES)
    cell_h = heat.get_window_extent(renderer).height / blocks
    for text in heat.texts:
        box = text.get_window_extent(renderer)
        assert box.width < cell_w and box.height < cell_h
    title = heat.title.get_window_extent(renderer)
    assert title.x0 >= 0 and title.x1 <= fig.bbox.width
    close(fig)


def test_compare_units_colours_by_rank_and_marks_each_runs_top_set():
    runs = [narrow_scores(4, seed=s) for s in range(3)]
    fig = units_figure(runs, ["a", "b", "c"], 0.25)
    panels = [ax for ax in fig.axes if ax.images][:4]
    for ax, scores in zip(panels, runs, strict=False):
        image = ax.images[0]
        assert (image.norm.vmin, image.norm.vmax) == (1, 28)
        rank = {name: i + 1 for i, name in enumerate(scores.ranking())}
        top = scores.ranking()[0]
        assert image.get_array()[int(top.split(".")[1]), TYPES.index(top.split(".", 2)[2])] == 1
        assert {p.get_gid().split(":", 2)[2] for p in ax.patches} == set(scores.top(0.25))
        assert len(rank) == 28
    consensus = panels[3].images[0].get_array()
    tops = [set(s.top(0.25)) for s in runs]
    for u in runs[0].units:
        expected = sum(u.name in t for t in tops)
        assert consensus[u.block, TYPES.index(u.module_type)] == expected
    everywhere = set.intersection(*tops)
    assert {p.get_gid().split(":", 2)[2] for p in panels[3].patches} == everywhere
    close(fig)


def test_pairwise_heatmaps_run_from_chance_to_one_with_the_diagonal_left_out():
    runs = [narrow_scores(4, seed=s) for s in range(3)]
    comparison = compare_scores(runs, ["a", "b", "c"], [0.25, 0.5])
    fig = pairwise_figure(comparison)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 4
    for image, summary in zip(images, comparison.by_fraction, strict=False):
        low = min(summary.random_jaccard, summary.min_jaccard)
        assert image.norm.vmin == pytest.approx(low) and image.norm.vmax == 1.0
        assert np.isnan(np.diag(image.get_array().filled(np.nan))).all()
    close(fig)


def test_gates_that_barely_move_get_their_own_axis_and_the_budget_is_named():
    steps = np.linspace(0.952, 0.931, 5)
    trajectory = {"gate_names": ["a", "b"], "values": [[v, v + 1e-4] for v in steps]}
    fig = gate_figure(trajectory, target_fraction=0.5)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert 0.92 < low < 0.931 and 0.9521 < high < 0.96
    assert "budget H = 0.5, below" in ax.get_title()
    close(fig)
    spread = {"gate_names": ["a", "b"], "values": [[0.95, 0.95], [0.9, 0.1]]}
    fig = gate_figure(spread, target_fraction=0.5)
    assert fig.axes[0].get_ylim() == (0.0, 1.02)
    assert any(t.get_text().strip() == "budget H = 0.5" for t in fig.axes[0].texts)
    close(fig)


def test_draw_ranking_script_draws_a_recorded_ranking(tmp_path):
    """scripts/draw_ranking.py (docs/img/ranking.png) on a committed bench_levers record."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from matplotlib.image import imread

    repo = Path(__file__).resolve().parents[2]
    record = repo / "benchmarks/records/bench_levers/ila-instruct/seed0/default.json"
    out = tmp_path / "ranking.png"
    argv = [sys.executable, str(repo / "scripts/draw_ranking.py"), str(record), str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "210 units, top 25% outlined" in done.stdout
    image = imread(out)
    assert image.shape[0] > 800 and image[..., :3].std() > 0.1
    raw = json.loads(record.read_text())["raw_scores"]
    sys.path.insert(0, str(repo / "scripts"))
    try:
        from draw_ranking import record_scores
    finally:
        sys.path.remove(str(repo / "scripts"))
    scores = record_scores(json.loads(record.read_text()), str(record))
    fig = heatmap_figure(scores)
    norm = fig.axes[0].images[0].norm
    assert norm.vmin == pytest.approx(1 / (1 + math.exp(-min(raw))))
    assert norm.vmax == pytest.approx(1 / (1 + math.exp(-max(raw))))
    close(fig)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"gate_names": ["model.embed"], "raw_scores": [0.0]}))
    done = subprocess.run([*argv[:2], str(bad), str(out)], capture_output=True, text=True)
    assert done.returncode != 0 and "is not layers.BLOCK.MODULE" in done.stderr
