"""Which scorer's selection fine-tunes best? Every scorer at one budget, side by side.

For one model and dataset: score the units with each registered scorer (one seed), then
LoRA-fine-tune only each scorer's top fraction for the same number of steps with several
fine-tuning seeds, next to tuning all units. Reports held-out loss (mean and spread over
seeds), median time per step, and the scorer's own cost.

    python benchmarks/bench_selection.py [--fraction 0.3] [--steps 30] [--seeds 0 1] \\
        [--reuse-ila runs/bench-score/seed0]

``--reuse-ila`` takes the ILA scores of an existing run (its cost is read from its meta)
instead of scoring again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila_process import ila
from results_file import write_section

DATA = ["--limit", "600", "--max-length", "128", "--eval-fraction", "0.1", "--device", "cpu"]


def score(method: str, out: Path) -> float:
    start = time.perf_counter()
    ila("score", "--scorer", method, "--output-dir", str(out), "--overwrite", "--seed", "0")
    return time.perf_counter() - start


def finetune(rule: list[str], seed: int, steps: int, out: Path) -> dict:
    ila(
        "finetune", *rule, "--method", "lora", "--max-steps", str(steps), "--seed", str(seed),
        "--output-dir", str(out), "--overwrite", *DATA,
    )  # fmt: skip
    summary = json.loads((out / "finetune_summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in rows]
    summary["median_step_s"] = statistics.median(b - a for a, b in itertools.pairwise(elapsed))
    return summary


def main() -> None:
    from ila.scorers import SCORERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=list(SCORERS))
    parser.add_argument("--reuse-ila", type=Path)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-selection"))
    args = parser.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs: dict[str, tuple[list[str], float | None]] = {"all units": (["--all-units"], None)}
    for method in args.methods:
        if method == "ila" and args.reuse_ila is not None:
            meta = json.loads((args.reuse_ila / "layer_scores.json").read_text())["meta"]
            cost = meta["stage1_seconds"] + meta["stage2_seconds"]
            scores_dir = args.reuse_ila
        else:
            scores_dir = args.work_dir / f"score-{method}"
            cost = score(method, scores_dir)
        rule = ["--scores", str(scores_dir), "--tune-top-fraction", str(args.fraction)]
        runs[method] = (rule, cost)

    lines = [
        "## Selection by scorer: LoRA on the top fraction (`benchmarks/bench_selection.py`)",
        "",
        f"Measured {started} on {os.cpu_count()} CPU cores, float32, SmolLM2-135M, "
        f"`ila-instruct` (600 examples, 60 held out, max length 128, batch 4). Each scorer "
        f"ranks the units once (seed 0, default settings"
        + (f"; ILA scores reused from `{args.reuse_ila}`" if args.reuse_ila else "")
        + f"); LoRA r=8 then tunes its top {args.fraction:.0%} for {args.steps} steps, with "
        f"fine-tuning seeds {args.seeds}. Held-out loss is on response tokens. Scorer cost is "
        "the wall time of `ila score` (for ILA: stage 1 + stage 2).",
        "",
        "| selection | scorer cost (s) | held-out loss mean | min | max | s/step "
        "| trainable params |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (rule, cost) in runs.items():
        results = [
            finetune(rule, seed, args.steps, args.work_dir / f"ft-{name.replace(' ', '-')}-{seed}")
            for seed in args.seeds
        ]
        losses = [r["eval_loss"] for r in results]
        lines.append(
            f"| {name} | {'-' if cost is None else f'{cost:.0f}'} | {statistics.mean(losses):.4f} "
            f"| {min(losses):.4f} | {max(losses):.4f} "
            f"| {statistics.median(r['median_step_s'] for r in results):.2f} "
            f"| {results[0]['trainable_parameters']:,} |"
        )
        print(lines[-1], flush=True)
    markdown = "\n".join(lines)
    write_section("bench_selection", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
