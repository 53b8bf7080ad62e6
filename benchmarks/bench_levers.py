"""Levers on the ranking's reproducibility, each measured on the same stage-1 recordings.

Reads stage-1 recordings of ``benchmarks/record_stage1.py`` (one per dataset and seed,
LoRA snapshots every 20 steps, run past 2T at a constant learning rate) and learns stage 2
from them under each lever (docs/method.md, "What the ranking measures"; the second
ranking review's F1-F5):

- stage-2 dynamics on the adapter at T (the default rule's stop): the defaults; the
  budget at the cut that is used (H = 0.25 for the top quarter, 0.75 for the freeze set);
  one shared second moment for the gate scores (``--stage2-optimizer adam-shared``); a
  longer stage 2 with a cosine-decayed rate; a stronger budget;
- stage-1 drift: the mask learned at 2T; a temporal ensemble (the raw s of the masks at
  T and 2T averaged); stage 2 on the iterate average of the update
  Delta_i = (alpha / r) B_i A_i over the snapshots from T to 2T.

For every lever: seed-vs-seed top-25% and bottom-25% Jaccard (the sets "tune the top" and
"freeze the bottom" act on), the shared fraction, the structural null (top sets redrawn
within module type) and the excess over it, Spearman with the stage-1 update norms at T,
and how many of the top 25% are MLP modules.

Every finished stage 2 is kept under ``benchmarks/records/bench_levers/`` (settings, the
tail-averaged scores, the score trajectory, the loss; no weights), and each recording's
``curve.json`` under ``benchmarks/records/stage1/``; ``--report-only`` rebuilds the
section of docs/results.md from the records alone. Usage::

    python benchmarks/record_stage1.py --data ila-instruct --seeds 0 1 2 3 4 5 --steps 200 \\
        --work-dir runs/bench-levers --threads 1
    python benchmarks/bench_levers.py --work-dir runs/bench-levers --levers default shared
    python benchmarks/bench_levers.py --report-only
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_stability import (
    DEFAULT_RULE,
    RULES,
    load_recordings,
    rule_t,
    snapshot_steps,
)
from ila.analysis.compare import spearman, structural_null_jaccard
from ila.core.scores import expected_random_jaccard, jaccard, top_count
from results_file import write_section

RECORDS = Path(__file__).resolve().parent / "records"
LEVER_RECORDS = RECORDS / "bench_levers"
FRACTION = 0.25

# lever -> (stage-2 settings, where the adapter comes from). "T": the snapshot at the
# default rule's T; "2T": at twice that; "T..2T": the mean update over the snapshots from
# T to 2T. The temporal ensemble is computed from the records of T and 2T.
LEVERS: dict[str, tuple[dict, str]] = {
    "default": ({}, "T"),
    "H0.25": ({"target_fraction": 0.25}, "T"),
    "H0.75": ({"target_fraction": 0.75}, "T"),
    "shared": ({"optimizer": "adam-shared"}, "T"),
    "shared-H0.25": ({"optimizer": "adam-shared", "target_fraction": 0.25}, "T"),
    "cosine150": ({"steps": 150, "schedule": "cosine"}, "T"),
    "lambda5": ({"budget_weight": 5.0}, "T"),
    "default@1.5T": ({}, "1.5T"),
    "default@2T": ({}, "2T"),
    "mean-update-T..2T": ({}, "T..2T"),
    # A stage 1 of its own: the same seed again to T, then ceil(0.5 T) cool-down steps
    # (record_stage1.py --cooldown-fraction 0.5); the mask is learned at T + C.
    "cooldown-0.5": ({}, "cooldown-0.5"),
    # A fixed stage-1 length for every run: the snapshot at step 120 (like-data halves).
    "at120": ({}, "step-120"),
}
LABELS = {
    "default": "defaults (H 0.5, Adam, 60 steps constant), mask at T",
    "H0.25": "budget at the cut used: H 0.25",
    "H0.75": "budget at the freeze cut: H 0.75",
    "shared": "one second moment for all gates (adam-shared)",
    "shared-H0.25": "adam-shared and H 0.25",
    "cosine150": "150 stage-2 steps, cosine-decayed rate",
    "lambda5": "stronger budget (lambda 5)",
    "default@2T": "defaults, mask at 2T",
    "temporal": "temporal ensemble: mean s of the masks at T and 2T",
    "mean-update-T..2T": "stage 2 on the mean update over T..2T",
    "cooldown-0.5": "stage-1 cool-down: 0.5 T more steps, rate falling linearly to 0",
    "at120": "defaults, mask at step 120 for every run (fixed stage-1 length)",
}


def grid_step(curve: dict, step: float) -> int:
    """The first snapshot at or after ``step`` (the recording's last if none)."""
    steps = snapshot_steps(curve)
    return min((s for s in steps if s >= step), default=steps[-1])


def adapter_steps(curve: dict, t: int, where: str) -> tuple[int, ...]:
    if where.startswith("step-"):
        return (grid_step(curve, int(where.removeprefix("step-"))),)
    if where == "T":
        return (grid_step(curve, t),)
    if where == "1.5T":
        return (grid_step(curve, 1.5 * t),)
    if where == "2T":
        return (grid_step(curve, 2 * t),)
    start, end = grid_step(curve, t), grid_step(curve, 2 * t)
    return tuple(s for s in snapshot_steps(curve) if start <= s <= end)


def record_path(data: str, seed: int, lever: str) -> Path:
    return LEVER_RECORDS / data / f"seed{seed}" / f"{lever}.json"


def keep_record(
    path: Path, lever: str, curve: dict, t: int, steps: tuple, out: Path, extra: dict | None = None
) -> None:
    """The small outputs of one stage 2, in the repository (no weights)."""
    summary = json.loads((out / "stage2" / "summary.json").read_text())
    trajectory = json.loads((out / "stage2" / "gate_trajectory.json").read_text())
    settings, where = LEVERS[lever]
    record = {
        "lever": lever,
        "data": curve["data"],
        "seed": curve["seed"],
        "precision": curve.get("precision", "auto"),
        "T": t,
        "adapter": where,
        "snapshot_steps": list(steps),
        "stage2_settings": settings,
        "seconds": summary["seconds"],
        "steps": summary["steps"],
        "raw_scores": summary["raw_scores"],
        "gate_names": summary["gate_names"],
        "loss_curve": summary["loss_curve"],
        "score_trajectory": [[round(x, 4) for x in row] for row in trajectory["scores"]],
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n")


def keep_curve(curve: dict) -> None:
    """The recording's loss and update norms, so T and the norms survive the machine."""
    path = RECORDS / "stage1" / "bench-levers" / curve["data"] / f"seed{curve['seed']}.json"
    if path.is_file():
        return
    kept = {k: v for k, v in curve.items() if k != "dir"}
    kept["norms"] = {k: [round(x, 5) for x in v] for k, v in curve["norms"].items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept) + "\n")


def run_levers(
    work_dir: Path, levers: list[str], seeds: list[int] | None, datasets: list[str] | None = None
) -> None:
    from bench_stability import Stage2Runner

    recordings = load_recordings(work_dir)
    rule = dict(RULES)[DEFAULT_RULE]
    runner = None
    for (data, seed), curve in sorted(recordings.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if (seeds is not None and seed not in seeds) or (datasets and data not in datasets):
            continue
        keep_curve(curve)
        t = rule_t(curve, rule) or snapshot_steps(curve)[-1]
        for lever in levers:
            path = record_path(data, seed, lever)
            settings, where = LEVERS[lever]
            if path.is_file() or where.startswith("cooldown-"):
                continue
            steps = adapter_steps(curve, t, where)
            out = work_dir / "stage2" / data / f"seed{seed}" / lever
            runner = runner or Stage2Runner()
            files = [curve["dir"] / "snapshots" / f"step-{s}.safetensors" for s in steps]
            runner.run_files(
                data,
                files,
                seed,
                2,
                out,
                precision=curve.get("precision", "auto"),
                stage2=settings,
                average="update" if where == "T..2T" else "weights",
            )
            keep_record(path, lever, curve, t, steps, out)
    cooldowns = [lever for lever in levers if LEVERS[lever][1].startswith("cooldown-")]
    for lever in cooldowns:
        runner = run_cooldown_lever(work_dir, lever, seeds, runner)


def run_cooldown_lever(work_dir: Path, lever: str, seeds: list[int] | None, runner):
    """Stage 2 on the last snapshot of each cool-down recording of ``lever`` (made by
    ``record_stage1.py --cooldown-fraction``). The record keeps the cool-down's stop,
    its length, its loss curve and how far the loss before the stop strays from the
    plain recording's (the same seed, so the two runs should match until the stop)."""
    from bench_stability import Stage2Runner

    _, curves = load_records()
    for path in sorted(work_dir.glob(f"*/seed*/{LEVERS[lever][1]}/curve.json")):
        cooled = json.loads(path.read_text())
        data, seed = cooled["data"], cooled["seed"]
        target = record_path(data, seed, lever)
        if (seeds is not None and seed not in seeds) or target.is_file():
            continue
        stop, extra = cooled["cooldown"]["stop"], cooled["cooldown"]["steps"]
        plain = curves[(data, seed)]["loss"][:stop]
        stray = max(abs(a - b) for a, b in zip(cooled["loss"][:stop], plain, strict=True))
        out = work_dir / "stage2" / data / f"seed{seed}" / lever
        runner = runner or Stage2Runner()
        last = path.parent / "snapshots" / f"step-{stop + extra}.safetensors"
        runner.run_files(data, [last], seed, 2, out, precision=cooled["precision"])
        cooled_info = {
            "cooldown": {
                "stop": stop,
                "steps": extra,
                "loss": cooled["loss"],
                "seconds": cooled["seconds"],
                "max_loss_difference_before_stop": stray,
            }
        }
        keep_record(target, lever, cooled, stop, (stop + extra,), out, cooled_info)
    return runner


def load_records() -> tuple[dict[tuple[str, int], dict[str, dict]], dict[tuple[str, int], dict]]:
    """Every lever record and every stage-1 curve kept in the repository."""
    found: dict[tuple[str, int], dict[str, dict]] = {}
    for path in sorted(LEVER_RECORDS.glob("*/seed*/*.json")):
        record = json.loads(path.read_text())
        found.setdefault((record["data"], record["seed"]), {})[record["lever"]] = record
    curves = {}
    for path in sorted((RECORDS / "stage1" / "bench-levers").glob("*/seed*.json")):
        curve = json.loads(path.read_text())
        curves[(curve["data"], curve["seed"])] = curve
    return found, curves


def lever_scores(records: dict[str, dict], lever: str) -> list[float] | None:
    if lever == "temporal":
        parts = [records.get(k) for k in ("default", "default@2T")]
        if any(p is None for p in parts):
            return None
        return [
            statistics.fmean(col) for col in zip(*(p["raw_scores"] for p in parts), strict=True)
        ]
    record = records.get(lever)
    return None if record is None else record["raw_scores"]


def module_type(name: str) -> str:
    """The path inside the block: ``layers.12.mlp.up_proj`` -> ``mlp.up_proj``."""
    return name.split(".", 2)[2]


def top(values: list[float], fraction: float = FRACTION) -> set[int]:
    k = top_count(len(values), fraction)
    return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])


