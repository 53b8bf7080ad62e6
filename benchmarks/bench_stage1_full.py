"""ILA over full fine-tuning deltas against ILA over LoRA updates, on the same data.

docs/method.md, "Stage 1 as a full fine-tune": `--stage1-method full` trains every unit's
weights in stage 1 and gates Delta_i = W_i(T) - W_i(0) in stage 2. This script runs (or
reuses) `ila score --stage1-method full` at the given seeds with the settings of the
finished LoRA runs given (same data, split, max length and batch), then reports the
top-25% Jaccard and Spearman of each full run against each LoRA run, beside the LoRA runs'
own seed-to-seed agreement, chance and the structural null (`ila compare`), and each
method's T, stage time and peak memory. Usage::

    python benchmarks/bench_stage1_full.py --lora-runs runs/bench-overlap/ila-instruct/seed0 \\
        runs/bench-overlap/ila-instruct/seed1 [--seeds 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila_process import ila
from results_file import write_section
from run_settings import pair_rows, ranking_pairs, run_flags


def facts(run: Path) -> dict:
    meta = json.loads((run / "layer_scores.json").read_text())["meta"]
    return {
        "T": meta["T"],
        "stable": meta["stage1_stable"],
        "s1": meta["stage1_seconds"] / max(meta["stage1_steps"], 1),
        "s2": meta["stage2_seconds"] / max(meta["stage2_steps"], 1),
    }


def plan_for(config: dict, method: str):
    """`ila plan` of the runs' settings with stage 1 as ``method``."""
    from ila.analysis.plan import plan_run
    from ila.api import make_config
    from ila.config import PlanConfig

    plan_config = make_config(
        PlanConfig,
        model=str(config["model"]["model"]),
        max_length=config["data"]["max_length"],
        batch_size=config["train"]["batch_size"],
        stage1_method=method,
    )
    return plan_run(plan_config)


def main() -> None:
    from ila.core.scores import LayerScores, expected_random_jaccard, top_count

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lora-runs", type=Path, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-stage1-full"))
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    config = yaml.safe_load((args.lora_runs[0] / "config.yaml").read_text())
    full_runs = []
    for seed in args.seeds:
        out = args.work_dir / f"seed{seed}"
        if not (out / "layer_scores.json").is_file():
            ila("score", *run_flags(config, args.threads), "--seed", str(seed), "--output-dir",
                str(out), "--overwrite", "--stage1-method", "full")  # fmt: skip
        full_runs.append(out)
    lora = [LayerScores.load(r) for r in args.lora_runs]
    full = [LayerScores.load(r) for r in full_runs]

    n = len(lora[0].units)
    k = top_count(n, 0.25)
    rows = {
        "full vs LoRA": ranking_pairs(full, lora, same=False),
        "LoRA vs LoRA (seeds)": ranking_pairs(lora, lora, same=True),
        "full vs full (seeds)": ranking_pairs(full, full, same=True),
    }
    lines = [
        "## ILA over full fine-tuning deltas against LoRA (`benchmarks/bench_stage1_full.py`)",
        "",
        f"Measured {started}. `ila score --stage1-method full` (stage 1 trains the unit "
        "weights; stage 2 gates Delta_i = W_i(T) - W_i(0)) at seeds "
        f"{', '.join(map(str, args.seeds))}, with the data settings of the LoRA runs "
        + ", ".join(f"`{r}`" for r in args.lora_runs)
        + f". Top-25% Jaccard (k = {k} of {n}; chance {expected_random_jaccard(n, k):.2f}), "
        "Spearman over all units and the structural null of `ila compare` (the Jaccard "
        "expected when each run's top units are redrawn within their module type), mean "
        "(min-max) over pairs. "
        f"Command: `python benchmarks/bench_stage1_full.py --threads {args.threads} "
        f"--seeds {' '.join(map(str, args.seeds))} --lora-runs "
        + " ".join(str(r) for r in args.lora_runs)
        + "`.",
        "",
        *pair_rows(rows),
    ]
    lines += [
        "",
        "| run | stage 1 | T | stable | stage-1 s/step | stage-2 s/step |",
        "|---|---|---:|---|---:|---:|",
    ]
    for run in [*args.lora_runs, *full_runs]:
        f = facts(run)
        method = "full" if run in full_runs else "LoRA"
        lines.append(
            f"| `{run}` | {method} | {f['T']} | {f['stable']} | {f['s1']:.2f} | {f['s2']:.2f} |"
        )
    lines += ["", "Memory by `ila plan` for these settings (peak of the stage, GB):", ""]
    lines += ["| stage-1 method | stage 1 | stage 2 |", "|---|---:|---:|"]
    for method in ("lora", "full"):
        first, second = (stage.peak_bytes / 1e9 for stage in plan_for(config, method).stages[:2])
        lines.append(f"| {method} | {first:.2f} | {second:.2f} |")
    markdown = "\n".join(lines)
    write_section("bench_stage1_full", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
