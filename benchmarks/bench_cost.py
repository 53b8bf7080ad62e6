"""What ILA costs against the fine-tune it informs, what selective tuning saves, and how
close each step comes to the machine's matmul limit.

ILA (arXiv 2410.17875; docs/method.md) spends stage 1 (LoRA on every unit until
epsilon-stable, T steps) and stage 2 (the gates, a fixed number of steps, each of
``--stage2-grad-accum`` micro-batches) before the fine-tune it informs. This script
measures, in one run on the model and data of the ILA runs given, each configuration in
its own `ila` process at the same thread count, the median step time and peak memory of:

* ILA stage 1 and stage 2 (`ila score` capped at ``--steps`` steps of each);
* LoRA fine-tuning of every unit, of ILA's top 30%, and of all but ILA's bottom 25%;
* full fine-tuning of every unit and of ILA's top 30%.

In this process it then counts, with ``torch.utils.flop_counter``, the FLOPs of one
forward and one backward pass of each configuration built as ila builds it (``add_lora``,
``freeze_all_but``, ``attach_gates``) on a batch of the runs' mean padded length. The
backward count shows whether autograd stops at the lowest trainable unit; divided by the
step time it gives the achieved FLOP/s, put beside the fp32 and bf16 matmul rate of this
machine measured here (the roofline). Finally it reads the stage-1 and stage-2 step times
of the finished ILA runs (per micro-batch, so a stage-2 step that costs more than its
micro-batches explain shows up) and puts ILA's whole cost against fine-tunes of one and
three epochs. Usage::

    python benchmarks/bench_cost.py --ila-runs runs/bench-overlap/ila-instruct/seed0 ... \\
        [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila_process import ila
from results_file import write_section
from run_settings import run_flags

RUNS = {
    "LoRA, all units": ["--all-units", "--method", "lora"],
    "LoRA, ILA top 30%": ["--tune-top-fraction", "0.3", "--method", "lora"],
    "LoRA, ILA bottom 25% frozen": ["--freeze-bottom-fraction", "0.25", "--method", "lora"],
    "full, all units": ["--all-units", "--method", "full"],
    "full, ILA top 30%": ["--tune-top-fraction", "0.3", "--method", "full"],
}
STAGE1, STAGE2 = "ILA stage 1 (LoRA, all units)", "ILA stage 2 (gates)"


def step_seconds(metrics: Path, stage: str) -> float:
    """Median seconds per step of ``stage`` (first step dropped: warm-up)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in rows if r["stage"] == stage]
    gaps = [b - a for a, b in itertools.pairwise(elapsed)][1:]
    if not gaps:
        raise SystemExit(f"{metrics}: too few {stage} steps to time")
    return statistics.median(gaps)


