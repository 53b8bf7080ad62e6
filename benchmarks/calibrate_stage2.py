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
import dataclasses
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


def main() -> None:
    import torch
    from peft import PeftModel

    from ila.config import ScoreConfig, config_from_dict
    from ila.core.layers import find_layers
    from ila.core.scores import expected_random_jaccard, jaccard, top_count
    from ila.data import (
        PaddingCollator,
        data_fingerprint,
        load_examples,
        split_examples,
        tokenize_examples,
    )
    from ila.model.loading import load_model
    from ila.scorers.base import ScoringContext
    from ila.scorers.ila import run_stage2

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

    import yaml

    # results[variant][(run index, seed)] = gates
    results: dict[str, dict[tuple[int, int], list[float]]] = {}
    stage1_notes = []
    for r, run_dir in enumerate(args.run_dirs):
        resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
        resolved.pop("method", None)
        base_config = config_from_dict(ScoreConfig, resolved)
        model, tokenizer = load_model(base_config.model.model, device="cpu")
        layer_map = find_layers(model)
        examples = load_examples(base_config.data.data, limit=base_config.data.limit)
        train, _ = split_examples(
            examples, eval_fraction=base_config.data.eval_fraction, seed=base_config.data.split_seed
        )
        features = tokenize_examples(
            train, tokenizer, max_length=base_config.data.max_length
        ).features
        peft_model = PeftModel.from_pretrained(model, str(run_dir / "stage1" / "adapter"))
        stage1 = json.loads((run_dir / "stage1" / "summary.json").read_text())
        argv = json.loads((run_dir / "environment.json").read_text())["argv"]
        command = " ".join([Path(argv[0]).name, *argv[1:]])
        stage1_notes.append(
            f"- run {r}: `{run_dir}` (made by `{command}`; stage-1 seed {base_config.train.seed}, "
            f"{stage1['steps']} steps, stable: {stage1['stable']})"
        )
        for variant in args.variants:
            kind, _, weight = variant.partition(":")
            for seed in args.seeds or [base_config.train.seed]:
                stage2 = dataclasses.replace(
                    base_config.stage2,
                    budget=kind,
                    budget_weight=float(weight or 1.0),
                    steps=args.steps,
                    target_fraction=args.target_fraction,
                )
                train_cfg = dataclasses.replace(base_config.train, seed=seed)
                config = dataclasses.replace(base_config, stage2=stage2, train=train_cfg)
                out = args.work_dir / f"run{r}-{variant.replace(':', '-')}-seed{seed}"
                out.mkdir(parents=True, exist_ok=True)
                ctx = ScoringContext(
                    model=peft_model,
                    tokenizer=tokenizer,
                    layer_map=layer_map,
                    model_id=config.model.model,
                    train_features=features,
                    collator=PaddingCollator(tokenizer.pad_token_id),
                    config=config,
                    output_dir=out,
                    data_fingerprint=data_fingerprint(train),
                )
                torch.manual_seed(seed)
                summary = run_stage2(ctx, peft_model)
                results.setdefault(variant, {})[(r, seed)] = summary["gates"]
                print(variant, r, seed, json.dumps({"mean_gate": summary["mean_gate"]}), flush=True)
        del peft_model, model

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
