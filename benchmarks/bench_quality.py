"""Quality at equal steps: all units vs ILA's freeze/tune rules vs other selections.

The paper's quality claims (arXiv 2410.17875, Tables 2-5): freezing the least important
~25% of the layers keeps or improves quality, and tuning only the top 10-30% comes close
to tuning everything. On SmolLM2-135M and the embedded ila-instruct data this script
LoRA-fine-tunes, for the same number of steps and several fine-tuning seeds:

* every unit;
* ILA, freeze the bottom 25% (tune the other 75%);
* ILA, tune the top 10% and the top 30%;
* controls with the same number of *trainable parameters* as ILA's top 30%
  (ila.core.controls): a random order, and the lora-norm ranking of the same stage-1
  adapter, each walked until the budget is met; and a random draw with the same number
  of units of each module type as ILA's top 30%;
* the top 30% of other scorers (``--methods``);

then evaluates each with `ila eval` on the held-out split (the same examples for every
selection: the split has its own seed): response loss, exact match of greedy answers,
and forgetting: the response loss on held-out chitchat conversations (a dataset not
tuned on). The base model is evaluated too. Mean and min-max over fine-tuning seeds.
By default every fine-tune runs one epoch of the training split. Usage::

    python benchmarks/bench_quality.py --ila-scores runs/x [--steps N] [--seeds 0 1 2]

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

LIMIT = 600
DATA = ["--limit", str(LIMIT), "--max-length", "128", "--eval-fraction", "0.1", "--device", "cpu"]
EVAL = ["--eval-generate-examples", "60", "--eval-max-new-tokens", "48"]
# Forgetting: loss on held-out conversations of a dataset that is not tuned on.
FORGET = ["--data", "chitchat", "--limit", "400", "--max-length", "128", "--device", "cpu",
          "--eval-generate-examples", "0"]  # fmt: skip


def finetune(rule: list[str], seed: int, steps: int, out: Path) -> dict:
    if not (out / "finetune_summary.json").is_file():
        ila(
            "finetune", *rule, "--method", "lora", "--max-steps", str(steps),
            "--seed", str(seed), "--output-dir", str(out), "--overwrite", *DATA,
        )  # fmt: skip
    return json.loads((out / "finetune_summary.json").read_text())


def evaluate(adapter: Path | None, seed: int, out: Path, flags: list[str]) -> dict:
    if not (out / "eval_results.json").is_file():
        extra = ["--adapter", str(adapter)] if adapter else []
        ila("eval", *extra, "--seed", str(seed), "--output-dir", str(out), "--overwrite",
            *flags)  # fmt: skip
    return json.loads((out / "eval_results.json").read_text())["metrics"]


def controls(ila_scores: Path, work_dir: Path, seed: int) -> dict[str, list[str]]:
    """Unit lists of the control selections, matched to ILA's top 30% (ila.core.controls)."""
    from ila.core.controls import (
        parameter_matched,
        random_order,
        random_within_type,
        trainable_parameters,
    )
    from ila.core.layers import LayerMap
    from ila.core.scores import LayerScores

    scores = LayerScores.load(ila_scores)
    layer_map = LayerMap.from_dict(scores.layout)
    top = scores.top(0.3)
    budget = trainable_parameters([layer_map.unit(n) for n in top], method="lora")
    norm = work_dir / "score-lora-norm"
    if not (norm / "layer_scores.json").is_file():
        # lora-norm of ILA's own stage-1 adapter: the same Delta, ranked by ||Delta_i||.
        norms = scores.meta["stage1_update_norms"]
        order = sorted(range(len(norms)), key=lambda i: (-norms[i], i))
        norm_ranking = [scores.names[i] for i in order]
    else:
        norm_ranking = LayerScores.load(norm).ranking()
    return {
        "random, ILA top-30% parameters": parameter_matched(
            random_order(layer_map, seed), layer_map, budget
        ),
        "lora-norm (same adapter), ILA top-30% parameters": parameter_matched(
            norm_ranking, layer_map, budget
        ),
        "random within module type (ILA top 30%)": random_within_type(top, layer_map, seed),
    }


