"""`ila report`: one self-contained HTML page (and markdown) describing a finished run.

Sections: summary, stage 1 (loss with T marked), stage 2 (gate trajectories), the units
(blocks x module types heatmap, block plot, top of the ranking), and when the run has
them the selection, the fine-tunes and the evaluation; then the data, the versions and
the command that reproduces the run from its resolved ``config.yaml``. Built from the
run's JSON files only (:mod:`ila.reporting.run_record`).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ila.files import atomic_write_text
from ila.reporting.document import Code, Document, Figure, Section, Table, to_html, to_markdown
from ila.reporting.figures import data_limits, number_format
from ila.reporting.marks import UnitMarks, marks_from_selection
from ila.reporting.plots import plot_blocks, plot_unit_heatmap
from ila.reporting.run_plots import plot_gate_trajectories, plot_stage1_loss
from ila.reporting.run_record import RunRecord
from ila.reporting.tables import importance_format, ranking_markdown
from ila.run_files import CONFIG_FILE

__all__ = ["RUN_REPORT_HTML", "build_run_document", "reproduce_command", "write_run_report"]

RUN_REPORT_HTML = "report.html"
_TOP_ROWS = 20


def reproduce_command(record: RunRecord, output_dir: str | None = None) -> str:
    """The `ila` command line that re-runs ``record`` from its resolved config.yaml.

    config.yaml holds every setting (seed included), so only the command, the scorer and
    a new output directory are added.
    """
    run_dir = record.run_dir
    target = output_dir or f"{run_dir.as_posix().rstrip('/')}-reproduced"
    parts = ["ila", record.command, "--config", (run_dir / CONFIG_FILE).as_posix()]
    if record.command == "score":
        parts += ["--scorer", record.method]
    parts += ["--output-dir", target]
    return shlex.join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 1000 else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) or "-"
    return str(value)


def _key_values(pairs: list[tuple[str, Any]]) -> Table:
    return Table(["", "value"], [[k, _fmt(v)] for k, v in pairs], [False, False])


def _summary(record: RunRecord) -> Section:
    s, meta = record.scores, record.scores.meta
    pairs: list[tuple[str, Any]] = [
        ("command", f"ila {record.command}"),
        ("model", s.model_id),
        ("scorer", s.method),
        ("units", f"{len(s.units)} ({s.unit_kind})"),
        ("blocks", s.layout.get("num_blocks")),
        ("completed stages", record.completed_stages),
    ]
    source = meta.get("source") or {}
    if source:
        where = f" at step {source['step']}" if source.get("step") is not None else ""
        pairs.append(("update ranked", f"{source.get('kind')}{where}: {source.get('path', '-')}"))
        pairs.append(("stage-2 steps", meta.get("stage2_steps")))
    elif record.stage1 is not None:
        stable = "epsilon-stable" if record.stage1.get("stable") else "hit the step cap"
        pairs.append(("stage-1 stopping step T", f"{meta.get('T')} ({stable})"))
        pairs.append(("stage-2 steps", meta.get("stage2_steps")))
    pairs += [("seed", meta.get("seed")), ("data fingerprint", meta.get("data_fingerprint"))]
    found = s.separation()
    if found.tie:
        text = (
            f"No most important units: the ranking is a tie ({found.reason}). Its order is "
            "the model's order, not a measurement."
        )
    else:
        top = ", ".join(f"`{name}`" for name in s.top(0.1)[:10])
        text = f"Most important units (top 10%, at most 10): {top}."
    return Section("Summary", "summary", [_key_values(pairs), text])


def _stage1(record: RunRecord) -> Section:
    st = record.stage1 or {}
    if st.get("source"):
        flag = "--from-adapter" if st["source"] == "adapter" else "--from-model"
        text = (
            f"No stage-1 training: the update is one that already exists, read from "
            f'`{st.get("path")}` (`ila score {flag}`, docs/method.md "ILA on an update you '
            f'already have") in {_fmt(st.get("seconds"))} s; stage 2 gates it as it is.'
        )
        return Section("Stage 1: an existing update", "stage1", [text])
    rule = (
        "the loss has fallen significantly and the last window moved it by at most epsilon "
        "of that drop (checks every W steps on non-overlapping windows)"
        if str(st.get("criterion", "")).startswith("drop")
        else "the mean of the last W steps changes by less than epsilon relative to the W "
        "steps before"
    )
    if st.get("criterion") == "drop+ranking":
        rule += ", and the top units by update norm overlap the previous check's"
    text = (
        f"Stage 1 trains LoRA until the training loss is epsilon-stable: {rule}, for "
        f"`patience` checks in a row, or until the step cap. T = {st.get('T')} of at most "
        f"{st.get('max_steps')} steps ({_fmt(st.get('epochs'))} epochs, "
        f"{_fmt(st.get('seconds'))} s)."
    )
    if st.get("cooldown_steps"):
        text += (
            f" After T, {st['cooldown_steps']} cool-down steps at a linearly falling learning "
            f"rate; the mask is learned at step {st.get('steps')}."
        )
    table = _key_values(
        [
            ("criterion", st.get("criterion")),
            ("epsilon", st.get("epsilon")),
            ("window W", st.get("window")),
            ("patience", st.get("patience")),
            ("first loss", st.get("first_loss")),
            ("final loss", st.get("final_loss")),
        ]
    )
    figure = Figure("stage1_loss.png", "Stage-1 training loss; the dashed line marks T")
    return Section(
        "Stage 1: LoRA until epsilon-stable, or the cap", "stage1", [text, figure, table]
    )


def _stage2(record: RunRecord) -> Section:
    st, meta = record.stage2 or {}, record.scores.meta.get("stage2", {})
    text = (
        f"Stage 2 learns one gate sigmoid(s) per {st.get('unit')} unit for {st.get('steps')} "
        f"steps under the '{meta.get('budget')}' budget (target mean gate H = "
        f"{meta.get('target_fraction')}); the final gates are the importances. Final mean gate "
        f"{_fmt(st.get('mean_gate'))}."
    )
    figure = Figure(
        "stage2_gates.png", "Gate trajectories (grey: every gate; coloured: final top and bottom)"
    )
    return Section("Stage 2: gates", "stage2", [text, figure])


def _units(record: RunRecord, figures: list[Figure]) -> Section:
    s = record.scores
    rank = {name: i + 1 for i, name in enumerate(s.ranking())}
    by_name = {u.name: u for u in s.units}
    spec = importance_format(s)
    rows = [
        [
            str(rank[name]),
            f"`{name}`",
            str(by_name[name].block),
            by_name[name].module_type or "-",
            f"{by_name[name].importance:{spec}}",
        ]
        for name in s.ranking()[:_TOP_ROWS]
    ]
    table = Table(
        ["rank", "unit", "block", "module", "importance"],
        rows,
        [True, False, True, False, True],
    )
    text = f"Top {len(rows)} of {len(s.units)} units; the full ranking is in `ranking.md`."
    if s.separation().tie:
        text += " The ranking is a tie, so this order is the model's order."
    return Section("Units", "units", [*figures, text, table])


def _selection(selection: dict[str, Any]) -> Section:
    summary = selection.get("summary", {})
    pairs = [
        ("rule", f"{selection.get('rule')} {_fmt(selection.get('value'))}"),
        ("selected units", summary.get("num_selected")),
        ("frozen units", summary.get("num_frozen")),
        ("fraction of unit weights selected", summary.get("selected_weight_fraction")),
    ]
    names = ", ".join(f"`{n}`" for n in selection.get("selected", []))
    return Section("Selection", "selection", [_key_values(pairs), f"Selected: {names}."])


def _finetunes(finetunes: dict[str, dict[str, Any]]) -> Section:
    names = list(finetunes)
    keys: list[str] = []
    for summary in finetunes.values():
        keys += [k for k in summary if k not in keys]
    rows = [[k, *(_fmt(finetunes[n].get(k)) for n in names)] for k in keys]
    table = Table(["", *names], rows, [False, *([True] * len(names))])
    text = "'selected' tunes only the selected units; 'all-units' tunes every unit (baseline)."
    return Section("Fine-tuning", "finetune", [text, table])


def _evaluation(variants: dict[str, dict[str, Any]]) -> Section:
    metrics: list[str] = []
    for values in variants.values():
        metrics += [m for m in values if m not in metrics]
    names = list(variants)
    # One column per variant and one row per metric: metric names are long, variants few.
    rows = [[m, *(_fmt(variants[n].get(m)) for n in names)] for m in metrics]
    table = Table(["metric", *names], rows, [False, *([True] * len(names))])
    text = (
        "Held-out evaluation of each variant ('base': the model before fine-tuning; "
        "'-' where a variant lacks a metric)."
    )
    return Section("Evaluation", "evaluation", [text, table])


def _data(data: dict[str, Any]) -> Section:
    return Section("Data", "data", [_key_values(list(data.items()))])


def _environment(record: RunRecord) -> Section:
    env = record.environment
    pairs: list[tuple[str, Any]] = [
        ("python", env.get("python")),
        ("platform", env.get("platform")),
        ("git sha", env.get("git_sha")),
        ("CPUs", env.get("cpu_count")),
        ("CUDA devices", env.get("cuda_devices") or "none"),
    ]
    pairs += list((env.get("packages") or {}).items())
    return Section("Versions", "versions", [_key_values(pairs)])


def _reproduce(record: RunRecord) -> Section:
    if (record.scores.meta.get("source") or {}).get("kind") == "callback":
        text = (
            "Ranked by `ila.IlaCallback` inside a training run, on the adapter as it was at "
            "that step; the training script reproduces it (the adapter is not kept here)."
        )
        return Section("Reproduce", "reproduce", [text])
    blocks: list[Any] = [
        "`config.yaml` in the run directory holds every resolved setting, seeds included; "
        "this command re-runs the job with them (same versions and hardware give the same "
        "ranking):",
        Code(reproduce_command(record)),
    ]
    argv = record.environment.get("argv")
    if argv:
        blocks += ["The command line the run was started with:", Code(shlex.join(argv))]
    return Section("Reproduce", "reproduce", blocks)


def _stability(record: RunRecord) -> Section | None:
    """What the run says about its own reproducibility (ila.core.ensemble.stability_lines)."""
    from ila.core.ensemble import stability_lines

    lines = stability_lines(record.scores)
    if not lines:
        return None
    blocks: list[Any] = [" ".join(line[0].upper() + line[1:] + "." for line in lines)]
    ensemble = record.scores.meta.get("ensemble")
    if ensemble:
        blocks += [
            "Agreement between the runs by set: single runs (mean over every pair of runs, "
            "[min, max]) and split halves (mean over the splits). The Jaccard is "
            "|A∩B| / |A∪B|; the shared fraction |A∩B|/k is the share of one run's set that "
            "the other's holds (chance k/N); kappa rescales it so chance is 0 and identical "
            "sets 1.",
            _ensemble_agreement_table(ensemble["stability"]),
        ]
        row = next(r for r in ensemble["stability"]["by_fraction"] if r["fraction"] == 0.25)
        frequency = row["top_frequency"]
        ranking = record.scores.ranking()[: row["k"]]
        blocks.append(
            f"The consensus of {ensemble['stability']['runs']} runs ranks the units below "
            "(importance averaged over the runs); the last column is the share of the runs "
            "that put the unit in their own top 25%. The stage curves above are those of the "
            f"first run (`{ensemble['members'][0]}`)."
        )
        blocks.append(
            Table(
                ["rank", "unit", "share of runs in top 25%"],
                [[str(i + 1), f"`{n}`", f"{frequency[n]:.2f}"] for i, n in enumerate(ranking)],
                [True, False, True],
            )
        )
    return Section("Stability", "stability", blocks)


_ENSEMBLE_COLUMNS = [
    ("single_run", "jaccard", "single-run Jaccard"),
    (None, "random_jaccard", "chance Jaccard"),
    ("single_run", "shared_fraction", "single-run shared fraction |A∩B|/k"),
    (None, "chance_shared_fraction", "chance shared fraction k/N"),
    ("single_run", "kappa", "single-run kappa"),
    ("split_half", "jaccard", "split-half Jaccard"),
    ("split_half", "shared_fraction", "split-half shared fraction |A∩B|/k"),
    ("split_half", "kappa", "split-half kappa"),
]
"""An ensemble's agreement columns: (view, measure or key, label)."""


