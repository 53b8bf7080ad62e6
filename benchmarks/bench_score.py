"""ILA identification on the embedded model: cost per stage, Trainer overhead, T, seed stability.

Measures, in one run, on SmolLM2-135M and the embedded ila-instruct data:
1. stage-1 step time on the HF Trainer against a plain PyTorch + peft loop on the same
   model, batches and optimizer (interleaved, medians; ratio = Trainer / plain);
2. ``ila score`` with the default settings for several seeds: time per stage, the
   stage-1 stopping step T against the steps in one epoch, and gate separation;
3. ranking overlap across the seeds: Jaccard of the top 10/25/50% for every pair, next
   to the Jaccard expected of random sets of the same size.

Writes its section of docs/results.md and prints it. Usage:

    python benchmarks/bench_score.py [--seeds 0 1 2] [--work-dir runs/bench-score]

Extra ``ila score`` flags can follow ``--``, e.g. ``-- --stage2-steps 100``.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila.cli import main as ila_main
from ila.core.scores import LayerScores, expected_random_jaccard, jaccard, top_count
from results_file import write_section


def trainer_overhead(steps: int, max_length: int, batch_size: int) -> dict[str, float]:
    """Median step time, HF Trainer vs a plain loop, same model/batches/optimizer."""
    import torch
    from transformers import TrainerCallback

    from ila.config import LoraSettings, TrainConfig
    from ila.core.layers import find_layers
    from ila.core.lora import add_lora
    from ila.data import PaddingCollator, load_examples, tokenize_examples
    from ila.model.loading import load_model
    from ila.train.trainer import make_training_args, run_trainer

    model, tokenizer = load_model("smollm2-135m", device="cpu")
    layer_map = find_layers(model)
    model = add_lora(model, layer_map.units, LoraSettings(), seed=0)
    features = tokenize_examples(
        load_examples("ila-instruct", limit=batch_size * steps), tokenizer, max_length=max_length
    ).features
    collator = PaddingCollator(tokenizer.pad_token_id)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)

    def with_trainer() -> list[float]:
        timer = StepTimer()
        args = make_training_args(
            TrainConfig(batch_size=batch_size, seed=0),
            output_dir=Path("/tmp/ila-bench-trainer"),
            learning_rate=1e-3,
            max_steps=steps,
            device="cpu",
        )
        args.disable_tqdm = True
        run_trainer(model, args, train_features=features, collator=collator, callbacks=[timer])
        return timer.times

    def plain_loop() -> list[float]:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
        model.train()
        times = []
        for i in range(steps):
            batch = collator(features[i * batch_size : (i + 1) * batch_size])
            t0 = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer clips at 1.0 by default
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - t0)
        return times

    trainer_times, loop_times = [], []
    for _ in range(2):  # interleave to share the machine's noise
        trainer_times += with_trainer()[2:]
        loop_times += plain_loop()[2:]
    t, p = statistics.median(trainer_times), statistics.median(loop_times)
    return {"trainer_s": t, "plain_s": p, "ratio": t / p, "steps": len(trainer_times)}


def run_seed(seed: int, work_dir: Path, extra: list[str], *, reuse: bool) -> Path:
    out = work_dir / f"seed{seed}"
    if reuse and (out / "bench_wall_s.txt").is_file() and (out / "layer_scores.json").is_file():
        return out
    argv = ["-q", "score", "--output-dir", str(out), "--overwrite", "--seed", str(seed), *extra]
    # Not a file ila writes: --overwrite refuses a run directory holding it.
    (out / "bench_wall_s.txt").unlink(missing_ok=True)
    t0 = time.perf_counter()
    if ila_main(argv) != 0:
        raise SystemExit(f"ila score failed for seed {seed}")
    (out / "bench_wall_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return out


def seed_table(runs: dict[int, Path]) -> tuple[list[str], dict[str, float]]:
    lines = [
        "| seed | T | stable | steps/epoch | stage 1 (s) | stage 2 (s) | s/step st.1 | s/step st.2 "
        "| gate min | gate median | gate max | total wall (s) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for seed, out in runs.items():
        s1 = json.loads((out / "stage1" / "summary.json").read_text())
        s2 = json.loads((out / "stage2" / "summary.json").read_text())
        gates = sorted(s2["gates"])
        wall = float((out / "bench_wall_s.txt").read_text())
        lines.append(
            f"| {seed} | {s1['T']} | {s1['stable']} | {s1['steps_per_epoch']} "
            f"| {s1['seconds']:.0f} "
            f"| {s2['seconds']:.0f} | {s1['seconds_per_step']:.2f} | {s2['seconds_per_step']:.2f} "
            f"| {gates[0]:.3f} | {statistics.median(gates):.3f} | {gates[-1]:.3f} | {wall:.0f} |"
        )
    overlaps: dict[str, float] = {}
    scores = {seed: LayerScores.load(out) for seed, out in runs.items()}
    n = len(next(iter(scores.values())).units)
    lines += [
        "",
        "| fraction | k | "
        + " | ".join(f"J(seed {a}, {b})" for a, b in itertools.combinations(scores, 2))
        + " | mean | random expectation |",
    ]
    lines.append("|---:|---:|" + "---:|" * (len(list(itertools.combinations(scores, 2))) + 2))
    for fraction in (0.1, 0.25, 0.5):
        k = top_count(n, fraction)
        values = [
            jaccard(scores[a].top(fraction), scores[b].top(fraction))
            for a, b in itertools.combinations(scores, 2)
        ]
        mean = statistics.mean(values) if values else float("nan")
        overlaps[f"{fraction:.2f}"] = mean
        lines.append(
            f"| {fraction:.0%} | {k} | "
            + " | ".join(f"{v:.3f}" for v in values)
            + f" | {mean:.3f} | {expected_random_jaccard(n, k):.3f} |"
        )
    return lines, overlaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-score"))
    parser.add_argument("--overhead-steps", type=int, default=12)
    parser.add_argument("--skip-overhead", action="store_true", help="keep that section as is")
    parser.add_argument("--skip-seeds", action="store_true", help="keep that section as is")
    parser.add_argument(
        "--reuse-runs", action="store_true", help="tabulate finished runs in --work-dir again"
    )
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    where = f"Measured {started} on {os.cpu_count()} CPU cores, float32"
    if not args.skip_overhead:
        o = trainer_overhead(args.overhead_steps, max_length=256, batch_size=4)
        lines = [
            "## Stage-1 step time: HF Trainer vs a plain PyTorch + peft loop "
            "(`benchmarks/bench_score.py`)",
            "",
            f"{where}. SmolLM2-135M with LoRA r=8 on all 210 modules, the same batches of 4",
            "from `ila-instruct`, AdamW and gradient clipping at 1.0 in both paths; the two",
            f"paths run interleaved twice, the first 2 steps of each dropped; {o['steps']} "
            "steps each.",
            "",
            "| path | median s/step |",
            "|---|---:|",
            f"| HF Trainer (`ila.train.trainer`) | {o['trainer_s']:.3f} |",
            f"| plain loop | {o['plain_s']:.3f} |",
            f"| **ratio** | **{o['ratio']:.3f}** |",
        ]
        write_section("bench_score_overhead", "\n".join(lines))
        print("\n".join(lines))
    if not args.skip_seeds:
        runs = {
            seed: run_seed(seed, args.work_dir, extra, reuse=args.reuse_runs) for seed in args.seeds
        }
        table, _ = seed_table(runs)
        lines = [
            "## ILA identification on SmolLM2-135M, per seed (`benchmarks/bench_score.py`)",
            "",
            f"{where}, embedded `ila-instruct` data, default `ila score` settings"
            + (f" plus `{' '.join(extra)}`" if extra else "")
            + f"; work dir `{args.work_dir}`. The seed sets LoRA init, data order and dropout"
            " (stage 1 and stage 2). Times include whatever else ran on the machine.",
            "",
            *table,
        ]
        write_section("bench_score", "\n".join(lines))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