def bottom(values: list[float], fraction: float = FRACTION) -> set[int]:
    k = top_count(len(values), fraction)
    return set(sorted(range(len(values)), key=lambda i: (values[i], -i))[:k])


def within_type(values: list[float], types: list[str], pick) -> set[int]:
    """``pick`` (top or bottom 25%) applied to each module type's units on their own, as
    ``--within-module-type`` selects: k_t = top_count(N_t, 0.25) of each type."""
    chosen: set[int] = set()
    for kind in sorted(set(types)):
        members = [i for i, t in enumerate(types) if t == kind]
        chosen |= {members[i] for i in pick([values[i] for i in members])}
    return chosen


def within_type_line(runs: list[list[float]], types: list[str]) -> list[str]:
    """Seed-vs-seed agreement of the sets the per-module-type rule picks from the default
    rankings: what is left once the module-type prior is taken out of the selection."""
    pairs = list(itertools.combinations(range(len(runs)), 2))
    if not pairs:
        return []
    cells = []
    for name, pick in (("top", top), ("bottom", bottom)):
        sets = [within_type(r, types, pick) for r in runs]
        agree = [jaccard(sets[i], sets[j]) for i, j in pairs]
        sizes = {len(x) for x in sets}
        kinds = sorted(set(types))
        chance = statistics.fmean(
            expected_random_jaccard(types.count(k), top_count(types.count(k), FRACTION))
            for k in kinds
        )
        cells.append(
            f"{name} 25% ({'/'.join(map(str, sorted(sizes)))} units) {spread(agree)}, "
            f"chance within a type {chance:.2f}"
        )
    return [
        "",
        "Within module type (`--within-module-type`: the top or bottom 25% of each module "
        f"type on its own), default rankings, every pair of {len(runs)} seeds: "
        + "; ".join(cells)
        + ". This is the agreement left once the module-type prior is out of the selection "
        "(compare the null column above).",
    ]


def spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def stopping_lines(data: str, seeds: list[int], curves: dict, names, types) -> list[str]:
    """T of the default rule against T with the ranking check on norms standardised within
    module type (--stage1-rank-within-type), applied offline to the recorded curves."""
    rule = dict(RULES)[DEFAULT_RULE]
    cells = []
    for seed in seeds:
        curve = curves.get((data, seed))
        if curve is None:
            continue
        plain = rule_t(curve, rule)
        within = rule_t(curve, {**rule, "unit_groups": types})
        cells.append(f"seed {seed}: {plain} / {within}")
    return [
        "Stopping step T of the default rule / with the ranking check within module type "
        f"(`--stage1-rank-within-type`, applied offline to the curves): {'; '.join(cells)}."
    ]


def lever_row(label: str, runs: list[list[float]], norms: list[list[float]], names, types) -> str:
    """One table row over every pair of seeds of one lever."""
    pairs = list(itertools.combinations(range(len(runs)), 2))
    if not pairs:
        return f"| {label} | {len(runs)} | | | | | | | |"
    tops = [jaccard(top(runs[i]), top(runs[j])) for i, j in pairs]
    bottoms = [jaccard(bottom(runs[i]), bottom(runs[j])) for i, j in pairs]
    nulls = [
        structural_null_jaccard(
            names,
            types,
            {names[x] for x in top(runs[i])},
            {names[x] for x in top(runs[j])},
            draws=4000,
        )
        for i, j in pairs
    ]
    excess = [a - b for a, b in zip(tops, nulls, strict=True)]
    shared = statistics.fmean(2 * j / (1 + j) for j in tops)
    rho = [spearman(r, n) for r, n in zip(runs, norms, strict=True)]
    mlp = [sum(types[x].startswith("mlp.") for x in top(r)) for r in runs]
    return (
        f"| {label} | {len(runs)} | {spread(tops)} | {shared:.2f} | {spread(bottoms)} | "
        f"{statistics.fmean(nulls):.2f} | {statistics.fmean(excess):+.2f} | "
        f"{statistics.fmean(rho):.2f} | {statistics.fmean(mlp):.0f} |"
    )


