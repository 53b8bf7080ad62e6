"""Cost of selective fine-tuning against tuning every unit, measured side by side.

For one model, data and ranking, runs ``ila finetune`` once per (method, selection) in a
fresh process each (so peak memory is that run's own) and reports trainable parameters,
optimizer-state bytes, median step time, peak resident memory and the lowest trainable
block, with ratios against all units for the same method.

    python benchmarks/bench_finetune.py --scores runs/bench-score/seed0 [--steps 12]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write_section

SELECTIONS = {
    "all units": ["--all-units"],
    "ILA top 30%": ["--tune-top-fraction", "0.3"],
    "ILA freeze bottom 25%": ["--freeze-bottom-fraction", "0.25"],
}


def run_one(method: str, rule: list[str], args: argparse.Namespace, out: Path) -> dict:
    command = [
        sys.executable, "-m", "ila", "-q", "finetune",
        "--scores", str(args.scores), *rule,
        "--method", method, "--max-steps", str(args.steps), "--warmup-steps", "0",
        "--limit", "400", "--max-length", "128", "--eval-fraction", "0.05",
        "--device", "cpu", "--output-dir", str(out), "--overwrite",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "finetune_summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in rows if r["stage"] == "finetune"]
    steps = [b - a for a, b in itertools.pairwise(elapsed)][1:]  # drop the first
    summary["median_step_s"] = statistics.median(steps)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scores", type=Path, required=True, help="an ila score run")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--methods", nargs="+", default=["lora", "full"])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-finetune"))
    args = parser.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "## Selective fine-tuning cost (`benchmarks/bench_finetune.py`)",
        "",
        f"Measured {started} on {os.cpu_count()} CPU cores, float32, SmolLM2-135M, "
        f"`ila-instruct` (batch 4, max length 128), {args.steps} steps per run, ranking from "
        f"`{args.scores}`; each run in its own process. Step time = median over steps 2..N. "
        "Ratios are against all units with the same method.",
        "",
        "| method | selection | units | lowest block | trainable params | optimizer state (MB) "
        "| s/step | peak RSS (MB) | params ratio | step-time ratio | memory ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in args.methods:
        results = {
            name: run_one(method, rule, args, args.work_dir / f"{method}-{i}")
            for i, (name, rule) in enumerate(SELECTIONS.items())
        }
        base = results["all units"]
        for name, s in results.items():
            lines.append(
                f"| {method} | {name} | {s['num_selected']}/{s['num_units']} "
                f"| {s['lowest_trainable_block']} | {s['trainable_parameters']:,} "
                f"| {s['optimizer_state_bytes'] / 2**20:.1f} | {s['median_step_s']:.2f} "
                f"| {s['peak_rss_mb']:.0f} "
                f"| {s['trainable_parameters'] / base['trainable_parameters']:.3f} "
                f"| {s['median_step_s'] / base['median_step_s']:.3f} "
                f"| {s['peak_rss_mb'] / base['peak_rss_mb']:.3f} |"
            )
    markdown = "\n".join(lines)
    write_section("bench_finetune", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