def matmul_rate(dtype, m: int, k: int, n: int, seconds: float = 2.0) -> float:
    """GFLOP/s of an (m x k) @ (k x n) matmul in ``dtype``, repeated for about ``seconds``."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.matmul(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start) / 1e9


def mean_padded_length(lengths: list[int], batch: int, draws: int = 4000) -> float:
    """Mean longest length of ``batch`` random examples: the padded length of a step."""
    rng = random.Random(0)
    return statistics.fmean(max(rng.sample(lengths, batch)) for _ in range(draws))


def pass_flops(model, input_ids) -> tuple[int, int]:
    """FLOPs of one forward and of one backward pass (loss = next-token loss on the batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as forward:
        loss = model(input_ids=input_ids, labels=input_ids).loss
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return forward.get_total_flops(), backward.get_total_flops()


def count_flops(config: dict, selections: dict[str, list[str]], batch: int, length: int):
    """Per configuration: (forward FLOPs, backward FLOPs, lowest trainable block / blocks)."""
    import torch

    from ila.config import LoraSettings
    from ila.core.gates import attach_gates
    from ila.core.layers import find_layers
    from ila.core.lora import add_lora
    from ila.jobs.finetune import freeze_all_but
    from ila.model.loading import load_model

    base, _ = load_model(str(config["model"]["model"]), device="cpu")
    layer_map = find_layers(base)
    lora = LoraSettings(**{k: v for k, v in config["lora"].items() if k != "module_types"})
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (batch, length), generator=generator)
    every = [u.name for u in layer_map.units]
    counted = {}
    for name, chosen in {STAGE1: every, STAGE2: every, **selections}.items():
        model = copy.deepcopy(base)
        units = [layer_map.unit(n) for n in chosen]
        if name.startswith("full"):
            freeze_all_but(model, layer_map, set(chosen), train_embeddings=False)
        else:
            model = add_lora(model, units, lora, seed=0)
        if name == STAGE2:
            for param in model.parameters():
                param.requires_grad_(False)
            attach_gates(model, layer_map)
            model.eval()
        forward, backward = pass_flops(model, ids)
        lowest = min(u.block for u in units)
        counted[name] = (forward, backward, lowest / layer_map.num_blocks)
        del model
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ila-runs", type=Path, nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="threads of every measurement")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-cost"))
    parser.add_argument("--note", default="", help="conditions worth stating with the numbers")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    work, steps = args.work_dir, str(args.steps)
    config = yaml.safe_load((args.ila_runs[0] / "config.yaml").read_text())
    flags = [*run_flags(config, args.threads), "--seed", "0"]
    batch = int(config["train"]["batch_size"])
    grad_accum = int(config["stage2"]["grad_accum"])
    metas = [json.loads((r / "layer_scores.json").read_text())["meta"] for r in args.ila_runs]
    t_steps = statistics.fmean(m["stage1_steps"] for m in metas)
    stage2_steps = statistics.fmean(m["stage2_steps"] for m in metas)
    data = json.loads((args.ila_runs[0] / "data.json").read_text())
    epoch = data["num_train_features"] / batch

    score_dir = work / "score"
    if not (score_dir / "layer_scores.json").is_file():
        ila(
            "score", "--output-dir", str(score_dir), "--overwrite", *flags,
            "--stage1-max-steps", steps, "--stage1-min-steps", steps, "--stage2-steps", steps,
        )  # fmt: skip
    timing = {
        STAGE1: step_seconds(score_dir / "metrics.jsonl", "stage1"),
        STAGE2: step_seconds(score_dir / "metrics.jsonl", "stage2"),
    }
    memory: dict[str, float] = {}
    params: dict[str, int] = {}
    selections: dict[str, list[str]] = {}
    # The selection whose backward can stop highest: LoRA on the upper 30% of the blocks.
    blocks = int(
        json.loads((args.ila_runs[0] / "layer_scores.json").read_text())["layout"]["num_blocks"]
    )
    upper = range(blocks - round(0.3 * blocks), blocks)
    runs = {
        **RUNS,
        f"LoRA, upper 30% of blocks ({upper[0]}-{upper[-1]})": [
            "--blocks", ",".join(map(str, upper)), "--method", "lora",
        ],
    }  # fmt: skip
    for name, rule in runs.items():
        out = work / ("ft-" + "".join(c if c.isalnum() else "-" for c in name))
        ranked = "--tune-top-fraction" in rule or "--freeze-bottom-fraction" in rule
        scores = ["--scores", str(args.ila_runs[0])] if ranked else []
        if not (out / "finetune_summary.json").is_file():
            ila("finetune", *rule, *scores, "--max-steps", steps, "--output-dir", str(out),
                "--overwrite", *flags)  # fmt: skip
        summary = json.loads((out / "finetune_summary.json").read_text())
        timing[name] = step_seconds(out / "metrics.jsonl", "finetune")
        memory[name] = summary["peak_rss_mb"]
        params[name] = summary["trainable_parameters"]
        selections[name] = json.loads((out / "selection.json").read_text())["selected"]

    import torch

    from ila.data import load_examples, split_examples, tokenize_examples
    from ila.model.loading import load_model, load_model_config

    torch.set_num_threads(args.threads)
    _, tokenizer = load_model(str(config["model"]["model"]), device="cpu")
    examples = load_examples(str(config["data"]["data"]), limit=config["data"].get("limit"))
    train, _ = split_examples(
        examples, eval_fraction=config["data"]["eval_fraction"], seed=config["data"]["split_seed"]
    )
    features = tokenize_examples(train, tokenizer, max_length=config["data"]["max_length"])
    lengths = [len(f["input_ids"]) for f in features.features]
    padded = mean_padded_length(lengths, batch)
    length = round(padded)
    flops = count_flops(config, selections, batch, length)
    shape = load_model_config(str(config["model"]["model"]))
    hidden, inner = int(shape.hidden_size), int(shape.intermediate_size)
    rates = {
        "fp32, 2048 x 2048 x 2048": matmul_rate(torch.float32, 2048, 2048, 2048),
        "bf16, 2048 x 2048 x 2048": matmul_rate(torch.bfloat16, 2048, 2048, 2048),
        f"fp32, ({batch} x {length}) x {hidden} x {inner} (an MLP matmul)": matmul_rate(
            torch.float32, batch * length, hidden, inner
        ),
    }
    peak = rates["fp32, 2048 x 2048 x 2048"]

    lines = [
        "## Cost: ILA against the fine-tune it informs (`benchmarks/bench_cost.py`)",
        "",
        f"Measured {started} on {os.cpu_count()} CPU cores, {args.threads} thread(s) for "
        f"every measurement, float32, `{config['model']['model']}`, `{config['data']['data']}` "
        f"(max length {config['data']['max_length']}, batch {batch}, mean padded length of a "
        f"batch {padded:.1f} tokens), each configuration in its own process, {args.steps} steps "
        "each, median step time after the first. Command: `python benchmarks/bench_cost.py "
        f"--threads {args.threads} --ila-runs "
        + " ".join(str(r) for r in args.ila_runs)
        + "`."
        + (f" {args.note}" if args.note else ""),
        "",
        "### Step time, memory and FLOPs per configuration",
        "",
        "FLOPs: `torch.utils.flop_counter` on one pass of the configuration as ila builds it, "
        f"batch {batch} x {length} tokens (matmuls and attention; element-wise work is not "
        "counted). A stage-2 step is "
        f"{grad_accum} micro-batches (`--stage2-grad-accum`); its FLOPs and FLOP/s count all of "
        "them. 'below' is the share of blocks under the lowest trainable unit, where no "
        "gradient needs computing; 'bwd/fwd' is backward FLOPs over forward FLOPs (about 1 "
        "when every block's input gradient is computed and no weight gradient, about 2 with "
        "every weight gradient).",
        "",
        "| what | s/step | vs LoRA all units | peak RSS (MB) | trainable params | below "
        "| bwd/fwd | GFLOP/step | GFLOP/s | % of fp32 peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = timing["LoRA, all units"]
    for name, seconds in timing.items():
        forward, backward, below = flops[name]
        per_step = (forward + backward) * (grad_accum if name == STAGE2 else 1) / 1e9
        mem = f"{memory[name]:.0f}" if name in memory else "-"
        count = f"{params[name]:,}" if name in params else "-"
        lines.append(
            f"| {name} | {seconds:.2f} | {seconds / base:.2f} | {mem} | {count} | "
            f"{below:.0%} | {backward / forward:.2f} | {per_step:.1f} | "
            f"{per_step / seconds:.1f} | {100 * per_step / seconds / peak:.0f}% |"
        )
    lines += [
        "",
        "Matmul rate of this machine, measured in the same run at the same thread count "
        "(the roofline the FLOP/s above are put against):",
        "",
        "| matmul | GFLOP/s |",
        "|---|---:|",
        *(f"| {name} | {rate:.1f} |" for name, rate in rates.items()),
        "",
        "### Stage 2 against stage 1 in the finished ILA runs",
        "",
        "A stage-2 step does the forward and backward of its micro-batches with no LoRA weight "
        "gradient, so per micro-batch it should cost no more than a stage-1 step. Ratios well "
        "above 1 mean something else costs time in stage 2 (the check the capped run above "
        "cannot make on its own).",
        "",
        "| ILA run | T | stage 1 s/step | stage 2 s/step | micro-batches | stage 2 per "
        "micro-batch / stage 1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    this_run = timing[STAGE2] / grad_accum / timing[STAGE1]
    lines.append(
        f"| capped run above | {args.steps} | {timing[STAGE1]:.2f} | {timing[STAGE2]:.2f} | "
        f"{grad_accum} | {this_run:.2f} |"
    )
    for run, meta in zip(args.ila_runs, metas, strict=True):
        s1 = step_seconds(run / "metrics.jsonl", "stage1")
        s2 = step_seconds(run / "metrics.jsonl", "stage2")
        micro = int(meta["stage2"].get("grad_accum", 1))
        lines.append(
            f"| `{run}` | {meta['T']} | {s1:.2f} | {s2:.2f} | {micro} | {s2 / micro / s1:.2f} |"
        )
    ila_cost = t_steps * timing[STAGE1] + stage2_steps * timing[STAGE2]
    saved = base - timing["LoRA, ILA top 30%"]
    lines += [
        "",
        "### ILA's cost against the fine-tune",
        "",
        f"Stage 1 ran T = {t_steps:.0f} steps on average and stage 2 {stage2_steps:.0f} steps "
        f"in the ILA runs given ({len(metas)}), so about {ila_cost:.0f} s at the step times "
        f"above, or {ila_cost / base:.0f} steps of LoRA on all units. One epoch of this data "
        f"is {epoch:.0f} steps at batch {batch}. With `--init-from-stage1` the T stage-1 steps "
        "also start the fine-tune (`bench_warm_start` measures what that is worth).",
        "",
        "| fine-tune informed | LoRA all units (s) | LoRA top 30% (s) | ILA + LoRA top 30% (s) "
        "| ILA as % of the all-units fine-tune |",
        "|---|---:|---:|---:|---:|",
    ]
    for epochs in (1, 3):
        n = epochs * epoch
        full = n * base
        top = n * timing["LoRA, ILA top 30%"]
        lines.append(
            f"| {epochs} epoch{'s' if epochs > 1 else ''} ({n:.0f} steps) | {full:.0f} | "
            f"{top:.0f} | {ila_cost + top:.0f} | {100 * ila_cost / full:.0f}% |"
        )
    if saved > 0:
        lines += [
            "",
            f"Tuning the top 30% saves {saved:.2f} s per step here, so ILA pays for itself in "
            f"time after about {ila_cost / saved:.0f} fine-tuning steps "
            f"({ila_cost / saved / epoch:.1f} epochs); shorter fine-tunes cost more with ILA "
            "than without it.",
        ]
    else:
        lines += ["", "Tuning the top 30% was not faster per step here: ILA never pays back."]
    markdown = "\n".join(lines)
    write_section("bench_cost", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
