"""Quality at equal steps: all units vs ILA's freeze/tune rules vs other selections.

The paper's quality claims (arXiv 2410.17875, Tables 2-5): freezing the least important
~25% of the layers keeps or improves quality, and tuning only the top 10-30% comes close
to tuning everything. On SmolLM2-135M and the embedded ila-instruct data this script
LoRA-fine-tunes, for the same number of steps and several fine-tuning seeds:

* every unit;
* ILA, freeze the bottom 25% (tune the other 75%);
* ILA, tune the top 30%;
* the top 30% of other scorers (random, lora-norm, grad-norm by default);

then evaluates each with `ila eval` on the held-out split (the same examples for every
selection of one seed): response loss, and exact match of greedy answers. The base model
is evaluated too. Mean and min-max over seeds. Usage::

    python benchmarks/bench_quality.py --ila-scores runs/bench-overlap/ila-instruct/seed0 \\
        [--steps 30] [--seeds 0 1] [--methods random lora-norm grad-norm]

Finished fine-tunes and evaluations in --work-dir are reused; other scorers' rankings
are read from ``<work-dir>/score-<method>`` (scored with seed 0 when missing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila_process import ila
from results_file import write_section

DATA = ["--limit", "600", "--max-length", "128", "--eval-fraction", "0.1", "--device", "cpu"]
EVAL = ["--eval-generate-examples", "60", "--eval-max-new-tokens", "48"]


def finetune(rule: list[str], seed: int, steps: int, out: Path) -> dict:
    if not (out / "finetune_summary.json").is_file():
        ila(
            "finetune", *rule, "--method", "lora", "--max-steps", str(steps),
            "--seed", str(seed), "--output-dir", str(out), "--overwrite", *DATA,
        )  # fmt: skip
    return json.loads((out / "finetune_summary.json").read_text())


def evaluate(adapter: Path | None, seed: int, out: Path) -> dict:
    if not (out / "eval_results.json").is_file():
        extra = ["--adapter", str(adapter)] if adapter else []
        ila("eval", *extra, "--seed", str(seed), "--output-dir", str(out), "--overwrite",
            *DATA, *EVAL)  # fmt: skip
    return json.loads((out / "eval_results.json").read_text())["metrics"]


def spread(values: list[float], digits: int = 3) -> tuple[str, str]:
    mean = f"{statistics.fmean(values):.{digits}f}"
    return mean, f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ila-scores", type=Path, required=True, help="an ILA score run")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=["random", "lora-norm", "grad-norm"])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-quality"))
    args = parser.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    ila_rule = ["--scores", str(args.ila_scores)]
    configs: dict[str, list[str] | None] = {
        "base model (no tuning)": None,
        "all units": ["--all-units"],
        "ILA: freeze bottom 25%": [*ila_rule, "--freeze-bottom-fraction", "0.25"],
        "ILA: tune top 30%": [*ila_rule, "--tune-top-fraction", "0.3"],
    }
    for method in args.methods:
        scores = args.work_dir / f"score-{method}"
        if not (scores / "layer_scores.json").is_file():
            ila("score", "--method", method, "--output-dir", str(scores), "--overwrite",
                "--seed", "0")  # fmt: skip
        configs[f"{method}: tune top 30%"] = ["--scores", str(scores), "--tune-top-fraction", "0.3"]

    lines = [
        "## Quality at equal steps (`benchmarks/bench_quality.py`)",
        "",
        f"Measured {started}, SmolLM2-135M, float32, `ila-instruct` (600 examples, 10% "
        f"held out by each seed's split, max length 128, batch 4). LoRA r=8 for {args.steps} "
        f"steps (lr 1e-3) on each selection, fine-tuning seeds {args.seeds}; ILA scores from "
        f"`{args.ila_scores}`, other scorers ranked once with seed 0. Evaluated with `ila eval` "
        "on the held-out examples: response loss, and exact match of greedy answers (48 new "
        "tokens at most) on the 60 held-out questions. Command: `python "
        f"benchmarks/bench_quality.py --ila-scores {args.ila_scores} --steps {args.steps}`.",
        "",
        "| selection | units tuned | trainable params | held-out loss (mean) | min-max "
        "| exact match (mean) | min-max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    table: dict[str, dict[str, float]] = {}
    for name, rule in configs.items():
        slug = name.lower().replace(":", "").replace(" ", "-").replace("%", "").replace("(", "")
        slug = slug.replace(")", "")
        losses, matches, summaries = [], [], []
        for seed in args.seeds:
            adapter = None
            if rule is not None:
                adapter = args.work_dir / f"ft-{slug}-{seed}"
                summaries.append(finetune(rule, seed, args.steps, adapter))
            metrics = evaluate(adapter, seed, args.work_dir / f"eval-{slug}-{seed}")
            losses.append(metrics["loss"])
            matches.append(metrics["exact_match"])
        units = f"{summaries[0]['num_selected']}" if summaries else "0"
        params = f"{summaries[0]['trainable_parameters']:,}" if summaries else "0"
        loss_mean, loss_range = spread(losses)
        em_mean, em_range = spread(matches)
        table[name] = {"loss": statistics.fmean(losses), "em": statistics.fmean(matches)}
        lines.append(
            f"| {name} | {units} | {params} | {loss_mean} | {loss_range} | {em_mean} | {em_range} |"
        )
        print(lines[-1], flush=True)
    lines += ["", *reading(table)]
    markdown = "\n".join(lines)
    write_section("bench_quality", markdown)
    print(markdown)


def reading(table: dict[str, dict[str, float]]) -> list[str]:
    """What the table says about the paper's two quality claims, stated from the numbers."""
    full = table["all units"]
    freeze = table["ILA: freeze bottom 25%"]
    top = table["ILA: tune top 30%"]
    others = {k: v for k, v in table.items() if k.endswith("tune top 30%") and "ILA" not in k}
    direction = "lower" if freeze["loss"] < full["loss"] else "higher"
    best_other = min(others.values(), key=lambda v: v["loss"]) if others else None
    out = [
        f"Reading: freezing ILA's bottom 25% gives held-out loss {freeze['loss']:.3f} against "
        f"{full['loss']:.3f} for all units ({direction}), exact match {freeze['em']:.3f} "
        f"against {full['em']:.3f}. Tuning ILA's top 30% gives "
        f"loss {top['loss']:.3f} and exact match {top['em']:.3f}"
        + (
            f"; the best other 30% selection reaches loss {best_other['loss']:.3f} and exact "
            f"match {best_other['em']:.3f}"
            if best_other
            else ""
        )
        + ". The paper reports freezing ~25% as better than tuning all layers, and 10-30% "
        "as close to it; differences within the min-max spread over seeds are not evidence "
        "either way."
    ]
    return out


if __name__ == "__main__":
    main()