def paired_line(label: str, runs: dict[int, list[float]], defaults: dict[int, list[float]]) -> str:
    """The lever against the defaults on the same pairs of seeds: the mean top-25% and
    bottom-25% Jaccard of each, the mean difference and on how many pairs the lever agrees
    more (a lever is adopted only where it wins on 6 or more pairs, docs/method.md)."""
    seeds = sorted(set(runs) & set(defaults))
    pairs = list(itertools.combinations(seeds, 2))
    if not pairs:
        return f"- {label}: no pair of seeds with both"
    cells = []
    for name, pick in (("top", top), ("bottom", bottom)):
        lever = [jaccard(pick(runs[a]), pick(runs[b])) for a, b in pairs]
        base = [jaccard(pick(defaults[a]), pick(defaults[b])) for a, b in pairs]
        diff = [x - y for x, y in zip(lever, base, strict=True)]
        wins = sum(d > 0 for d in diff)
        cells.append(
            f"{name} 25% {statistics.fmean(lever):.2f} against {statistics.fmean(base):.2f} "
            f"({statistics.fmean(diff):+.2f}; higher on {wins} of {len(pairs)} pairs)"
        )
    return f"- {label} (seeds {', '.join(map(str, seeds))}): {'; '.join(cells)}"


def cooldown_lines(data: str, seeds: list[int], found: dict) -> list[str]:
    """What each cool-down recording did: its stop, its length, the stage-1 loss (mean of
    the last 10 steps) at the stop and at its end, and how far its loss before the stop
    strays from the plain recording of the same seed."""
    cells = []
    for seed in seeds:
        for lever, record in sorted(found[(data, seed)].items()):
            info = record.get("cooldown")
            if info is None:
                continue
            loss, stop = info["loss"], info["stop"]
            cells.append(
                f"seed {seed} ({lever}): T {stop} + {info['steps']} steps, loss "
                f"{statistics.fmean(loss[stop - 10 : stop]):.3f} -> "
                f"{statistics.fmean(loss[-10:]):.3f}, before T within "
                f"{info['max_loss_difference_before_stop']:.1e} of the plain recording"
            )
    if not cells:
        return []
    head = "Cool-down recordings (`record_stage1.py --cooldown-fraction`): "
    return ["", head + "; ".join(cells) + "."]


