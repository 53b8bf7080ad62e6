"""Calibrate ILA stage 2 on one stage-1 adapter: budget forms, steps, seeds.

Loads the stage-1 adapter of an existing ``ila score`` run and learns the gates again
with each stage-2 variant and seed given, so the variants are compared on the same
Delta. Reports, per variant: gate spread (min / quartiles / max), the fraction of gates
above 0.5, and the Jaccard of the top 25% between seeds. These are the measurements
behind the stage-2 defaults in docs/method.md.

    python benchmarks/calibrate_stage2.py RUN_DIR --variants hinge:1.0 penalty:1.0 project \\
        --seeds 0 1 --steps 60
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write_section
from stage1_run import learn_gates, load_stage1_run


def main() -> None:
    from ila.core.scores import expected_random_jaccard, jaccard, top_count

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="ila score runs (stage-1 adapters)")
    parser.add_argument("--variants", nargs="+", default=["hinge:1.0", "penalty:1.0", "project"])
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="stage-2 seeds (default: each run's own seed)"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--target-fraction", type=float, default=0.5)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/calibrate-stage2"))
    parser.add_argument("--section", default="calibrate_stage2", help="results.md section name")
    args = parser.parse_args()

    # results[variant][(run index, seed)] = gates
    results: dict[str, dict[tuple[int, int], list[float]]] = {}
    stage1_notes = []
    for r, run_dir in enumerate(args.run_dirs):
        run = load_stage1_run(run_dir)
        stage1_notes.append(f"- run {r}: {run.note}")
        features = run.features()
        for variant in args.variants:
            kind, _, weight = variant.partition(":")
            for seed in args.seeds or [run.config.train.seed]:
                out = args.work_dir / f"run{r}-{variant.replace(':', '-')}-seed{seed}"
                summary = learn_gates(
                    run,
                    out,
                    seed=seed,
                    features=features,
                    budget=kind,
                    budget_weight=float(weight or 1.0),
                    steps=args.steps,
                    target_fraction=args.target_fraction,
                )
                results.setdefault(variant, {})[(r, seed)] = summary["gates"]
                print(variant, r, seed, json.dumps({"mean_gate": summary["mean_gate"]}), flush=True)
        layer_map = run.layer_map
        del run

    n = len(layer_map.units)
    k = top_count(n, 0.25)
    lines = [
        "## Stage-2 calibration (`benchmarks/calibrate_stage2.py`)",
        "",
        f"{args.steps} stage-2 steps, target fraction {args.target_fraction}; stage-2 seed = "
        "data order and dropout; Jaccard of the top 25% "
        f"(k={k} of {n}; random expectation {expected_random_jaccard(n, k):.3f}). "
        "Stage-1 adapters:",
        "",
        *stage1_notes,
        "",
        "| variant | run | seed | min | q25 | median | q75 | max | share > 0.5 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    overlap_lines = ["", "| variant | mean Jaccard top-25% across pairs |", "|---|---:|"]
    for variant, by_seed in results.items():
        for (run, seed), gates in by_seed.items():
            q = statistics.quantiles(gates, n=4)
            share = sum(g > 0.5 for g in gates) / len(gates)
            lines.append(
                f"| {variant} | {run} | {seed} | {min(gates):.3f} | {q[0]:.3f} | {q[1]:.3f} "
                f"| {q[2]:.3f} | {max(gates):.3f} | {share:.2f} |"
            )
        tops = {
            seed: sorted(range(n), key=lambda i, g=gates: (-g[i], i))[:k]
            for seed, gates in by_seed.items()
        }
        pairs = [jaccard(tops[a], tops[b]) for a, b in itertools.combinations(tops, 2)]
        overlap_lines.append(
            f"| {variant} | {statistics.mean(pairs):.3f} |" if pairs else f"| {variant} | - |"
        )
    markdown = "\n".join(lines + overlap_lines)
    write_section(args.section, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