def _ensemble_cell(row: dict[str, Any], view: str | None, measure: str) -> str:
    """One measure of one set: single runs as 'mean [min, max]' (the mean alone where
    every pair agrees alike), split halves and chance as one number; '-' where the
    ensemble did not record it (made by an older ila)."""
    if view is None:
        value = row.get(measure)
        return "-" if value is None else f"{value:.3f}"
    mean = row.get(f"{view}_{measure}_mean")
    if mean is None:
        return "-"
    low, high = row.get(f"{view}_{measure}_min"), row.get(f"{view}_{measure}_max")
    if low is None or high is None or low == high:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _ensemble_agreement_table(stability: dict[str, Any]) -> Table:
    """Top sets at every fraction, then bottom sets: every view and measure recorded."""
    rows = []
    for side, key in (("top", "by_fraction"), ("bottom", "bottom_by_fraction")):
        for row in stability.get(key, []):
            cells = [f"{side} {100 * row['fraction']:g}%", str(row["k"])]
            cells += [_ensemble_cell(row, view, m) for view, m, _ in _ENSEMBLE_COLUMNS]
            rows.append(cells)
    header = ["set", "k", *(label for _, _, label in _ENSEMBLE_COLUMNS)]
    return Table(header, rows, [False] + [True] * (len(header) - 1))