def mean_gates(record: dict) -> list[float]:
    """The mean gate sigmoid(s) over the units after every stage-2 step of one record."""
    return [
        statistics.fmean(1 / (1 + math.exp(-s)) for s in row) for row in record["score_trajectory"]
    ]


def equilibrium_lines(data: str, seeds: list[int], found: dict, levers: list[str]) -> list[str]:
    """Does stage 2 settle? Per lever, the lowest mean gate (and its step) and the mean gate
    at the last step, means over seeds, beside the budget boundary H. A hinge budget pushes
    every gate down until the mean gate reaches H; Adam's momentum carries the gates below
    it, and a ranking read before they have climbed back is read mid-recovery
    (docs/method.md, "Levers on reproducibility")."""
    cells = []
    for lever in levers:
        lows, steps, lasts, target = [], [], [], None
        for seed in seeds:
            record = found[(data, seed)].get(lever)
            if record is None or "score_trajectory" not in record:
                continue
            means = mean_gates(record)
            low = min(means)
            lows.append(low)
            steps.append(means.index(low))
            lasts.append(means[-1])
            target = record["stage2_settings"].get("target_fraction", 0.5)
        if lows:
            cells.append(
                f"- {LABELS.get(lever, lever)} (H {target}): lowest {statistics.fmean(lows):.2f} "
                f"at step {statistics.fmean(steps):.0f} of {len(means) - 1}, last "
                f"{statistics.fmean(lasts):.2f} ({len(lows)} seeds)"
            )
    if not cells:
        return []
    return ["", "Stage-2 mean gate, lowest and at the last step (means over seeds):", "", *cells]


def consensus(runs: list[list[float]]) -> list[float]:
    """The mean s of each unit over ``runs`` (what `ila score --seeds` ranks by)."""
    return [statistics.fmean(col) for col in zip(*runs, strict=True)]