def spread(values: list[float], digits: int = 3) -> tuple[str, str]:
    mean = f"{statistics.fmean(values):.{digits}f}"
    return mean, f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ila-scores", type=Path, required=True, help="an ILA score run")
    parser.add_argument(
        "--steps", type=int, help="fine-tuning steps (default: one epoch of the training split)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["grad-norm"])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-quality"))
    args = parser.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.steps is None:
        args.steps = -(-(LIMIT - round(0.1 * LIMIT)) // 4)  # one epoch at batch 4
    ila_rule = ["--scores", str(args.ila_scores)]
    configs: dict[str, list[str] | None] = {
        "base model (no tuning)": None,
        "all units": ["--all-units"],
        "ILA: freeze bottom 25%": [*ila_rule, "--freeze-bottom-fraction", "0.25"],
        "ILA: tune top 10%": [*ila_rule, "--tune-top-fraction", "0.1"],
        "ILA: tune top 30%": [*ila_rule, "--tune-top-fraction", "0.3"],
    }
    for name, units in controls(args.ila_scores, args.work_dir, seed=0).items():
        configs[name] = ["--units", *units]
    for method in args.methods:
        scores = args.work_dir / f"score-{method}"
        if not (scores / "layer_scores.json").is_file():
            ila("score", "--scorer", method, "--output-dir", str(scores), "--overwrite",
                "--seed", "0")  # fmt: skip
        configs[f"{method}: tune top 30%"] = ["--scores", str(scores), "--tune-top-fraction", "0.3"]

    lines = [
        "## Quality at equal steps (`benchmarks/bench_quality.py`)",
        "",
        f"Measured {started}, SmolLM2-135M, float32, `ila-instruct` (600 examples, 10% "
        f"held out by each seed's split, max length 128, batch 4). LoRA r=8 for {args.steps} "
        f"steps (lr 1e-3) on each selection, fine-tuning seeds {args.seeds}; ILA scores from "
        f"`{args.ila_scores}`, other scorers ranked once with seed 0; control selections "
        "drawn once (seed 0). Evaluated with `ila eval` on the held-out examples: response "
        "loss, exact match of greedy answers (48 new tokens at most) on the 60 held-out "
        "questions, and forgetting (response loss on 40 held-out chitchat conversations). "
        f"Command: `python benchmarks/bench_quality.py --ila-scores {args.ila_scores} "
        f"--steps {args.steps} --seeds {' '.join(map(str, args.seeds))}`.",
        "",
        "| selection | units tuned | trainable params | held-out loss (mean) | min-max "
        "| exact match (mean) | min-max | chitchat loss (mean) | min-max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    table: dict[str, dict[str, float]] = {}
    for name, rule in configs.items():
        slug = name.lower().replace(":", "").replace(" ", "-").replace("%", "").replace("(", "")
        slug = slug.replace(")", "")
        slug = slug.replace(",", "").replace("-", "")[:60]
        losses, matches, forgets, summaries = [], [], [], []
        for seed in args.seeds:
            adapter = None
            if rule is not None:
                adapter = args.work_dir / f"ft-{slug}-{seed}"
                summaries.append(finetune(rule, seed, args.steps, adapter))
            metrics = evaluate(adapter, seed, args.work_dir / f"eval-{slug}-{seed}", [*DATA, *EVAL])
            losses.append(metrics["loss"])
            matches.append(metrics["exact_match"])
            other = evaluate(adapter, seed, args.work_dir / f"forget-{slug}-{seed}", FORGET)
            forgets.append(other["loss"])
        units = f"{summaries[0]['num_selected']}" if summaries else "0"
        params = f"{summaries[0]['trainable_parameters']:,}" if summaries else "0"
        loss_mean, loss_range = spread(losses)
        em_mean, em_range = spread(matches)
        forget_mean, forget_range = spread(forgets)
        table[name] = {
            "loss": statistics.fmean(losses),
            "em": statistics.fmean(matches),
            "loss_min": min(losses),
            "loss_max": max(losses),
        }
        lines.append(
            f"| {name} | {units} | {params} | {loss_mean} | {loss_range} | {em_mean} | "
            f"{em_range} | {forget_mean} | {forget_range} |"
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
    top_range = (top["loss_min"], top["loss_max"])
    matched = {k: v for k, v in table.items() if "parameters" in k or "module type" in k}
    verdicts = []
    for name, row in matched.items():
        if top_range[1] < row["loss_min"]:
            verdicts.append(f"beats {name} beyond the seed spread")
        else:
            verdicts.append(f"does not beat {name} beyond the seed spread")
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
        "either way.",
        "",
        "At equal trainable parameters (held-out loss, whole min-max ranges compared), ILA's "
        "top 30% " + "; ".join(verdicts) + ".",
    ]
    return out


if __name__ == "__main__":
    main()
