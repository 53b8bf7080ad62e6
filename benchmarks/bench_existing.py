"""ILA on fine-tunes that already exist: `ila score --from-adapter` on one-epoch fine-tunes.

docs/method.md, "ILA on an update you already have". On SmolLM2-135M and the first 600
ila-instruct examples (max length 128, batch 4, split seed 0) this script:

1. fine-tunes LoRA (r 8) on every unit for one epoch (135 steps), one fine-tune per
   seed, with `ila finetune --all-units`: "the fine-tune you already have";
2. ranks each adapter with `ila score --from-adapter` (stage 2 alone, the defaults);
3. reports ILA's cost on the adapter as a share of the fine-tune that made it, beside
   the cost of a whole ILA run (stage 1 to T plus stage 2, from bench_levers' records),
   and the agreement of the rankings of the finished fine-tunes with one another and with
   the rankings `ila score` makes at T (bench_levers' "default" records of ila-instruct).

The small outputs (timings, the rankings; no weights) are kept under
``benchmarks/records/bench_existing/``; ``--report-only`` rebuilds the section from them.
Usage::

    python benchmarks/bench_existing.py --seeds 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_levers import LEVER_RECORDS, module_type, pair_measures
from ila.core.scores import expected_random_jaccard, top_count
from ila_process import ila
from results_file import write_section

RECORDS = Path(__file__).resolve().parent / "records" / "bench_existing"
STEPS = 135  # one epoch of the 540 training examples at batch 4
DATA = ["--limit", "600", "--max-length", "128", "--eval-fraction", "0.1", "--device", "cpu"]


def measure(seed: int, work: Path, threads: int) -> None:
    """One fine-tune and the ranking of its adapter; the record in the repository."""
    record_file = RECORDS / f"seed{seed}.json"
    if record_file.is_file():
        return
    ft, scored = work / f"finetune-seed{seed}", work / f"from-adapter-seed{seed}"
    threads_flag = ["--threads", str(threads)]
    if not (ft / "finetune_summary.json").is_file():
        ila(
            "finetune", "--all-units", "--method", "lora", "--max-steps", str(STEPS),
            "--seed", str(seed), "--output-dir", str(ft), "--overwrite", *DATA, *threads_flag,
        )  # fmt: skip
    if not (scored / "layer_scores.json").is_file():
        ila(
            "score", "--from-adapter", str(ft / "adapter"), "--seed", str(seed),
            "--output-dir", str(scored), "--overwrite", *DATA, *threads_flag,
        )  # fmt: skip
    finetune = json.loads((ft / "finetune_summary.json").read_text())
    scores = json.loads((scored / "layer_scores.json").read_text())
    stage2 = json.loads((scored / "stage2" / "summary.json").read_text())
    RECORDS.mkdir(parents=True, exist_ok=True)
    record = {
        "seed": seed,
        "finetune_steps": STEPS,
        "finetune_seconds": finetune["seconds"],
        "finetune_summary": {k: v for k, v in finetune.items() if not isinstance(v, list | dict)},
        "stage2_seconds": stage2["seconds"],
        "stage2_steps": stage2["steps"],
        "gate_names": stage2["gate_names"],
        "raw_scores": stage2["raw_scores"],
        "source": scores["meta"].get("source"),
    }
    record_file.write_text(json.dumps(record) + "\n")


def _pairs_row(label: str, pairs: list[tuple[list[float], list[float]]], names, types) -> str:
    tops, bottoms, nulls, rhos = pair_measures(pairs, names, types)

    def spread(xs: list[float]) -> str:
        return f"{statistics.fmean(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"

    return (
        f"| {label} | {len(pairs)} | {spread(tops)} | {spread(bottoms)} | "
        f"{statistics.fmean(nulls):.2f} | {statistics.fmean(rhos):.2f} |"
    )


def ila_run_seconds(record: dict) -> float:
    """Stage 1 to T (the recording's seconds per step times T) plus stage 2's seconds."""
    curve_file = LEVER_RECORDS.parent / "stage1" / "bench-levers" / record["data"]
    curve = json.loads((curve_file / f"seed{record['seed']}.json").read_text())
    return record["T"] * curve["seconds"] / len(curve["loss"]) + record["seconds"]


def report(command: str) -> str:
    records = [json.loads(p.read_text()) for p in sorted(RECORDS.glob("seed*.json"))]
    if not records:
        raise SystemExit(f"no records under {RECORDS}; run without --report-only first")
    names = records[0]["gate_names"]
    types = [module_type(n) for n in names]
    at_t = []
    for path in sorted((LEVER_RECORDS / "ila-instruct").glob("seed*/default.json")):
        at_t.append(json.loads(path.read_text()))
    share = [r["stage2_seconds"] / r["finetune_seconds"] for r in records]
    finished = [r["raw_scores"] for r in records]
    n, k = len(names), top_count(len(names), 0.25)
    lines = [
        "## ILA on fine-tunes that already exist (`benchmarks/bench_existing.py`)",
        "",
        f"Command: `{command}` (rebuilt from `benchmarks/records/bench_existing/` with "
        "`--report-only`). SmolLM2-135M, LoRA r 8 on all 210 units fine-tuned for one epoch "
        f"({STEPS} steps, batch 4) on the first 600 ila-instruct examples, one fine-tune per "
        f"seed ({', '.join(str(r['seed']) for r in records)}); each adapter ranked by "
        "`ila score --from-adapter` (stage 2 alone, defaults: 60 steps of 8 examples). "
        "One CPU thread per process; other benchmarks shared the 2-core machine, so "
        "seconds carry its noise.",
        "",
        "| seed | fine-tune s | stage 2 on its adapter s | share of the fine-tune |",
        "|---:|---:|---:|---:|",
    ]
    for r, s in zip(records, share, strict=True):
        lines.append(
            f"| {r['seed']} | {r['finetune_seconds']:.0f} | {r['stage2_seconds']:.0f} | {s:.2f} |"
        )
    lines.append(f"| mean | | | {statistics.fmean(share):.2f} |")
    if at_t:
        # A whole ILA run (stage 1 to T, then stage 2) on the same machine, from the
        # bench_levers recordings (full ila-instruct split, same batch and max length).
        per_step = statistics.fmean(r["finetune_seconds"] / STEPS for r in records)
        whole = [ila_run_seconds(r) for r in at_t]
        lines += [
            "",
            f"A whole ILA run on ila-instruct (stage 1 to T = "
            f"{', '.join(str(r['T']) for r in at_t)}, then stage 2; bench_levers' recordings) "
            f"took {statistics.fmean(whole):.0f} s ({min(whole):.0f}-{max(whole):.0f}), "
            f"{statistics.fmean(whole) / (per_step * STEPS):.2f} of the one-epoch fine-tune "
            "time above; ranking an existing adapter skips stage 1.",
        ]
    lines += [
        "",
        f"Agreement (top and bottom 25% = {k} of {n} units; chance Jaccard "
        f"{expected_random_jaccard(n, k):.2f}; null: top sets redrawn within module type):",
        "",
        "| rankings | pairs | top-25% Jaccard | bottom-25% Jaccard | null | Spearman |",
        "|---|---:|---|---|---:|---:|",
        _pairs_row(
            "finished fine-tunes, seed vs seed",
            list(itertools.combinations(finished, 2)),
            names,
            types,
        ),
    ]
    if at_t:
        ranked = [r["raw_scores"] for r in at_t]
        lines.append(
            _pairs_row(
                "ila score at T, seed vs seed",
                list(itertools.combinations(ranked, 2)),
                names,
                types,
            )
        )
        lines.append(
            _pairs_row(
                "finished fine-tune vs ila score at T",
                list(itertools.product(finished, ranked)),
                names,
                types,
            )
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-existing"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        for seed in args.seeds:
            measure(seed, args.work_dir, args.threads)
    command = "python benchmarks/bench_existing.py --seeds " + " ".join(map(str, args.seeds))
    text = report(command)
    write_section("bench_existing", text)
    print(text)


if __name__ == "__main__":
    main()