def selection_marks(record: RunRecord) -> UnitMarks | None:
    """The units the run's selection acts on, marked on its figures (None without one)."""
    if record.selection is None:
        return None
    return marks_from_selection(record.selection, record.scores)


def _unit_figures(record: RunRecord, figures: dict[str, str]) -> list[Figure]:
    """The heatmap and block plot, captioned with their scale and what is marked."""
    scores, marks = record.scores, selection_marks(record)
    limits = data_limits(u.importance for u in scores.units)
    if limits is None:
        scale = f"All {len(scores.units)} units are equal ({scores.units[0].importance:.4g})."
    else:
        spec = number_format(*limits)
        scale = (
            f"Scaled to this run's importances, {limits[0]:{spec}} (lowest) to "
            f"{limits[1]:{spec}} (highest), not to 0-1."
        )
    marked = ""
    if marks is not None:
        shown = "outlined" if marks.kind == "tuned" else "hatched"
        marked = f" Marked ({shown} in the heatmap, red in the block plot): {marks.label}."
    blocks = (
        "Every unit's importance by block (dots; a block's module types left to right) and "
        "the block means (line). "
    )
    result = [Figure(figures["blocks"], blocks + scale + marked)]
    if "heatmap" in figures:
        heatmap = (
            "Importance of every unit, blocks x module types; the number in a cell is the "
            "unit's rank (1 = most important). Colour: "
        )
        result.insert(
            0, Figure(figures["heatmap"], heatmap + scale[0].lower() + scale[1:] + marked)
        )
    return result


