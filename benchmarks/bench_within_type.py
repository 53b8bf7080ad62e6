"""Quality of ILA's top 30% chosen within each module type against the global top 30%.

`--within-module-type` (docs/method.md, "Stage 3") applies the fraction rule to each module
type on its own, as Spectrum does, so the selection keeps every type's share and the
ranking only chooses which blocks of each type to tune. Between seeds it agrees less than
the global rule (docs/results.md, "Levers on the ranking's reproducibility"): most of what
two global top sets share is which types they hold. This script asks whether it fine-tunes
better or worse. From one ILA ranking (`ila score`, defaults, seed 0, on the same training
split the fine-tunes use) it LoRA-fine-tunes, under the protocol of ``bench_quality.py``
(SmolLM2-135M, ila-instruct first 600 examples, 10% held out by split seed 0, max length
128, one epoch at batch 4, lr 1e-3, LoRA r 8), for each fine-tuning seed:

* ILA's global top 30%;
* ILA's top 30% within each module type (``--within-module-type``);
* a control: the same number of units of each module type as the within-type rule, drawn
  at random (``ila.core.controls.random_within_type``, seed 0): the type shares without
  ILA's choice of blocks;

and evaluates each with `ila eval` as ``bench_quality.py`` does (held-out response loss,
exact match, forgetting as the loss on held-out chitchat). Every (selection, seed) leaves
its metrics in ``benchmarks/records/bench_within_type/`` and the ILA ranking there too, so
``--report-only`` rebuilds the section from the records alone. Usage::

    python benchmarks/bench_within_type.py --seeds 0 1 2
    python benchmarks/bench_within_type.py --report-only

Seeds run in the outer loop, so a partial run covers every selection on the same seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quality import DATA, EPOCH_STEPS, measure, precision_text, slug_of, spread, verdict
from ila.core.controls import random_within_type
from ila.core.layers import LayerMap
from ila.core.scores import LayerScores, jaccard
from ila_process import ila
from results_file import write_section

RECORDS = Path(__file__).resolve().parent / "records" / "bench_within_type"
SCORES_RECORD = RECORDS / "ila-scores.json"
GLOBAL = "ILA: tune top 30%"
WITHIN = "ILA within module type: tune top 30%"
CONTROL = "random, per-type counts of the within-type rule"


def ila_scores(work_dir: Path) -> Path:
    """The ILA ranking every selection reads (scored once; kept as a record)."""
    if not SCORES_RECORD.is_file():
        out = work_dir / "score-ila"
        if not (out / "layer_scores.json").is_file():
            ila("score", "--seed", "0", "--output-dir", str(out), "--overwrite", *DATA)
        RECORDS.mkdir(parents=True, exist_ok=True)
        LayerScores.load(out).save(SCORES_RECORD)
    return SCORES_RECORD


def chosen_units(scores: LayerScores) -> dict[str, list[str]]:
    """The units each row tunes: ILA's global and within-type top 30%, and the control."""
    within = scores.top(0.3, within_module_type=True)
    control = random_within_type(within, LayerMap.from_dict(scores.layout), seed=0)
    return {GLOBAL: scores.top(0.3), WITHIN: within, CONTROL: control}


def selections(scores_file: Path) -> dict[str, list[str]]:
    """The `ila finetune` selection flags of each row."""
    rule = ["--scores", str(scores_file), "--tune-top-fraction", "0.3"]
    control = chosen_units(LayerScores.load(scores_file))[CONTROL]
    return {GLOBAL: rule, WITHIN: [*rule, "--within-module-type"], CONTROL: ["--units", *control]}


def by_module_type(layer_map: LayerMap, units: list[str]) -> str:
    counts = Counter(layer_map.unit(name).module_type for name in units)
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))


def report(steps: int) -> str:
    """The section, from the records alone; only seeds every selection finished count."""
    names = [GLOBAL, WITHIN, CONTROL]
    records: dict[str, dict[int, dict]] = {name: {} for name in names}
    for name in names:
        for path in RECORDS.glob(f"{slug_of(name)}-seed*.json"):
            record = json.loads(path.read_text())
            records[name][record["seed"]] = record
    seeds = sorted(set.intersection(*(set(r) for r in records.values())))
    if not seeds:
        raise SystemExit(f"no seed finished for every selection in {RECORDS}")
    table = {
        name: {m: [records[name][s][m] for s in seeds] for m in ("loss", "em", "forget")}
        for name in names
    }
    first = {name: records[name][seeds[0]] for name in names}
    precisions = {records[n][s].get("precision") for n in names for s in seeds}
    held, generated, forget = first[GLOBAL]["examples"]
    scores = LayerScores.load(SCORES_RECORD)
    layer_map = LayerMap.from_dict(scores.layout)
    chosen = chosen_units(scores)
    overlap = jaccard(chosen[GLOBAL], chosen[WITHIN])
    rows = []
    for name in names:
        cells = [cell for key in ("loss", "em", "forget") for cell in spread(table[name][key])]
        rows.append(
            f"| {name} | {first[name]['units']} | {first[name]['trainable_parameters']:,} | "
            f"{by_module_type(layer_map, chosen[name])} | " + " | ".join(cells) + " |"
        )
    lines = [
        "## Quality of the selection within module type (`benchmarks/bench_within_type.py`)",
        "",
        "One ILA ranking (`ila score`, defaults, seed 0, on the training split below; kept in "
        "`benchmarks/records/bench_within_type/ila-scores.json`), three selections of it "
        "LoRA-fine-tuned under the protocol of `bench_quality.py`: SmolLM2-135M in "
        f"{precision_text(precisions)}, "
        "ila-instruct (first 600 examples, 10% held out by split seed 0; max length 128, "
        f"batch 4), LoRA r 8 for {steps} steps (one epoch; lr 1e-3), fine-tuning seeds "
        f"{', '.join(map(str, seeds))}. Held-out response loss on {held} examples, exact "
        f"match of greedy answers on {generated}, forgetting as the response loss on "
        f"{forget} held-out chitchat conversations. The global and the within-type top 30% "
        f"share a Jaccard of {overlap:.2f}. Command: `python benchmarks/bench_within_type.py "
        f"--seeds {' '.join(map(str, seeds))}` (`--report-only` rebuilds it from the records).",
        "",
        "| selection | units tuned | trainable params | units per module type "
        "| held-out loss (mean) | min-max | exact match (mean) | min-max "
        "| chitchat loss (mean) | min-max |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Reading ({len(seeds)} fine-tuning seeds; a difference counts only where the min-max "
        "ranges over seeds do not overlap):",
        "",
        verdict(table, WITHIN, GLOBAL),
        verdict(table, WITHIN, CONTROL),
        verdict(table, GLOBAL, CONTROL),
    ]
    if len(seeds) < 2:
        lines += ["", "With one seed there is no spread: these verdicts are not evidence."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-within-type"))
    parser.add_argument("--report-only", action="store_true", help="rebuild from the records")
    args = parser.parse_args()
    steps = EPOCH_STEPS
    if not args.report_only:
        rules = selections(ila_scores(args.work_dir))
        for seed in args.seeds:
            for name, rule in rules.items():
                measure(rule, seed, steps, args.work_dir, slug_of(name), records=RECORDS)
    markdown = report(steps)
    write_section("bench_within_type", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
