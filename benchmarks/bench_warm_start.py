"""Stage 1 as an investment: a fine-tune started from the stage-1 adapter against cold starts.

`ila finetune --init-from-stage1` (docs/method.md, "Stage 3") starts the selected units'
LoRA from the scores run's stage-1 adapter, so the T steps stage 1 spent are not thrown
away. This script measures, on the ILA run given (its data, model and T), for each
fine-tuning seed, the held-out loss of LoRA on the top ``--fraction`` of units:

* warm: from the stage-1 adapter, ``--steps`` steps;
* cold, equal fine-tune steps: LoRA's usual init, ``--steps`` steps;
* cold, equal total steps: LoRA's usual init, ``--steps`` + T steps (stage 1's T LoRA
  steps counted as if they had been fine-tuning steps; stage 1 trained every unit, so
  this favours the cold start in compute).

Each fine-tune is a fresh `ila finetune` process with the run's data settings. Writes its
section of docs/results.md. Usage::

    python benchmarks/bench_warm_start.py --scores runs/bench-overlap/ila-instruct/seed0 \\
        [--steps 100] [--seeds 0 1 2] [--fraction 0.3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila_process import ila
from results_file import write_section
from run_settings import run_flags

VARIANTS = ("warm", "cold, equal fine-tune steps", "cold, equal total steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", type=Path, required=True, help="a finished ILA score run")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1, help="threads of every fine-tune")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-warm-start"))
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    config = yaml.safe_load((args.scores / "config.yaml").read_text())
    meta = json.loads((args.scores / "layer_scores.json").read_text())["meta"]
    t = int(meta["T"])
    common = [*run_flags(config, args.threads), "--scores", str(args.scores)]
    common += ["--tune-top-fraction", str(args.fraction), "--method", "lora"]
    losses: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for seed in args.seeds:
        for variant, steps, extra in (
            (VARIANTS[0], args.steps, ["--init-from-stage1"]),
            (VARIANTS[1], args.steps, []),
            (VARIANTS[2], args.steps + t, []),
        ):
            out = args.work_dir / f"{variant.split(',')[0]}-{steps}-seed{seed}"
            if not (out / "finetune_summary.json").is_file():
                ila(
                    "finetune", *common, *extra, "--max-steps", str(steps), "--seed", str(seed),
                    "--output-dir", str(out), "--overwrite",
                )  # fmt: skip
            summary = json.loads((out / "finetune_summary.json").read_text())
            losses[variant].append(summary["eval_loss"])
            print(f"{variant} seed {seed}: held-out loss {summary['eval_loss']:.4f}", flush=True)

    def cell(values: list[float]) -> str:
        spread = f" ({min(values):.4f}-{max(values):.4f})" if len(values) > 1 else ""
        return f"{statistics.fmean(values):.4f}{spread}"

    lines = [
        "## Warm start from stage 1 (`benchmarks/bench_warm_start.py`)",
        "",
        f"Measured {started}. ILA run `{args.scores}` (T = {t}); LoRA on its top "
        f"{args.fraction:.0%} of units, {args.steps} fine-tuning steps, fine-tuning seeds "
        f"{', '.join(map(str, args.seeds))}; held-out response loss (mean, min-max over "
        "seeds). Command: `python benchmarks/bench_warm_start.py --scores "
        f"{args.scores} --steps {args.steps}`.",
        "",
        "| start | LoRA steps of the fine-tune | held-out loss |",
        "|---|---:|---:|",
        f"| from the stage-1 adapter | {args.steps} | {cell(losses[VARIANTS[0]])} |",
        f"| LoRA init | {args.steps} | {cell(losses[VARIANTS[1]])} |",
        f"| LoRA init | {args.steps + t} | {cell(losses[VARIANTS[2]])} |",
    ]
    text = "\n".join(lines)
    write_section("bench_warm_start", text)
    print(text)


if __name__ == "__main__":
    main()