def build_run_document(record: RunRecord, figures: dict[str, str]) -> Document:
    """The report of ``record``; ``figures`` maps 'heatmap' and 'blocks' to their files."""
    sections = [_summary(record)]
    if record.stage1 is not None:
        sections.append(_stage1(record))
    if record.gate_trajectory is not None:
        sections.append(_stage2(record))
    sections.append(_units(record, _unit_figures(record, figures)))
    stability = _stability(record)
    if stability is not None:
        sections.append(stability)
    if record.selection is not None:
        sections.append(_selection(record.selection))
    if record.finetunes:
        sections.append(_finetunes(record.finetunes))
    if record.evaluation is not None:
        sections.append(_evaluation(record.evaluation))
    if record.data is not None:
        sections.append(_data(record.data))
    sections += [_environment(record), _reproduce(record)]
    title = f"ILA run report: {record.scores.method} on {record.scores.model_id}"
    return Document(title, sections)


def write_run_report(record: RunRecord, output_dir: Path) -> list[Path]:
    """Write report.html (self-contained), report.md, ranking.md and the PNGs it shows."""
    out = Path(output_dir)
    scores = record.scores
    files = {"blocks": "blocks.png"}
    marks = selection_marks(record)
    plot_blocks(scores, out / "blocks.png", marks=marks)
    if scores.unit_kind == "module":
        plot_unit_heatmap(scores, out / "heatmap.png", marks=marks)
        files["heatmap"] = "heatmap.png"
    written = [out / name for name in files.values()]
    if record.stage1 is not None and not record.stage1.get("source"):
        plot_stage1_loss(record.stage1, out / "stage1_loss.png")
        written.append(out / "stage1_loss.png")
    if record.gate_trajectory is not None:
        plot_gate_trajectories(
            record.gate_trajectory,
            out / "stage2_gates.png",
            stage2_loss=(record.stage2 or {}).get("loss_curve", []),
            target_fraction=scores.meta.get("stage2", {}).get("target_fraction"),
        )
        written.append(out / "stage2_gates.png")
    document = build_run_document(record, files)
    atomic_write_text(out / "ranking.md", ranking_markdown(scores))
    atomic_write_text(out / "report.md", to_markdown(document))
    atomic_write_text(out / RUN_REPORT_HTML, to_html(document, out))
    return [*written, out / "ranking.md", out / "report.md", out / RUN_REPORT_HTML]