def ensemble_cells(runs: list[list[float]]) -> str:
    """Consensus (mean s) of K runs against the consensus of K other runs, top 25%, over
    every split into two disjoint groups, for K = 1 .. n // 2: what --seeds K buys."""
    cells = []
    for size in range(1, len(runs) // 2 + 1):
        tops, bottoms = [], []
        for group in itertools.combinations(range(len(runs)), 2 * size):
            for left in itertools.combinations(group, size):
                if left[0] != group[0]:
                    continue  # each split once
                right = [i for i in group if i not in left]
                mean_a = consensus([runs[i] for i in left])
                mean_b = consensus([runs[i] for i in right])
                tops.append(jaccard(top(mean_a), top(mean_b)))
                bottoms.append(jaccard(bottom(mean_a), bottom(mean_b)))
        cells.append(
            f"K={size}: {statistics.fmean(tops):.2f}, bottom 25% {statistics.fmean(bottoms):.2f} "
            f"({len(tops)} splits)"
        )
    return "; ".join(cells)


def report(levers: list[str], command: str) -> str:
    found, curves = load_records()
    if not found:
        raise SystemExit(f"no records under {LEVER_RECORDS}; run without --report-only first")
    lines = [
        "## Levers on the ranking's reproducibility (`benchmarks/bench_levers.py`)",
        "",
        f"Command: `{command}` (rebuilt from `benchmarks/records/` with `--report-only`).",
    ]
    for data in sorted({d for d, _ in found}):
        seeds = sorted(s for d, s in found if d == data)
        first = found[(data, seeds[0])]
        any_record = next(iter(first.values()))
        names = any_record["gate_names"]
        n = len(names)
        k = top_count(n, FRACTION)
        types = [module_type(name) for name in names]
        ts = sorted({r["T"] for s in seeds for r in found[(data, s)].values()})
        precision = sorted({r["precision"] for s in seeds for r in found[(data, s)].values()})
        lines += [
            "",
            f"### {data}: seeds {', '.join(map(str, seeds))}",
            "",
            f"SmolLM2-135M, LoRA r 8 on all {n} units, stage 1 at lr 1e-3 constant "
            f"(recordings of `record_stage1.py`, precision {', '.join(precision)}); T by the "
            f"default rule: {', '.join(map(str, ts))}. Top and bottom 25% = {k} units; chance "
            f"Jaccard {expected_random_jaccard(n, k):.2f}. Each row: every pair of seeds; "
            "shared fraction |A∩B|/k = 2J/(1+J) of the mean Jaccard's pairs; null: the "
            "top sets redrawn within module type; rho: Spearman of the importance with "
            "the run's stage-1 update norms at T; MLP: MLP modules among the top 25%.",
            "",
        ]
        lines += [*stopping_lines(data, seeds, curves, names, types), ""]
        lines += [
            "| lever | seeds | top-25% Jaccard | shared | bottom-25% Jaccard | null | "
            "excess | rho with norms | MLP in top |",
            "|---|---:|---|---:|---|---:|---:|---:|---:|",
        ]
        ensembles: list[str] = []
        paired: list[str] = []
        within: list[str] = []
        defaults = {
            seed: found[(data, seed)]["default"]["raw_scores"]
            for seed in seeds
            if "default" in found[(data, seed)]
        }
        for lever in levers:
            runs, norms, by_seed = [], [], {}
            for seed in seeds:
                scores = lever_scores(found[(data, seed)], lever)
                curve = curves.get((data, seed))
                if scores is None or curve is None:
                    continue
                # The update norms at the default's T (or at the lever's own step).
                own = found[(data, seed)].get("default") or found[(data, seed)][lever]
                t_step = own["snapshot_steps"][0]
                norm_steps = sorted(int(s) for s in curve["norms"])
                at = min((s for s in norm_steps if s >= t_step), default=norm_steps[-1])
                runs.append(scores)
                norms.append(curve["norms"][str(at)])
                by_seed[seed] = scores
            if runs:
                lines.append(lever_row(LABELS.get(lever, lever), runs, norms, names, types))
                if lever == "default":
                    within = within_type_line(runs, types)
                if lever != "default" and defaults:
                    paired.append(paired_line(LABELS.get(lever, lever), by_seed, defaults))
                if len(runs) >= 4:
                    ensembles.append(f"- {LABELS.get(lever, lever)}: {ensemble_cells(runs)}")
        lines += within
        lines += equilibrium_lines(data, seeds, found, levers)
        lines += cooldown_lines(data, seeds, found)
        if paired:
            lines += [
                "",
                "Each lever against the defaults on the same pairs of seeds (the rows above "
                "cover different seeds where a lever ran on fewer):",
                "",
                *paired,
            ]
        if ensembles:
            lines += [
                "",
                "Ensembles: top-25% (and bottom-25%) Jaccard of the consensus of K seeds "
                "against the consensus of K other seeds (mean s; every split of the seeds "
                "into two disjoint groups):",
                "",
                *ensembles,
            ]
    lines += cross_lines(found)
    return "\n".join(lines) + "\n"


# Pairs of datasets compared run against run: two disjoint halves of one dataset (the
# ceiling on like data) at a fixed stage-1 length.
CROSS = [("sharegpt-even", "sharegpt-odd", "at120")]


def pair_measures(
    pairs: list[tuple[list[float], list[float]]], names: list[str], types: list[str]
) -> tuple[list[float], list[float], list[float], list[float]]:
    """For each pair of rankings (raw scores): top-25% and bottom-25% Jaccard, the
    structural null of the top sets (redrawn within module type) and the Spearman."""
    tops = [jaccard(top(a), top(b)) for a, b in pairs]
    bottoms = [jaccard(bottom(a), bottom(b)) for a, b in pairs]
    nulls = [
        structural_null_jaccard(
            names, types, {names[i] for i in top(a)}, {names[i] for i in top(b)}, draws=4000
        )
        for a, b in pairs
    ]
    return tops, bottoms, nulls, [spearman(a, b) for a, b in pairs]


def cross_lines(found: dict) -> list[str]:
    """Agreement between rankings of two datasets (``CROSS``) beside the agreement between
    seeds on each: every cross pair, split into same-seed and different-seed pairs."""
    lines: list[str] = []
    for left, right, lever in CROSS:
        runs = {
            data: {
                s: r[lever]["raw_scores"] for (d, s), r in found.items() if d == data and lever in r
            }
            for data in (left, right)
        }
        if not runs[left] or not runs[right]:
            continue
        names = next(iter(found[(left, min(runs[left]))].values()))["gate_names"]
        types = [module_type(n) for n in names]
        rows = []
        for data in (left, right):
            seeds = sorted(runs[data])
            rows.append(
                (
                    f"{data}, seed vs seed",
                    list(itertools.combinations([(data, s) for s in seeds], 2)),
                )
            )
        cross = [((left, a), (right, b)) for a in sorted(runs[left]) for b in sorted(runs[right])]
        rows.append((f"{left} vs {right}, same seed", [p for p in cross if p[0][1] == p[1][1]]))
        rows.append((f"{left} vs {right}, other seed", [p for p in cross if p[0][1] != p[1][1]]))
        lines += [
            "",
            f"### Like data: {left} against {right} ({LABELS.get(lever, lever)})",
            "",
            "Two disjoint halves of the first 6000 ShareGPT conversations (every other one, "
            "3000 each; `record_stage1.py --data sharegpt-even sharegpt-odd`), so the cross "
            "pairs differ in their data but not in its kind. Same columns as above.",
            "",
            "| pairs | n | top-25% Jaccard | shared | bottom-25% Jaccard | null | Spearman |",
            "|---|---:|---|---:|---|---:|---:|",
        ]
        for label, pairs in rows:
            if not pairs:
                continue
            a_b = [(runs[x[0]][x[1]], runs[y[0]][y[1]]) for x, y in pairs]
            tops, bottoms, nulls, rhos = pair_measures(a_b, names, types)
            shared = statistics.fmean(2 * j / (1 + j) for j in tops)
            rho = statistics.fmean(rhos)
            lines.append(
                f"| {label} | {len(pairs)} | {spread(tops)} | {shared:.2f} | {spread(bottoms)} "
                f"| {statistics.fmean(nulls):.2f} | {rho:.2f} |"
            )
    return lines


REPORTED = [
    "default",
    "H0.25",
    "H0.75",
    "shared",
    "shared-H0.25",
    "cosine150",
    "lambda5",
    "default@2T",
    "temporal",
    "mean-update-T..2T",
    "cooldown-0.5",
    "at120",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-levers"))
    parser.add_argument("--levers", nargs="*", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--seeds", type=int, nargs="*", help="only these recordings' seeds")
    parser.add_argument("--data", nargs="*", help="only these recordings' datasets")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--report-only", action="store_true", help="rebuild from records")
    args = parser.parse_args()
    if not args.report_only:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        run_levers(args.work_dir, args.levers, args.seeds, args.data)
    command = "python benchmarks/bench_levers.py --work-dir runs/bench-levers"
    write_section("bench_levers", report(REPORTED, command))
    print(report(REPORTED, command))


if __name__ == "__main__":
    main()
